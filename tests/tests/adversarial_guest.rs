//! Adversarial suite, hostile guests: what a guest (or a sibling guest) does must cost only its
//! own connections. Each test measures the quantity issue 12 names: a canary transfer on another
//! connection and another VM stays intact, both ends of a reset connection see it end, the
//! plugin never relays a guest into its own sockets.

mod common;
use common::*;

use std::io::Write;

/// Establishes a guest → host connection at `paths`, and checks bytes flow both ways.
fn canary(vm: &mut Vm, paths: &VmPaths, port: u32) {
    let (id, mut host, _l) = guest_to_host_at(vm, paths, port);
    let data = pattern(port as u64, 100_000);
    vm.driver.send(id, &data).unwrap();
    assert!(
        read_exact_timeout(&mut host, data.len(), secs(10)).unwrap() == data,
        "canary bytes differ"
    );
    host.write_all(b"canary back").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 11, secs(10)).unwrap(),
        b"canary back"
    );
    vm.driver.reset(id).unwrap();
    vm.driver.conns.remove(&id);
}

/// Item 4: an RST the device sends for a malformed packet ends the connection on both sides:
/// the host peer sees EOF, the slot is free again (max-connections 1), and the guest may REQUEST
/// again from the same port.
#[test]
fn rst_for_a_bad_packet_ends_the_connection_on_both_sides() {
    let p = plugin(&["--max-connections", "1"]);
    let mut vm = qemu_vm(&p);
    let l = listen(&p.vm().port_path(14000));
    type Mutation = fn(&mut Header);
    let cases: [(&str, Mutation); 3] = [
        ("RW longer than its descriptors", |h| {
            h.op = OP_RW;
            h.len = 1000;
        }),
        ("unknown op", |h| h.op = 99),
        ("unsupported socket type", |h| {
            h.op = OP_RW;
            h.type_ = 7;
        }),
    ];
    for (k, (what, mutate)) in cases.iter().enumerate() {
        let src_port = 41000 + k as u32;
        let req = hdr(3, src_port, 14000, OP_REQUEST);
        vm.driver.send_packet(&req, &[]).unwrap();
        let resp = vm.driver.expect_packet_where(secs(5), "RESPONSE", |p| {
            p.hdr.dst_port == src_port && p.hdr.op != OP_CREDIT_UPDATE
        });
        assert_eq!(resp.hdr.op, OP_RESPONSE, "{what}: {resp:?}");
        let mut host = accept_timeout(&l, secs(5)).unwrap();
        let mut bad = req;
        mutate(&mut bad);
        vm.driver.send_packet(&bad, &[1, 2, 3]).unwrap();
        let rst = vm.driver.expect_packet_where(secs(5), "RST", |p| {
            p.hdr.dst_port == src_port && p.hdr.op != OP_CREDIT_UPDATE
        });
        assert_eq!(rst.hdr.op, OP_RST, "{what}: {rst:?}");
        let (_, ended) = read_to_eof(&mut host, secs(5));
        assert!(ended, "{what}: the host peer still sees an open connection");
        // The slot is free and the port pair unused: the same REQUEST is answered again.
        vm.driver.send_packet(&req, &[]).unwrap();
        let again = vm.driver.expect_packet_where(secs(5), "answer", |p| {
            p.hdr.dst_port == src_port && p.hdr.op != OP_CREDIT_UPDATE
        });
        assert_eq!(
            again.hdr.op, OP_RESPONSE,
            "{what}: REQUEST after the reset got {again:?}"
        );
        let _h2 = accept_timeout(&l, secs(5)).unwrap();
        let mut rst = req;
        rst.op = OP_RST;
        vm.driver.send_packet(&rst, &[]).unwrap();
        vm.driver.pump_for(ms(100)).unwrap();
    }
}

/// Item 3 (connect time): a guest connection to `<uds-path>_P` never reaches one of the
/// plugin's own sockets, whatever path leads there (here symlinks made after start-up to another
/// VM's hybrid socket, and to the control socket): the guest gets RST, the other VM's guest sees
/// nothing, the control plane gets no connection from the guest.
#[test]
fn a_guest_cannot_reach_the_plugins_own_sockets() {
    let p = PluginProcess::multi(&[(3, "groups=a"), (4, "groups=b"), (5, "groups=c")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    b.driver.listen(5000);
    let targets = [
        ("VM 4's hybrid socket", p.vms[1].uds.clone(), 7000u32),
        ("VM 4's vhost-user socket", p.vms[1].socket.clone(), 7001),
        (
            "VM 5's vhost-user socket (no frontend yet)",
            p.vms[2].socket.clone(),
            7002,
        ),
    ];
    for (what, target, port) in &targets {
        std::os::unix::fs::symlink(target, p.vms[0].port_path(*port)).unwrap();
        let r = a.driver.connect(HOST_CID, *port, TYPE_STREAM);
        if let Ok(id) = r {
            // What a hostile guest would do next through the hybrid socket.
            let _ = a.driver.send(id, b"connect 5000\n");
        }
        assert!(
            b.driver.wait_request(5000, ms(500)).unwrap().is_none(),
            "guest 3 reached guest 4's port 5000 through {what}"
        );
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "guest connect to {what} was not refused: {r:?}"
        );
    }
    // The listeners never saw the attempts: VM 5's free frontend slot was not taken, even for a
    // moment, and VM 4's guest still works.
    let log = p.stderr_tail(1 << 20);
    assert!(
        !log.contains("[cid 5] frontend connected"),
        "a guest connection reached VM 5's frontend slot:\n{log}"
    );
    let mut c = Vm::start(&p.vms[2].socket, VmOptions::qemu().cid(5)).unwrap();
    canary(&mut c, &p.vms[2], 7102);
    canary(&mut b, &p.vms[1], 7100);
    canary(&mut a, &p.vms[0], 7101);
    assert_logged(&p, "one of the plugin's own sockets");
}

/// Item 2: guest 4 posts no rx buffers and floods guest 3 with REQUESTs; guest 3 answers them.
/// Guest 3's replies to 4 must not stop guest 3's own traffic: a canary transfer to the host on
/// VM 3 (and on a third VM) completes, and only connections with guest 4 pay (RST).
#[test]
fn a_sibling_that_never_reads_costs_only_the_connections_to_it() {
    let p = PluginProcess::multi(&[(3, ""), (4, ""), (5, "groups=other")]).unwrap();
    let mut oa = VmOptions::qemu().cid(3);
    oa.driver.timeout = secs(1);
    let mut a = Vm::start(&p.vms[0].socket, oa).unwrap();
    let mut ob = VmOptions::crosvm().cid(4);
    ob.driver.rx_buffers = 0;
    let mut b = Vm::start(&p.vms[1].socket, ob).unwrap();
    let mut c = Vm::start(&p.vms[2].socket, VmOptions::qemu().cid(5)).unwrap();
    a.driver.listen(9100);
    let flood = 3000u32;
    let mut accepted = 0u32;
    let mut stalled = None;
    for k in 0..flood {
        let mut h = hdr(4, 20000 + k, 9100, OP_REQUEST);
        h.dst_cid = 3;
        b.driver.send_packet(&h, &[]).unwrap();
        while let Some(req) = a.driver.wait_request(9100, ms(0)).unwrap() {
            match a.driver.accept_request(&req) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    stalled.get_or_insert(format!("after {accepted} replies: {e}"));
                }
            }
        }
        if stalled.is_some() {
            break;
        }
    }
    // Answer the REQUESTs still on their way.
    while stalled.is_none() {
        let Some(req) = a.driver.wait_request(9100, ms(500)).unwrap() else {
            break;
        };
        match a.driver.accept_request(&req) {
            Ok(_) => accepted += 1,
            Err(e) => stalled = Some(format!("after {accepted} replies: {e}")),
        }
    }
    // Guest 3's own traffic goes on.
    let (id, mut host, _l) = {
        let l = listen(&p.vms[0].port_path(9200));
        let r = a.driver.connect(HOST_CID, 9200, TYPE_STREAM);
        let id = r.unwrap_or_else(|e| {
            panic!("guest 3's own connect failed while guest 4 does not read ({stalled:?}): {e}")
        });
        (id, accept_timeout(&l, secs(5)).unwrap(), l)
    };
    a.driver.send(id, b"still moving").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 12, secs(5)).unwrap(),
        b"still moving"
    );
    assert!(stalled.is_none(), "guest 3's tx queue stalled {stalled:?}");
    // What the flood cost: some of guest 3's connections with guest 4 were reset, no others.
    a.driver.pump_for(ms(300)).unwrap();
    let reset = a
        .driver
        .conns
        .values()
        .filter(|c| c.id.peer_cid == 4 && c.state == ConnState::Reset)
        .count();
    eprintln!(
        "measured: {flood} REQUESTs from the silent guest, {accepted} answered, {reset} reset"
    );
    assert!(
        reset > 0 && reset < flood as usize,
        "{reset} of {accepted} connections with the silent guest were reset"
    );
    canary(&mut c, &p.vms[2], 9201);
    p.assert_alive();
}
