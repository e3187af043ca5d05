//! vhost-user protocol: feature offers, config space, replies, both VMMs' handshakes, reset,
//! frontend reconnect.

mod common;
use common::*;

use std::sync::Arc;
use vhost::vhost_user::message::FrontendReq;

const EXPECTED_FEATURES: u64 = F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES | F_SEQPACKET;
const EXPECTED_PROTOCOL: u64 =
    PF_MQ | PF_REPLY_ACK | PF_CONFIG | PF_RESET_DEVICE | PF_CONFIGURE_MEM_SLOTS | PF_DEVICE_STATE;

#[test]
fn get_features_offers_exactly_the_spec_bits() {
    let p = plugin(&[]);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    let f = c.get_features().unwrap();
    assert_eq!(f, EXPECTED_FEATURES, "GET_FEATURES = {f:#x}");
    assert_eq!(f & F_ACCESS_PLATFORM, 0);
}

#[test]
fn seqpacket_off_removes_the_feature_bit() {
    let p = plugin(&["--seqpacket", "off"]);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    let f = c.get_features().unwrap();
    assert_eq!(f, EXPECTED_FEATURES & !F_SEQPACKET, "GET_FEATURES = {f:#x}");
}

#[test]
fn get_protocol_features_offers_exactly_the_spec_bits() {
    let p = plugin(&[]);
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    // Must work before SET_OWNER / SET_FEATURES (QEMU asks first).
    let pf = c.get_protocol_features().unwrap();
    assert_eq!(pf, EXPECTED_PROTOCOL, "GET_PROTOCOL_FEATURES = {pf:#x}");
}

#[test]
fn queue_num_is_3_and_max_mem_slots_at_least_8() {
    let p = plugin(&[]);
    let mut c = negotiated_client(&p);
    assert_eq!(c.get_queue_num().unwrap(), 3);
    let slots = c.get_max_mem_slots().unwrap();
    assert!(slots >= 8, "GET_MAX_MEM_SLOTS = {slots}");
}

#[test]
fn get_config_returns_the_guest_cid() {
    let cid: u64 = 0x8765_4321;
    let p = PluginProcess::single_cid(cid, &[]).unwrap();
    let mut c = negotiated_client(&p);
    assert_eq!(c.get_config(0, 8).unwrap(), cid.to_le_bytes());
    assert_eq!(c.get_config(0, 4).unwrap(), 0x8765_4321u32.to_le_bytes());
    assert_eq!(c.get_config(4, 4).unwrap(), [0, 0, 0, 0]);
    // Every read is a round trip; repeated reads agree.
    assert_eq!(c.get_config(0, 8).unwrap(), cid.to_le_bytes());
}

#[test]
fn get_config_out_of_range_is_not_a_cid() {
    let p = plugin(&[]);
    let mut c = negotiated_client(&p);
    for (off, size) in [(8u32, 8u32), (0, 16), (4, 8), (0xffff_fff8, 8)] {
        let r = c
            .get_config_raw(off, size, false)
            .unwrap_or_else(|e| panic!("GET_CONFIG({off},{size}): no reply: {e}"));
        let data = if r.payload.len() >= 12 {
            &r.payload[12..]
        } else {
            &[][..]
        };
        assert!(
            !(data.len() == 8 && data == 3u64.to_le_bytes()),
            "GET_CONFIG({off},{size}) answered with a successful CID: {:02x?}",
            r.payload
        );
        // vhost-user.md §9: an empty config reply.
        assert!(
            data.iter().all(|&b| b == 0) && r.payload.len() <= 12 + size as usize,
            "GET_CONFIG({off},{size}) reply {:02x?}",
            r.payload
        );
    }
    // The connection is still usable.
    assert_eq!(c.get_features().unwrap(), EXPECTED_FEATURES);
}

#[test]
fn set_features_with_unoffered_bits_is_rejected_then_correct_set_works() {
    let p = plugin(&[]);
    let mut c = owned_client(&p);
    for bad in [
        EXPECTED_FEATURES | F_ACCESS_PLATFORM,
        EXPECTED_FEATURES | 0x100,
        1 << 34,
    ] {
        let ack = c.set_features(bad, true).unwrap().unwrap();
        assert_ne!(ack, 0, "SET_FEATURES({bad:#x}) was accepted");
    }
    // The same frontend continues with QEMU's "driver OK" sequence and the device works.
    let mut vm = Vm::build(c, VmOptions::qemu(), |c, mem, setups| {
        c.qemu_driver_ok(
            mem,
            setups,
            EXPECTED_FEATURES,
            EXPECTED_PROTOCOL & !PF_CONFIGURE_MEM_SLOTS,
        )?;
        Ok(Negotiated::default())
    })
    .expect("setup after rejected SET_FEATURES");
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1234);
    vm.driver.send(id, b"ping").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 4, secs(5)).unwrap(), b"ping");
}

#[test]
fn set_protocol_features_with_unoffered_bits_is_rejected() {
    let p = plugin(&[]);
    let mut c = negotiated_client(&p);
    for bad in [
        EXPECTED_PROTOCOL | PF_BACKEND_REQ,
        EXPECTED_PROTOCOL | (1 << 21),
        1 << 40,
    ] {
        let ack = c.set_protocol_features(bad, true).unwrap().unwrap();
        assert_ne!(ack, 0, "SET_PROTOCOL_FEATURES({bad:#x}) was accepted");
    }
    // A correct one is still accepted.
    assert_eq!(
        c.set_protocol_features(EXPECTED_PROTOCOL, true).unwrap(),
        Some(0)
    );
}

#[test]
fn every_need_reply_message_gets_exactly_one_reply() {
    let p = plugin(&[]);
    let mut c = negotiated_client(&p);
    let mem = Arc::new(GuestMemory::single(4 << 20).unwrap());
    mem.alloc(4096, 4096);
    let q = SplitQueue::new(mem.clone(), 0, 128).unwrap();
    let s = q.setup();
    let extra = |c: &mut VhostUserClient, what: &str| {
        if let Some(m) = c.pending_message(ms(150)) {
            panic!("{what}: a second message arrived: {m:?}");
        }
    };
    assert_eq!(c.set_owner(true).unwrap(), Some(0), "SET_OWNER");
    extra(&mut c, "SET_OWNER");
    assert_eq!(
        c.set_features(EXPECTED_FEATURES, true).unwrap(),
        Some(0),
        "SET_FEATURES"
    );
    extra(&mut c, "SET_FEATURES");
    assert_eq!(
        c.set_mem_table(&mem, true).unwrap(),
        Some(0),
        "SET_MEM_TABLE"
    );
    extra(&mut c, "SET_MEM_TABLE");
    assert_eq!(
        c.set_vring_num(0, 128, true).unwrap(),
        Some(0),
        "SET_VRING_NUM"
    );
    extra(&mut c, "SET_VRING_NUM");
    assert_eq!(
        c.set_vring_base(0, 0, true).unwrap(),
        Some(0),
        "SET_VRING_BASE"
    );
    extra(&mut c, "SET_VRING_BASE");
    assert_eq!(
        c.set_vring_addr(&s, true).unwrap(),
        Some(0),
        "SET_VRING_ADDR"
    );
    extra(&mut c, "SET_VRING_ADDR");
    assert_eq!(
        c.set_vring_call(0, Some(s.call), true).unwrap(),
        Some(0),
        "SET_VRING_CALL"
    );
    extra(&mut c, "SET_VRING_CALL");
    assert_eq!(
        c.set_vring_err(0, s.err, true).unwrap(),
        Some(0),
        "SET_VRING_ERR"
    );
    extra(&mut c, "SET_VRING_ERR");
    assert_eq!(
        c.set_vring_kick(0, Some(s.kick), true).unwrap(),
        Some(0),
        "SET_VRING_KICK"
    );
    extra(&mut c, "SET_VRING_KICK");
    assert_eq!(
        c.set_vring_enable(0, true, true).unwrap(),
        Some(0),
        "SET_VRING_ENABLE"
    );
    extra(&mut c, "SET_VRING_ENABLE");

    // Messages with their own reply: exactly that reply, even with NEED_REPLY.
    for (req, want) in [
        (FrontendReq::GET_FEATURES, Some(EXPECTED_FEATURES)),
        (FrontendReq::GET_PROTOCOL_FEATURES, Some(EXPECTED_PROTOCOL)),
        (FrontendReq::GET_QUEUE_NUM, Some(3)),
        (FrontendReq::GET_MAX_MEM_SLOTS, None),
    ] {
        c.send_raw(req as u32, FLAG_VERSION | FLAG_NEED_REPLY, &[], &[])
            .unwrap();
        let r = c.recv_reply_to(req).unwrap();
        let v = r
            .u64()
            .unwrap_or_else(|| panic!("{req:?}: payload {:02x?}", r.payload));
        if let Some(w) = want {
            assert_eq!(v, w, "{req:?}");
        }
        extra(&mut c, &format!("{req:?} with NEED_REPLY"));
    }
    let r = c.get_config_raw(0, 8, true).unwrap();
    assert_eq!(&r.payload[12..], &3u64.to_le_bytes());
    extra(&mut c, "GET_CONFIG with NEED_REPLY");
    let (idx, base) = c.get_vring_base(0).unwrap();
    assert_eq!((idx, base), (0, 0), "GET_VRING_BASE of an idle ring");
    extra(&mut c, "GET_VRING_BASE");
}

#[test]
fn qemu_handshake_then_traffic() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let n = &vm.negotiated;
    assert_eq!(n.offered_features, EXPECTED_FEATURES);
    assert_eq!(n.queue_num, 3);
    assert_eq!(n.config.as_deref(), Some(&3u64.to_le_bytes()[..]));
    assert_eq!(n.features, EXPECTED_FEATURES);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1000);
    vm.driver.send(id, b"over qemu").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 9, secs(5)).unwrap(),
        b"over qemu"
    );
    assert!(vm.driver.anomalies.is_empty(), "{:?}", vm.driver.anomalies);
}

#[test]
fn qemu_handshake_with_configure_mem_slots_uses_add_mem_reg() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.qemu.protocol_mask |= PF_CONFIGURE_MEM_SLOTS;
    let mut vm = vm_with(&p, opts);
    assert!(vm.negotiated.max_mem_slots.unwrap() >= 8);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1001);
    vm.driver.send(id, b"slots").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"slots");
}

#[test]
fn crosvm_handshake_with_three_queues_of_32768() {
    let p = plugin(&[]);
    let mut opts = VmOptions::crosvm();
    opts.queue_size = 32768;
    let mut vm = vm_with(&p, opts);
    assert_eq!(vm.negotiated.queue_num, 3);
    assert_eq!(vm.negotiated.features, EXPECTED_FEATURES);
    assert_eq!(
        vm.negotiated.protocol_features,
        PF_MQ | PF_REPLY_ACK | PF_CONFIG | PF_DEVICE_STATE
    );
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1002);
    vm.driver.send(id, b"crosvm").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"crosvm"
    );
    std::io::Write::write_all(&mut host, b"back").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 4, secs(5)).unwrap(), b"back");
}

#[test]
fn crosvm_handshake_with_unnegotiated_backend_req_fd_as_in_the_brief() {
    // SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
    // SET_BACKEND_REQ_FD (flags 0x1, one end of a socketpair), GET_QUEUE_NUM, then activation.
    let p = plugin(&[]);
    let mut opts = VmOptions::crosvm();
    opts.crosvm.backend_req_fd = BackendReqFd::Always;
    let mut vm = vm_with(&p, opts);
    assert!(vm.client.backend_channel.is_some());
    assert_eq!(vm.negotiated.queue_num, 3);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1006);
    vm.driver.send(id, b"req-fd").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"req-fd"
    );
    // Nothing is ever sent on the backend channel (BACKEND_REQ not negotiated).
    let ch = vm.client.backend_channel.as_ref().unwrap();
    ch.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut &*ch, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the backend wrote on the backend-request channel"
    );
}

#[test]
fn set_backend_req_fd_without_negotiation_gets_one_reply() {
    let p = plugin(&[]);
    let mut c = negotiated_client(&p);
    let ack = c.set_backend_req_fd(true).unwrap();
    assert!(ack.is_some(), "one u64 reply");
    if let Some(m) = c.pending_message(ms(150)) {
        panic!("a second message arrived: {m:?}");
    }
    // crosvm style (no NEED_REPLY): no reply, and the connection keeps working.
    c.set_backend_req_fd(false).unwrap();
    assert_eq!(c.get_features().unwrap(), EXPECTED_FEATURES);
}

#[test]
fn reset_device_while_running_posts_transport_reset() {
    let p = plugin(&[]);
    let mut opts = VmOptions::crosvm();
    opts.crosvm.protocol_mask |= PF_RESET_DEVICE;
    let mut vm = vm_with(&p, opts.clone());
    assert_ne!(vm.negotiated.protocol_features & PF_RESET_DEVICE, 0);
    let (_id, mut host, _l) = guest_to_host(&mut vm, &p, 1003);
    assert_eq!(
        vm.driver.recv_event(ms(200)).unwrap(),
        None,
        "no event before the reset"
    );

    assert_eq!(vm.client.reset_device().unwrap().unwrap_or(0), 0);
    let ev = event_after_reset(&mut vm, &opts);
    assert_eq!(
        ev,
        Some(EVENT_TRANSPORT_RESET),
        "TRANSPORT_RESET (le32 0) on the event queue"
    );
    // The reset dropped the old connection: the host side sees its end.
    let (_, ended) = read_to_eof(&mut host, secs(3));
    assert!(
        ended,
        "host socket of a connection from before RESET_DEVICE still open"
    );
}

#[test]
fn frontend_disconnect_then_next_frontend_on_same_socket() {
    let p = plugin(&[]);
    let ino = inode(&p.vm().socket);
    {
        let mut vm = qemu_vm(&p);
        let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1004);
        vm.driver.send(id, b"first").unwrap();
        assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"first");
        drop(vm);
        let (rest, ended) = read_to_eof(&mut host, secs(3));
        assert!(
            ended && rest.is_empty(),
            "host socket after frontend disconnect: {rest:02x?}, ended {ended}"
        );
    }
    std::thread::sleep(ms(100));
    assert_eq!(inode(&p.vm().socket), ino, "socket path re-created");
    p.assert_alive();
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1005);
    vm.driver.send(id, b"second").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"second"
    );
    assert_eq!(inode(&p.vm().socket), ino);
}

#[test]
fn frontend_disconnect_mid_handshake_then_next_frontend() {
    let p = plugin(&[]);
    {
        let mut c = owned_client(&p);
        let mem = GuestMemory::single(1 << 20).unwrap();
        c.set_mem_table(&mem, true).unwrap();
        c.set_vring_num(0, 128, false).unwrap();
    }
    assert_serves_new_frontend(&p);
}
