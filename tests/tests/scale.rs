//! Many concurrent connections.

mod common;
use common::*;

use std::io::{Read, Write};
use std::time::Instant;

#[test]
fn a_thousand_concurrent_guest_to_host_connections_echo() {
    const N: usize = 1000;
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.queue_size = 1024;
    opts.driver.rx_buffers = 512;
    opts.driver.buf_alloc = 16 * 1024;
    let mut vm = vm_with(&p, opts);
    let l = listen(&p.vm().port_path(8000));
    // Echo server: one thread per accepted connection, each echoing until EOF.
    let acceptor = std::thread::spawn(move || {
        let mut handles = Vec::new();
        for _ in 0..N {
            let Ok(mut s) = accept_timeout(&l, secs(60)) else {
                break;
            };
            handles.push(std::thread::spawn(move || {
                s.set_read_timeout(Some(secs(60))).unwrap();
                let mut b = [0u8; 4096];
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        handles.len()
    });

    let t = Instant::now();
    let ids: Vec<ConnId> = (0..N)
        .map(|_| {
            vm.driver
                .connect_start(HOST_CID, 8000, TYPE_STREAM)
                .unwrap()
        })
        .collect();
    let all = vm
        .driver
        .pump_until(secs(60), |d| {
            ids.iter()
                .all(|id| d.conn(*id).state != ConnState::Connecting)
        })
        .unwrap();
    let established = ids
        .iter()
        .filter(|id| vm.driver.conn(**id).state == ConnState::Established)
        .count();
    assert!(
        all,
        "only {established} of {N} connections answered within 60 s"
    );
    assert_eq!(established, N, "connections refused");
    let t_connect = t.elapsed();

    let payload = |k: usize| format!("conn {k:04} says {}", "x".repeat(k % 97)).into_bytes();
    for (k, id) in ids.iter().enumerate() {
        vm.driver.send(*id, &payload(k)).unwrap();
    }
    let done = vm
        .driver
        .pump_until(secs(60), |d| {
            ids.iter()
                .enumerate()
                .all(|(k, id)| d.conn(*id).rx_data.len() >= payload(k).len())
        })
        .unwrap();
    let mut bad = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let got = vm.driver.take(*id, usize::MAX).unwrap();
        if got != payload(k) {
            bad.push((k, String::from_utf8_lossy(&got).into_owned()));
        }
    }
    assert!(
        done && bad.is_empty(),
        "{} of {N} echoes wrong or missing, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    for id in &ids {
        vm.driver.reset(*id).unwrap();
    }
    assert_eq!(acceptor.join().unwrap(), N);
    eprintln!(
        "{N} connections in {t_connect:?}, echoes after {:?}",
        t.elapsed()
    );
    assert_eq!(vm.driver.credit_violations(), 0);
}

#[test]
fn max_connections_is_enforced_with_rst() {
    let p = plugin(&["--max-connections", "4"]);
    let mut vm = qemu_vm(&p);
    let _l = listen(&p.vm().port_path(8001));
    let ids: Vec<ConnId> = (0..5)
        .map(|_| {
            vm.driver
                .connect_start(HOST_CID, 8001, TYPE_STREAM)
                .unwrap()
        })
        .collect();
    vm.driver
        .pump_until(secs(5), |d| {
            ids.iter()
                .all(|id| d.conn(*id).state != ConnState::Connecting)
        })
        .unwrap();
    let states: Vec<ConnState> = ids.iter().map(|id| vm.driver.conn(*id).state).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == ConnState::Established)
            .count(),
        4,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| **s == ConnState::Reset).count(),
        1,
        "{states:?}"
    );
}
