//! Resource hygiene: connection churn, port reuse and frontend reconnects must not leak fds.

mod common;
use common::*;

use std::io::{Read, Write};

fn fd_count(p: &PluginProcess) -> usize {
    let pid = p.pid().expect("plugin running");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (bounded) for the plugin's fd count to come back to at most `limit`.
fn settle_fds(p: &PluginProcess, limit: usize) -> usize {
    let deadline = std::time::Instant::now() + secs(3);
    loop {
        let n = fd_count(p);
        if n <= limit || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(ms(20));
    }
}

#[test]
fn connection_churn_does_not_leak_fds() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(13000));
    // Warm up one connection so lazily created fds exist.
    let id = vm.driver.connect(HOST_CID, 13000, TYPE_STREAM).unwrap();
    let h = accept_timeout(&l, secs(2)).unwrap();
    vm.driver.reset(id).unwrap();
    drop(h);
    vm.driver.pump_for(ms(100)).unwrap();
    let base = fd_count(&p);
    for k in 0..300u32 {
        let id = vm.driver.connect(HOST_CID, 13000, TYPE_STREAM).unwrap();
        let mut h = accept_timeout(&l, secs(2)).unwrap();
        vm.driver.send(id, &k.to_le_bytes()).unwrap();
        assert_eq!(
            read_exact_timeout(&mut h, 4, secs(2)).unwrap(),
            k.to_le_bytes()
        );
        if k % 2 == 0 {
            vm.driver.reset(id).unwrap();
        } else {
            // Host closes; the guest sees SHUTDOWN/RST and answers RST like Linux.
            drop(h);
            vm.driver
                .pump_until(secs(3), |d| {
                    let c = d.conn(id);
                    c.state == ConnState::Reset || c.peer_shutdown == 3
                })
                .unwrap();
            if vm.driver.conn(id).state != ConnState::Reset {
                vm.driver.reset(id).unwrap();
            }
        }
        vm.driver.conns.remove(&id);
    }
    let n = settle_fds(&p, base);
    assert!(
        n <= base,
        "plugin fds: {base} before 300 connections, {n} after"
    );
}

#[test]
fn host_initiated_churn_does_not_leak_fds() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (_id, s) = host_to_guest(&mut vm, &p, 13001);
    drop(s);
    vm.driver.pump_for(ms(200)).unwrap();
    let base = fd_count(&p);
    for _ in 0..200 {
        let (id, mut s) = host_to_guest(&mut vm, &p, 13001);
        s.write_all(b"x").unwrap();
        assert_eq!(vm.driver.recv_exact(id, 1, secs(2)).unwrap(), b"x");
        vm.driver.reset(id).unwrap();
        let mut b = [0u8; 8];
        s.set_read_timeout(Some(secs(2))).unwrap();
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "host socket open after guest RST"
        );
        vm.driver.conns.remove(&id);
    }
    // Clients that never send a line, too.
    for _ in 0..50 {
        drop(std::os::unix::net::UnixStream::connect(&p.vm().uds).unwrap());
    }
    let n = settle_fds(&p, base);
    assert!(
        n <= base,
        "plugin fds: {base} before, {n} after host-initiated churn"
    );
}

#[test]
fn guest_port_can_be_reused_after_close() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(13002));
    for round in 0..5u8 {
        let h = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 40000,
            dst_port: 13002,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        };
        vm.driver.send_packet(&h, &[]).unwrap();
        let resp = vm.driver.expect_packet_where(secs(2), "RESPONSE", |p| {
            p.hdr.op != OP_CREDIT_UPDATE && p.hdr.dst_port == 40000
        });
        assert_eq!(resp.hdr.op, OP_RESPONSE, "round {round}: {resp:?}");
        let mut host = accept_timeout(&l, secs(2)).unwrap();
        let mut rw = h;
        rw.op = OP_RW;
        rw.len = 1;
        vm.driver.send_packet(&rw, &[round]).unwrap();
        assert_eq!(read_exact_timeout(&mut host, 1, secs(2)).unwrap(), [round]);
        let mut rst = h;
        rst.op = OP_RST;
        vm.driver.send_packet(&rst, &[]).unwrap();
        let (_, ended) = read_to_eof(&mut host, secs(2));
        assert!(ended, "round {round}: host socket open after RST");
    }
}

#[test]
fn frontend_reconnects_do_not_leak_fds() {
    let p = plugin(&[]);
    drop(qemu_vm(&p));
    std::thread::sleep(ms(100));
    let base = fd_count(&p);
    for k in 0..30 {
        let mut vm = if k % 2 == 0 {
            qemu_vm(&p)
        } else {
            vm_with(&p, VmOptions::crosvm())
        };
        let (id, mut h, _l) = guest_to_host(&mut vm, &p, 13003);
        vm.driver.send(id, b"r").unwrap();
        assert_eq!(read_exact_timeout(&mut h, 1, secs(2)).unwrap(), b"r");
        drop(vm);
        let (_, ended) = read_to_eof(&mut h, secs(2));
        assert!(ended, "cycle {k}: host socket open after frontend left");
    }
    let n = settle_fds(&p, base);
    assert!(
        n <= base,
        "plugin fds: {base} before, {n} after 30 frontend sessions"
    );
}
