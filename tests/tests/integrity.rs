//! Data integrity: 8 MiB each way (sha256), multi-descriptor tx and rx, 64 KiB packets.

mod common;
use common::*;

use std::io::{Read, Write};
use std::time::Instant;
use vsock_plugin_tests::real_guest::proto::Sha256;

const MIB8: usize = 8 << 20;

fn sha(d: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(d);
    h.finish().to_vec()
}

#[test]
fn eight_mib_each_way_concurrently_sha256() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.tx_layout = TxLayout::HeaderSeparate(3);
    opts.driver.rx_layout = vec![20, 24, 1000, 3052];
    opts.driver.max_payload = 32 * 1024;
    let mut vm = vm_with(&p, opts);
    let (id, host, _l) = guest_to_host(&mut vm, &p, 3000);

    let to_host = pattern(11, MIB8);
    let to_guest = pattern(12, MIB8);
    let want_host = sha(&to_host);
    let want_guest = sha(&to_guest);

    let mut hw = host.try_clone().unwrap();
    let mut hr = host;
    let writer = std::thread::spawn(move || {
        hw.set_write_timeout(Some(secs(60))).unwrap();
        hw.write_all(&to_guest).map(|_| hw)
    });
    let reader = std::thread::spawn(move || {
        hr.set_read_timeout(Some(secs(60))).unwrap();
        let mut h = Sha256::new();
        let mut n = 0usize;
        let mut buf = vec![0u8; 65536];
        while n < MIB8 {
            match hr.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k;
                }
                Err(e) => return Err(format!("host read after {n} bytes: {e}")),
            }
        }
        Ok((n, h.finish().to_vec()))
    });

    let deadline = Instant::now() + secs(90);
    let mut sent = 0usize;
    let mut got = Sha256::new();
    let mut got_n = 0usize;
    while sent < MIB8 || got_n < MIB8 {
        assert!(
            Instant::now() < deadline,
            "timeout: guest sent {sent}, received {got_n} of {MIB8}"
        );
        if sent < MIB8 {
            let end = (sent + 256 * 1024).min(MIB8);
            sent += vm.driver.try_send(id, &to_host[sent..end]).unwrap();
        }
        vm.driver.pump().unwrap();
        let chunk = vm.driver.take(id, usize::MAX).unwrap();
        got_n += chunk.len();
        got.update(&chunk);
        if chunk.is_empty() {
            if sent < MIB8 && vm.driver.conn(id).peer_credit() == 0 {
                vm.driver.send_ctrl(id, OP_CREDIT_REQUEST, 0).unwrap();
            }
            vm.driver.wait_activity(ms(2));
        }
    }
    assert_eq!(got_n, MIB8);
    assert_eq!(
        got.finish().to_vec(),
        want_guest,
        "host → guest sha256 differs"
    );
    let (n, h) = reader.join().unwrap().expect("host reader");
    assert_eq!(n, MIB8);
    assert_eq!(h, want_host, "guest → host sha256 differs");
    writer.join().unwrap().expect("host writer");
    assert_eq!(vm.driver.credit_violations(), 0);
    assert!(
        vm.driver.anomalies.is_empty(),
        "{:?}",
        &vm.driver.anomalies[..vm.driver.anomalies.len().min(5)]
    );
}

#[test]
fn sixty_four_kib_packets_guest_to_host() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.tx_layout = TxLayout::HeaderSeparate(2);
    opts.driver.max_payload = 64 * 1024;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 3001);
    let data = pattern(13, 32 * 64 * 1024);
    let want = sha(&data);
    let reader =
        std::thread::spawn(move || read_exact_timeout(&mut host, 32 * 64 * 1024, secs(60)));
    // Each RW is one full 64 KiB packet (header + 2 payload descriptors).
    for k in 0..32 {
        vm.driver
            .send(id, &data[k * 65536..(k + 1) * 65536])
            .unwrap();
    }
    let got = reader.join().unwrap().expect("host read");
    assert_eq!(sha(&got), want);
}

#[test]
fn sixty_four_kib_rx_buffers_host_to_guest() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.rx_layout = vec![44, 32768, 32768];
    opts.driver.rx_buffers = 16;
    opts.driver.buf_alloc = 1 << 20;
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 3002);
    let data = pattern(14, 4 << 20);
    let d2 = data.clone();
    let w = std::thread::spawn(move || host.write_all(&d2).map(|_| host));
    let got = vm.driver.recv_exact(id, data.len(), secs(60)).unwrap();
    assert!(got == data, "host → guest bytes differ");
    let _host = w.join().unwrap().unwrap();
    let c = vm.driver.conn(id);
    let max = c.history.iter().map(|h| h.len).max().unwrap_or(0);
    assert!(
        max <= 65536,
        "a packet of {max} bytes exceeds the rx buffer"
    );
    assert!(vm.driver.anomalies.is_empty(), "{:?}", vm.driver.anomalies);
}
