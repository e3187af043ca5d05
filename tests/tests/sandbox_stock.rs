//! The plugin with `--sandbox stock` under Cuttlefish's stock `vhost_device_vsock` policy
//! (`seccomp-run --policy stock`): real traffic, zero calls outside the policy. Half-close is what
//! this mode gives up: a guest SHUTDOWN(SEND) is not passed to the host socket.
#![cfg(target_arch = "x86_64")]

mod common;
mod sandbox_common;
use common::*;
use sandbox_common::*;

fn setup() {
    use_sandbox("stock", &["--sandbox", "stock"]);
}

fn sandboxed(extra: &[&str]) -> PluginProcess {
    setup();
    plugin(extra)
}

sandbox_traffic_tests!(sandboxed, setup);

#[test]
fn guest_half_close_is_not_passed_on_but_full_close_is() {
    let p = sandboxed(&[]);
    let mut vm = qemu_vm(&p);
    let eof = guest_half_close(&mut vm, &p, 6300, ms(500));
    assert!(
        !eof,
        "host saw EOF after a guest SHUTDOWN(SEND) under --sandbox stock"
    );
    assert_clean(&p);
}
