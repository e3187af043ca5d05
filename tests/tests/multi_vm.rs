//! Several VMs in one process: sibling groups.

mod common;
use common::*;

fn three_vms() -> (PluginProcess, Vm, Vm, Vm) {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1"), (5, "groups=g2")]).unwrap();
    let a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let c = Vm::start(&p.vms[2].socket, VmOptions::qemu().cid(5)).unwrap();
    assert_eq!(
        a.negotiated.config.as_deref(),
        Some(&3u64.to_le_bytes()[..])
    );
    assert_eq!(
        b.negotiated.config.as_deref(),
        Some(&4u64.to_le_bytes()[..])
    );
    assert_eq!(
        c.negotiated.config.as_deref(),
        Some(&5u64.to_le_bytes()[..])
    );
    (p, a, b, c)
}

#[test]
fn guests_in_the_same_group_connect_by_cid() {
    let (_p, mut a, mut b, _c) = three_vms();
    b.driver.listen(9000);
    let id = a.driver.connect_start(4, 9000, TYPE_STREAM).unwrap();
    let req = b
        .driver
        .wait_request(9000, secs(5))
        .unwrap()
        .expect("guest 4 receives the REQUEST");
    assert_eq!(
        (
            req.hdr.src_cid,
            req.hdr.dst_cid,
            req.hdr.src_port,
            req.hdr.dst_port,
            req.hdr.type_
        ),
        (3, 4, id.local_port, 9000, TYPE_STREAM),
        "{req:?}"
    );
    assert_eq!(
        req.hdr.buf_alloc, a.driver.cfg.buf_alloc,
        "credit passes through: {req:?}"
    );
    let bid = b.driver.accept_request(&req).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(5)).unwrap(),
        ConnState::Established
    );
    let resp = a.driver.conn(id).history[0];
    assert_eq!(
        (resp.src_cid, resp.src_port, resp.dst_port),
        (4, 9000, id.local_port)
    );

    a.driver.send(id, b"hello sibling").unwrap();
    assert_eq!(
        b.driver.recv_exact(bid, 13, secs(5)).unwrap(),
        b"hello sibling"
    );
    b.driver.send(bid, b"hello back").unwrap();
    assert_eq!(a.driver.recv_exact(id, 10, secs(5)).unwrap(), b"hello back");
}

/// Pushes 1 MiB from `a` to `b` over an established sibling connection.
fn sibling_transfer(a: &mut Vm, b: &mut Vm, id: ConnId, bid: ConnId) {
    let data = pattern(31, 1 << 20);
    let mut sent = 0;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + secs(20);
    while got.len() < data.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "sibling transfer stalled at {} (sent {sent}); sender {:?}; receiver {:?}",
            got.len(),
            a.driver.conn(id),
            b.driver.conn(bid),
        );
        if sent < data.len() {
            sent += a
                .driver
                .try_send(id, &data[sent..(sent + 65536).min(data.len())])
                .unwrap();
        }
        a.driver.pump().unwrap();
        b.driver.pump().unwrap();
        got.extend(b.driver.take(bid, usize::MAX).unwrap());
        a.driver.wait_activity(ms(1));
    }
    assert!(got == data, "sibling bytes differ");
    assert_eq!(
        a.driver.credit_violations() + b.driver.credit_violations(),
        0
    );
}

fn sibling_pair(a: &mut Vm, b: &mut Vm, port: u32) -> (ConnId, ConnId) {
    b.driver.listen(port);
    let id = a.driver.connect_start(4, port, TYPE_STREAM).unwrap();
    let req = b
        .driver
        .wait_request(port, secs(5))
        .unwrap()
        .expect("REQUEST");
    let bid = b.driver.accept_request(&req).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(5)).unwrap(),
        ConnState::Established
    );
    (id, bid)
}

#[test]
fn sibling_transfer_with_packets_that_fit_the_rx_buffers() {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1")]).unwrap();
    let mut o = VmOptions::qemu().cid(3);
    o.driver.max_payload = 4096 - 44;
    let mut a = Vm::start(&p.vms[0].socket, o).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let (id, bid) = sibling_pair(&mut a, &mut b, 9003);
    sibling_transfer(&mut a, &mut b, id, bid);
}

/// 64 KiB tx packets from one guest must reach a sibling whose rx buffers are 4 KiB (a Linux
/// guest's default): the device has to split them.
#[test]
fn sibling_transfer_64k_packets_into_4k_rx_buffers() {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1")]).unwrap();
    let mut o = VmOptions::qemu().cid(3);
    o.driver.max_payload = 65536;
    let mut a = Vm::start(&p.vms[0].socket, o).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let (id, bid) = sibling_pair(&mut a, &mut b, 9004);
    sibling_transfer(&mut a, &mut b, id, bid);
}

#[test]
fn guest_in_another_group_is_unreachable() {
    let (_p, mut a, _b, mut c) = three_vms();
    c.driver.listen(9001);
    let id = a.driver.connect_start(5, 9001, TYPE_STREAM).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(2)).unwrap(),
        ConnState::Reset
    );
    assert!(
        c.driver.wait_request(9001, ms(300)).unwrap().is_none(),
        "guest 5 saw the REQUEST"
    );
    // Unknown CID too.
    let id = a.driver.connect_start(99, 9001, TYPE_STREAM).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(2)).unwrap(),
        ConnState::Reset
    );
}

#[test]
fn each_vm_has_its_own_hybrid_namespace() {
    let (p, mut a, mut b, _c) = three_vms();
    let (ida, mut ha, _la) = guest_to_host_at(&mut a, &p.vms[0], 9002);
    let (idb, mut hb, _lb) = guest_to_host_at(&mut b, &p.vms[1], 9002);
    a.driver.send(ida, b"from 3").unwrap();
    b.driver.send(idb, b"from 4").unwrap();
    assert_eq!(read_exact_timeout(&mut ha, 6, secs(5)).unwrap(), b"from 3");
    assert_eq!(read_exact_timeout(&mut hb, 6, secs(5)).unwrap(), b"from 4");
}
