//! Credit-based flow control in both directions.

mod common;
use common::*;

use std::io::Write;
use std::time::Instant;

#[test]
fn plugin_never_exceeds_the_guest_credit() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.buf_alloc = 4096;
    opts.driver.auto_credit_update = false;
    opts.driver.answer_credit_request = false;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4000);
    let data = pattern(21, 20000);
    host.write_all(&data).unwrap();

    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < data.len() {
        rounds += 1;
        assert!(
            rounds <= 10,
            "more rounds than 20000 / 4096 needs: got {}",
            got.len()
        );
        // Let the plugin send everything it may.
        vm.driver.pump_for(ms(400)).unwrap();
        let c = vm.driver.conn(id);
        let outstanding = c.rx_cnt.wrapping_sub(c.fwd_cnt);
        assert_eq!(
            c.credit_violation_bytes, 0,
            "plugin overran buf_alloc 4096: {:?}",
            c.history
        );
        let expect = (data.len() - got.len()).min(4096) as u32;
        assert_eq!(
            outstanding, expect,
            "round {rounds}: the plugin should fill exactly the advertised credit"
        );
        // Consume everything, then give the credit back.
        got.extend(vm.driver.take(id, usize::MAX).unwrap());
        vm.driver.credit_update(id).unwrap();
    }
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "bytes lost, duplicated or reordered across credit stalls"
    );
    vm.driver.pump_for(ms(200)).unwrap();
    assert!(
        vm.driver.conn(id).rx_data.is_empty(),
        "extra bytes after the stream"
    );
}

#[test]
fn plugin_resumes_after_credit_update_without_request() {
    // The guest advertises 4096 and never asks; an unsolicited CREDIT_UPDATE must restart the flow.
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.buf_alloc = 4096;
    opts.driver.auto_credit_update = false;
    opts.driver.answer_credit_request = false;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4001);
    host.write_all(&pattern(22, 8192)).unwrap();
    vm.driver.pump_for(ms(300)).unwrap();
    assert_eq!(vm.driver.conn(id).rx_cnt, 4096);
    let first = vm.driver.take(id, usize::MAX).unwrap();
    vm.driver.pump_for(ms(300)).unwrap();
    assert_eq!(
        vm.driver.conn(id).rx_cnt,
        4096,
        "sent beyond credit before CREDIT_UPDATE"
    );
    vm.driver.credit_update(id).unwrap();
    let second = vm.driver.recv_exact(id, 4096, secs(3)).unwrap();
    assert_eq!([first, second].concat(), pattern(22, 8192));
}

#[test]
fn response_advertises_tx_buffer_size() {
    let p = plugin(&["--tx-buffer-size", "8192"]);
    let mut vm = qemu_vm(&p);
    let _l = listen(&p.vm().port_path(4002));
    vm.driver
        .send_packet(&hdr(3, 50000, 4002, OP_REQUEST), &[])
        .unwrap();
    let resp = vm.driver.expect_packet(secs(5));
    assert_eq!(
        (resp.hdr.op, resp.hdr.buf_alloc, resp.hdr.fwd_cnt),
        (OP_RESPONSE, 8192, 0),
        "{resp:?}"
    );
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4003);
    vm.driver.send(id, b"12345").unwrap();
    assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"12345");
    let h = vm.driver.header(id, OP_CREDIT_REQUEST, 0, 0);
    // Send raw so the reply is seen raw: temporarily forget the connection.
    let conn = vm.driver.conns.remove(&id).unwrap();
    vm.driver.send_packet(&h, &[]).unwrap();
    let (upd, skipped) = vm
        .driver
        .recv_until(secs(2), |p| p.hdr.op == OP_CREDIT_UPDATE)
        .unwrap();
    vm.driver.conns.insert(id, conn);
    let upd = upd.unwrap_or_else(|| panic!("no CREDIT_UPDATE; saw {skipped:?}"));
    assert_eq!(upd.hdr.buf_alloc, 262144, "default tx-buffer-size: {upd:?}");
    assert_eq!(
        upd.hdr.fwd_cnt, 5,
        "fwd_cnt counts the 5 bytes written to the host: {upd:?}"
    );
    assert_eq!((upd.hdr.src_port, upd.hdr.dst_port), (4003, id.local_port));
}

#[test]
fn host_not_reading_stalls_fwd_cnt_and_nothing_is_lost() {
    let p = plugin(&["--tx-buffer-size", "16384"]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4004);
    assert_eq!(vm.driver.conn(id).peer_buf_alloc, 16384);

    // Push until the plugin's fwd_cnt stops moving (host socket buffer full).
    let data = pattern(23, 32 << 20);
    let mut sent = 0usize;
    let mut last_fwd = 0u32;
    let mut still_since = Instant::now();
    let deadline = Instant::now() + secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "fwd_cnt never stopped (sent {sent})"
        );
        let n = vm
            .driver
            .try_send(id, &data[sent..(sent + 65536).min(data.len())])
            .unwrap();
        sent += n;
        if n == 0 {
            vm.driver.send_ctrl(id, OP_CREDIT_REQUEST, 0).unwrap();
        }
        vm.driver.pump_for(ms(20)).unwrap();
        let c = vm.driver.conn(id);
        // The guest never has more than buf_alloc outstanding, by construction of try_send.
        assert!(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt) <= c.peer_buf_alloc);
        if c.peer_fwd_cnt != last_fwd {
            last_fwd = c.peer_fwd_cnt;
            still_since = Instant::now();
        } else if Instant::now() - still_since > secs(1) && c.peer_credit() == 0 {
            break;
        }
        assert!(
            sent < data.len(),
            "32 MiB absorbed without the host reading"
        );
    }
    let c = vm.driver.conn(id);
    assert_eq!(
        c.tx_cnt.wrapping_sub(c.peer_fwd_cnt),
        16384,
        "stalled with the full buffer outstanding"
    );
    assert!((c.peer_fwd_cnt as usize) < sent);

    // Now the host reads: everything sent arrives in order, then the rest flows.
    let total = sent + 100_000;
    let reader = std::thread::spawn(move || read_exact_timeout(&mut host, total, secs(30)));
    vm.driver.send(id, &data[sent..total]).unwrap();
    let got = reader.join().unwrap().expect("host read after the stall");
    assert!(
        got == data[..total],
        "bytes lost or reordered across the stall"
    );
}
