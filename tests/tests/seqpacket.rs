//! SEQPACKET connections: message boundaries both ways.

mod common;
use common::*;

#[test]
fn seqpacket_boundaries_preserved_both_ways() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    assert_ne!(vm.negotiated.features & F_SEQPACKET, 0);
    let l = SeqpacketListener::bind(&p.vm().port_path(7000)).unwrap();
    let id = vm.driver.connect(HOST_CID, 7000, TYPE_SEQPACKET).unwrap();
    let host = l
        .accept_timeout(secs(2))
        .expect("plugin connected with SOCK_SEQPACKET");
    let resp = vm.driver.conn(id).history[0];
    assert_eq!(
        (resp.op, resp.type_),
        (OP_RESPONSE, TYPE_SEQPACKET),
        "{resp:?}"
    );

    // guest → host: each RW with EOM is one host message.
    let sizes = [1usize, 100, 5000, 3, 30000];
    for (k, &n) in sizes.iter().enumerate() {
        vm.driver.send_msg(id, &pattern(k as u64, n)).unwrap();
    }
    for (k, &n) in sizes.iter().enumerate() {
        let m = host
            .recv_timeout(secs(5))
            .unwrap()
            .unwrap_or_else(|| panic!("message {k} ({n} bytes) not received"));
        assert_eq!(m.len(), n, "message {k}: boundary not preserved");
        assert_eq!(m, pattern(k as u64, n));
    }

    // host → guest: each host message ends with an EOM-flagged RW.
    let hsizes = [7usize, 1, 3000, 2];
    for (k, &n) in hsizes.iter().enumerate() {
        assert_eq!(host.send(&pattern(100 + k as u64, n)).unwrap(), n);
    }
    for (k, &n) in hsizes.iter().enumerate() {
        let (m, flags) = vm.driver.recv_msg(id, secs(5)).unwrap().unwrap_or_else(|| {
            panic!(
                "host message {k} not received: {:?}",
                vm.driver.conn(id).history
            )
        });
        assert_eq!(m.len(), n, "host message {k}: boundary not preserved");
        assert_eq!(m, pattern(100 + k as u64, n));
        assert_ne!(flags & SEQ_EOM, 0);
    }
    assert!(vm
        .driver
        .conn(id)
        .history
        .iter()
        .all(|h| h.type_ == TYPE_SEQPACKET));
}

#[test]
fn seqpacket_request_to_a_stream_listener_is_rst() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let _l = listen(&p.vm().port_path(7001));
    let id = vm
        .driver
        .connect_start(HOST_CID, 7001, TYPE_SEQPACKET)
        .unwrap();
    assert_eq!(
        vm.driver.wait_connected(id, secs(2)).unwrap(),
        ConnState::Reset,
        "{:?}",
        vm.driver.conn(id).history
    );
}

#[test]
fn stream_request_to_a_seqpacket_listener_is_rst() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let _l = SeqpacketListener::bind(&p.vm().port_path(7002)).unwrap();
    let id = vm
        .driver
        .connect_start(HOST_CID, 7002, TYPE_STREAM)
        .unwrap();
    assert_eq!(
        vm.driver.wait_connected(id, secs(2)).unwrap(),
        ConnState::Reset,
        "{:?}",
        vm.driver.conn(id).history
    );
}
