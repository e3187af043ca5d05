//! The plugin in its full mode (default `--sandbox full`) under the patched `vhost_device_vsock`
//! policy (`seccomp-run --policy patched`, `cuttlefish/sandbox/vhost_device_vsock.cpp.patch`):
//! real traffic with half-close, zero calls outside the policy.
#![cfg(target_arch = "x86_64")]

mod common;
mod sandbox_common;
use common::*;
use sandbox_common::*;

fn setup() {
    use_sandbox("patched", &[]);
}

fn sandboxed(extra: &[&str]) -> PluginProcess {
    setup();
    plugin(extra)
}

sandbox_traffic_tests!(sandboxed, setup);

#[test]
fn guest_half_close_gives_host_eof() {
    let p = sandboxed(&[]);
    let mut vm = qemu_vm(&p);
    let eof = guest_half_close(&mut vm, &p, 6300, secs(5));
    assert!(
        eof,
        "host did not see EOF after a guest SHUTDOWN(SEND) in full mode"
    );
    assert_clean(&p);
}
