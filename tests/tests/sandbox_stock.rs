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

/// crosvm's snapshot (sleep, DEVICE_STATE save, wake) and a restore into a second sandboxed
/// process stay inside the stock policy: the state pipe is made non-blocking with
/// fcntl(F_SETFL) and served by the VM's epoll, no helper thread (no thread may end).
#[test]
fn snapshot_and_restore_stay_inside_the_policy() {
    use vsock_plugin_tests::frontend::crosvm_snapshot as crosvm;
    let a = sandboxed(&[]);
    let mut vm = vm_with(&a, VmOptions::crosvm());
    let (id, mut h, _l) = guest_to_host(&mut vm, &a, 6400);
    let acked = vm.negotiated.features;
    let bases = crosvm::sleep(&mut vm.client, acked, &[0, 1, 2]).unwrap();
    let state = crosvm::snapshot(&mut vm.client, secs(5)).unwrap();
    let setups = vm.driver.vring_setups();
    crosvm::wake(&mut vm.client, &vm.mem, &setups, &bases, acked).unwrap();
    vm.driver.kick_all();
    vm.driver.send(id, b"resumed").unwrap();
    assert_eq!(read_exact_timeout(&mut h, 7, secs(5)).unwrap(), b"resumed");
    assert_clean(&a);

    let b = sandboxed(&[]);
    let mut c = VhostUserClient::connect(&b.vm().socket).unwrap();
    crosvm::new_frontend(&mut c, &CrosvmOptions::default()).unwrap();
    assert_eq!(
        crosvm::restore(&mut c, acked, false, &state, secs(5)).unwrap(),
        0
    );
    crosvm::wake(&mut c, &vm.mem, &setups, &bases, acked).unwrap();
    vm.client = c;
    vm.driver.kick_all();
    assert_eq!(
        vm.driver.recv_event(secs(3)).unwrap(),
        Some(EVENT_TRANSPORT_RESET)
    );
    assert_clean(&b);
}
