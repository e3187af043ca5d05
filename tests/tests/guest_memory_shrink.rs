//! F2 end to end: a frontend that shrinks its (unsealed) guest-memory memfd after sharing it.
//! The plugin's next ring access is a SIGBUS; it must cost that VM its frontend session and
//! nothing else: the process lives on and another VM's transfer is intact.

mod common;
use common::*;

use std::time::Instant;

#[test]
fn a_shrunk_memfd_ends_only_that_vms_session() {
    let p = PluginProcess::multi(&[(3, ""), (4, "")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::qemu().cid(4)).unwrap();

    // VM 3's frontend truncates the memfd its rings live in (this process must not touch that
    // memory any more), then kicks: the plugin reads the avail ring from a page that is gone.
    let fd = a.mem.regions()[0].fd();
    // SAFETY: ftruncate on a memfd this test owns.
    assert_eq!(unsafe { libc::ftruncate(fd, 0) }, 0);
    a.driver.kick_all();

    // That frontend is dropped: its vhost-user connection ends.
    let deadline = Instant::now() + secs(20);
    while a.client.get_features().is_ok() {
        assert!(
            Instant::now() < deadline,
            "VM 3's frontend was never dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    p.assert_alive();
    let log = p.stderr_tail(4000);
    assert!(
        log.contains("raised SIGBUS") && log.contains("F_SEAL_SHRINK"),
        "the reason is logged: {log}"
    );

    // VM 4 is untouched: a full guest -> host round trip.
    let l = listen(&p.vms[1].port_path(1234));
    let id = b.driver.connect(2, 1234, TYPE_STREAM).unwrap();
    let mut host = accept_timeout(&l, secs(5)).expect("plugin connected to VM 4's <uds>_1234");
    b.driver.send(id, b"canary from VM 4").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 16, secs(5)).unwrap(),
        b"canary from VM 4"
    );
    p.assert_alive();
}
