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

/// Sends `data` as a Linux guest does: RW packets of up to 64 KiB as credit allows, the credit
/// capped by its own buffer (`min(peer buf_alloc, own buf_alloc)` in flight, Linux's
/// `virtio_transport_tx_buf_alloc`), and when the credit runs out it waits for a CREDIT_UPDATE
/// without ever asking (Linux sends no CREDIT_REQUEST). Fails if no update comes within 30 s.
fn send_like_linux(vm: &mut Vm, id: ConnId, data: &[u8]) {
    let own = vm.driver.conn(id).buf_alloc;
    let capped = |vm: &Vm| {
        let c = vm.driver.conn(id);
        let window = c.peer_buf_alloc.min(own);
        window.saturating_sub(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt)) as usize
    };
    let mut sent = 0;
    let deadline = Instant::now() + secs(30);
    while sent < data.len() {
        assert!(
            Instant::now() < deadline,
            "guest starved at {sent} of {} bytes: no CREDIT_UPDATE came unasked",
            data.len()
        );
        let end = (sent + 65536).min(data.len()).min(sent + capped(vm));
        let n = vm.driver.try_send(id, &data[sent..end]).unwrap();
        sent += n;
        if n == 0 {
            vm.driver
                .pump_until(ms(100), |d| {
                    let c = d.conn(id);
                    c.peer_buf_alloc.min(own) > c.tx_cnt.wrapping_sub(c.peer_fwd_cnt)
                })
                .unwrap();
        } else {
            vm.driver.pump().unwrap();
        }
    }
}

fn credit_updates(vm: &Vm, id: ConnId) -> usize {
    let c = vm.driver.conn(id);
    c.history
        .iter()
        .filter(|h| h.op == OP_CREDIT_UPDATE)
        .count()
}

#[test]
fn a_1_mib_window_stream_arrives_intact_with_few_credit_updates() {
    // 16 MiB in 64 KiB packets through a 1 MiB window, the host reading at once. More than
    // 256 KiB in one tx pass makes the device send its gathered batch mid-pass; when that
    // `sendmsg` came up short, the packet being gathered was batched behind bytes already queued
    // and later packets were queued ahead of it (bytes reordered at a 64 KiB boundary).
    // An update is due when the guest's view has less than 128 KiB free (one per ~896 KiB with
    // every byte forwarded at once; more when the host socket lags): far fewer than one per
    // packet (256).
    let p = plugin(&["--tx-buffer-size", "1048576"]);
    let mut opts = VmOptions::qemu();
    opts.driver.buf_alloc = 1 << 20;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4005);
    let data = pattern(24, 16 << 20);
    let total = data.len();
    let reader = std::thread::spawn(move || read_exact_timeout(&mut host, total, secs(30)));
    send_like_linux(&mut vm, id, &data);
    let got = reader.join().unwrap().expect("host read the stream");
    let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "bytes lost or reordered");
    let updates = credit_updates(&vm, id);
    assert!(
        (17..=64).contains(&updates),
        "{updates} CREDIT_UPDATEs for 16 MiB through a 1 MiB window"
    );
}

#[test]
fn a_slow_reader_never_leaves_a_linux_guest_waiting_for_good() {
    // The host reads 8 KiB every 2 ms while the guest streams 3 MiB through the default 256 KiB
    // buffer: the guest runs dry again and again and each time an unasked update frees it.
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4006);
    let data = pattern(25, 3 << 20);
    let total = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        while got.len() < total {
            let want = (total - got.len()).min(8192);
            got.extend(read_exact_timeout(&mut host, want, secs(30))?);
            std::thread::sleep(ms(2));
        }
        std::io::Result::Ok(got)
    });
    send_like_linux(&mut vm, id, &data);
    let got = reader.join().unwrap().expect("host read the stream");
    assert!(got == data, "bytes lost or reordered");
    assert!(
        credit_updates(&vm, id) >= (3 << 20) / (256 << 10) - 1,
        "the guest can only have sent 3 MiB through 256 KiB on updates"
    );
}

#[test]
fn a_buffer_larger_than_the_guest_s_own_still_gets_updates() {
    // The plugin advertises 1 MiB, the guest's own buffer is 256 KiB, and it (as Linux since
    // 2025, stable 6.1 included) keeps at most 256 KiB in flight: updates must come on that
    // window. With the threshold on our 1 MiB alone the stream stopped at 256 KiB (a real 6.1
    // guest timed out there against `--tx-buffer-size 1048576`).
    let p = plugin(&["--tx-buffer-size", "1048576"]);
    let mut opts = VmOptions::qemu();
    opts.driver.buf_alloc = 256 << 10;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 4007);
    let data = pattern(26, 4 << 20);
    let total = data.len();
    let reader = std::thread::spawn(move || read_exact_timeout(&mut host, total, secs(30)));
    send_like_linux(&mut vm, id, &data);
    let got = reader.join().unwrap().expect("host read the stream");
    assert!(got == data, "bytes lost or reordered");
}
