//! Guest → host connections: REQUEST → `<uds>_P`, RESPONSE, data both ways, RST without listener.

mod common;
use common::*;

use std::io::Write;
use std::time::Instant;

#[test]
fn request_response_and_data_both_ways() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(1234));
    let req = Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 50000,
        dst_port: 1234,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        flags: 0,
        buf_alloc: 262144,
        fwd_cnt: 0,
    };
    vm.driver.send_packet(&req, &[]).unwrap();
    let resp = vm.driver.expect_packet(secs(5));
    let mut host = accept_timeout(&l, secs(2)).expect("plugin connected to <uds>_1234");
    assert_eq!(resp.hdr.op, OP_RESPONSE, "{resp:?}");
    assert_eq!(resp.hdr.src_cid, 2, "{resp:?}");
    assert_eq!(resp.hdr.dst_cid, 3, "{resp:?}");
    assert_eq!(resp.hdr.src_port, 1234, "{resp:?}");
    assert_eq!(resp.hdr.dst_port, 50000, "{resp:?}");
    assert_eq!(resp.hdr.type_, TYPE_STREAM, "{resp:?}");
    assert_eq!(resp.hdr.len, 0, "{resp:?}");
    assert_eq!(resp.used_len, 44, "{resp:?}");
    assert_eq!(
        resp.hdr.buf_alloc, 262144,
        "default tx-buffer-size: {resp:?}"
    );

    // guest → host
    let mut rw = req;
    rw.op = OP_RW;
    rw.len = 16;
    vm.driver.send_packet(&rw, b"hello from guest").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 16, secs(5)).unwrap(),
        b"hello from guest"
    );

    // host → guest
    host.write_all(b"hello from host").unwrap();
    // (CREDIT_UPDATEs may come first: the device may send them at any time.)
    let pkt = vm
        .driver
        .expect_packet_where(secs(5), "RW", |p| p.hdr.op != OP_CREDIT_UPDATE);
    assert_eq!(pkt.hdr.op, OP_RW, "{pkt:?}");
    assert_eq!(
        (
            pkt.hdr.src_cid,
            pkt.hdr.dst_cid,
            pkt.hdr.src_port,
            pkt.hdr.dst_port,
            pkt.hdr.type_
        ),
        (2, 3, 1234, 50000, TYPE_STREAM),
        "{pkt:?}"
    );
    assert_eq!(pkt.payload, b"hello from host", "{pkt:?}");
    assert_eq!(pkt.hdr.len, 15);
    assert_eq!(pkt.used_len, 44 + 15);
    // The plugin forwarded our 16 bytes to the host socket: its fwd_cnt says so eventually.
    assert!(pkt.hdr.fwd_cnt <= 16, "{pkt:?}");
}

#[test]
fn no_listener_gives_rst_within_one_second() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let t = Instant::now();
    vm.driver
        .send_packet(&hdr(3, 50001, 4321, OP_REQUEST), &[])
        .unwrap();
    let pkt = vm.driver.expect_packet(secs(2));
    let dt = t.elapsed();
    assert_eq!(pkt.hdr.op, OP_RST, "{pkt:?}");
    assert_eq!(
        (
            pkt.hdr.src_cid,
            pkt.hdr.dst_cid,
            pkt.hdr.src_port,
            pkt.hdr.dst_port
        ),
        (2, 3, 4321, 50001),
        "{pkt:?}"
    );
    assert!(dt < secs(1), "RST after {dt:?}");
    // A socket file with nobody listening behind it behaves the same.
    let path = p.vm().port_path(4322);
    drop(listen(&path));
    assert!(path.exists());
    vm.driver
        .send_packet(&hdr(3, 50002, 4322, OP_REQUEST), &[])
        .unwrap();
    let pkt = vm.driver.expect_packet(secs(2));
    assert_eq!((pkt.hdr.op, pkt.hdr.dst_port), (OP_RST, 50002), "{pkt:?}");
}

#[test]
fn rx_buffers_split_across_many_descriptors() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    // The header itself spans three descriptors.
    opts.driver.rx_layout = vec![16, 20, 8, 100, 3952];
    opts.driver.tx_layout = TxLayout::Sizes(vec![10, 30, 4, 7]);
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 1235);
    let data = pattern(1, 20000);
    host.write_all(&data).unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, data.len(), secs(10)).unwrap(),
        data
    );
    let back = pattern(2, 10000);
    vm.driver.send(id, &back).unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, back.len(), secs(10)).unwrap(),
        back
    );
    assert!(vm.driver.anomalies.is_empty(), "{:?}", vm.driver.anomalies);
}

#[test]
fn several_connections_to_the_same_port_are_independent() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(1236));
    let a = vm.driver.connect(HOST_CID, 1236, TYPE_STREAM).unwrap();
    let mut ha = accept_timeout(&l, secs(2)).unwrap();
    let b = vm.driver.connect(HOST_CID, 1236, TYPE_STREAM).unwrap();
    let mut hb = accept_timeout(&l, secs(2)).unwrap();
    vm.driver.send(a, b"to-a").unwrap();
    vm.driver.send(b, b"to-b").unwrap();
    assert_eq!(read_exact_timeout(&mut ha, 4, secs(5)).unwrap(), b"to-a");
    assert_eq!(read_exact_timeout(&mut hb, 4, secs(5)).unwrap(), b"to-b");
    hb.write_all(b"from-b").unwrap();
    ha.write_all(b"from-a").unwrap();
    vm.driver
        .pump_until(secs(5), |d| {
            d.conn(a).rx_data.len() >= 6 && d.conn(b).rx_data.len() >= 6
        })
        .unwrap();
    let (ca, cb) = (vm.driver.conn(a), vm.driver.conn(b));
    assert!(
        ca.rx_data.iter().eq(b"from-a".iter()) && cb.rx_data.iter().eq(b"from-b".iter()),
        "a got {:?} (history {:?}); b got {:?} (history {:?})",
        ca.rx_data,
        ca.history,
        cb.rx_data,
        cb.history,
    );
}
