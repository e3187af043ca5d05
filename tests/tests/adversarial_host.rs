//! Adversarial suite, hostile host clients (any local user who can reach a VM's `<uds-path>`):
//! idle clients, connect churn and floods must cost the plugin bounded fds, CPU and log, and
//! never lock the guest (or another VM) out. Measured: fds and CPU seconds of the plugin process
//! (/proc), log bytes, canary transfers on another connection and another VM.

mod common;
use common::measure::*;
use common::*;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn pid(p: &PluginProcess) -> u32 {
    p.pid().expect("plugin running")
}

/// A guest → host round trip on `paths` (the canary of "another connection / another VM").
fn canary(vm: &mut Vm, paths: &VmPaths, port: u32) {
    let (id, mut host, _l) = guest_to_host_at(vm, paths, port);
    vm.driver.send(id, b"canary").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(10)).unwrap(),
        b"canary"
    );
    host.write_all(b"back").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 4, secs(10)).unwrap(), b"back");
    vm.driver.reset(id).unwrap();
    vm.driver.conns.remove(&id);
}

/// A host → guest connection on `paths` with its CONNECT line, accepted by the guest.
fn host_canary(vm: &mut Vm, paths: &VmPaths, port: u32) {
    vm.driver.listen(port);
    let line = format!("connect {port}\n");
    let mut s = hybrid_connect_raw(&paths.uds, &[line.as_bytes()]).unwrap();
    let req = vm
        .driver
        .wait_request(port, secs(10))
        .unwrap()
        .expect("the guest receives the host client's REQUEST");
    let id = vm.driver.accept_request(&req).unwrap();
    assert_eq!(read_line(&mut s, secs(10)).unwrap(), format!("OK {port}\n"));
    s.write_all(b"ping").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 4, secs(10)).unwrap(), b"ping");
}

/// Item 1: 600 idle host clients on one VM's `<uds-path>` hold a bounded number of the plugin's
/// fds; a newcomer that sends its line still gets through, and the other VM is untouched.
#[test]
fn idle_host_clients_hold_a_bounded_number_of_fds() {
    raise_own_fd_limit();
    let p = PluginProcess::multi(&[(3, "connect-line-timeout-ms=60000"), (4, "")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::qemu().cid(4)).unwrap();
    let base = fd_count(pid(&p));
    let idle: Vec<UnixStream> = (0..600)
        .map(|_| UnixStream::connect(&p.vms[0].uds).unwrap())
        .collect();
    std::thread::sleep(ms(500));
    let held = fd_count(pid(&p)).saturating_sub(base);
    eprintln!("measured: 600 idle host clients hold {held} plugin fds");
    assert!(
        held <= 128 + 8,
        "600 idle host clients hold {held} plugin fds (base {base})"
    );
    host_canary(&mut a, &p.vms[0], 5001);
    canary(&mut a, &p.vms[0], 5002);
    canary(&mut b, &p.vms[1], 5003);
    drop(idle);
    p.assert_alive();
}

/// Item 1: out of fds (EMFILE) with clients still knocking, the plugin must not spin: CPU
/// seconds over 2 s stay small and the log stays small; once the clients leave it accepts again.
#[test]
fn out_of_fds_the_plugin_waits_instead_of_spinning() {
    let p = PluginProcess::multi(&[(3, "connect-line-timeout-ms=60000"), (4, "")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::qemu().cid(3)).unwrap();
    // A round trip: the plugin has taken every fd of the handshake before fds run out.
    a.client.get_features().unwrap();
    let pid = pid(&p);
    limit_fds(pid, fd_count(pid) as u64 + 30);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&p.vms[0].uds).unwrap())
        .collect();
    std::thread::sleep(ms(300));
    let cpu0 = cpu_seconds(pid);
    let log0 = file_len(&p.stderr_path);
    std::thread::sleep(secs(2));
    let cpu = cpu_seconds(pid) - cpu0;
    let log = file_len(&p.stderr_path) - log0;
    eprintln!("measured: at EMFILE, {cpu:.2} CPU s and {log} log bytes in 2 s");
    assert!(cpu < 0.5, "{cpu:.2} CPU seconds in 2 s at EMFILE");
    assert!(log < 20_000, "{log} bytes of log in 2 s at EMFILE");
    drop(idle);
    std::thread::sleep(ms(500));
    host_canary(&mut a, &p.vms[0], 5004);
    p.assert_alive();
}

/// Item 5: host clients cannot take the guest's slots: with max-connections 4 they get at most
/// 2, and the guest still opens its own outbound connections.
#[test]
fn host_clients_cannot_use_up_the_guests_connections() {
    let p = plugin(&["--max-connections", "4"]);
    let mut vm = qemu_vm(&p);
    vm.driver.listen(6000);
    let mut clients = Vec::new();
    let mut accepted = 0;
    for _ in 0..6 {
        clients.push(hybrid_connect_raw(&p.vm().uds, &[b"connect 6000\n"]).unwrap());
        if let Some(req) = vm.driver.wait_request(6000, ms(500)).unwrap() {
            vm.driver.accept_request(&req).unwrap();
            accepted += 1;
        }
    }
    assert_eq!(accepted, 2, "host clients got {accepted} of 4 connections");
    let l = listen(&p.vm().port_path(6001));
    for k in 0..2 {
        let r = vm.driver.connect(HOST_CID, 6001, TYPE_STREAM);
        assert!(
            r.is_ok(),
            "guest outbound connection {k} refused while host clients hold their share: {r:?}"
        );
        accept_timeout(&l, secs(5)).unwrap();
    }
}

/// Item 7: while the guest posts no rx buffers, host connect churn must not pile up control
/// packets: when the guest finally reads, it is not flooded with stale REQUEST/RST pairs.
#[test]
fn host_connect_churn_does_not_pile_up_control_packets() {
    let p = plugin(&["--connect-timeout-ms", "50"]);
    let mut o = VmOptions::qemu();
    o.driver.rx_buffers = 0;
    let mut vm = vm_with(&p, o);
    let t = Instant::now();
    let mut churned = 0u32;
    while t.elapsed() < secs(2) {
        if let Ok(mut s) = UnixStream::connect(&p.vm().uds) {
            let _ = s.write_all(b"connect 7000\n");
            churned += 1;
        }
    }
    // Every churned connection has timed out by now.
    std::thread::sleep(ms(500));
    let rss = rss_kib(pid(&p));
    vm.driver.post_rx_buffers(64);
    vm.driver.pump_for(secs(1)).unwrap();
    let stale = vm.driver.rx_packets;
    eprintln!("measured: {churned} host connects, {stale} stale packets, plugin RSS {rss} KiB");
    assert!(
        stale <= 64,
        "{stale} stale control packets reached the guest after {churned} host connects \
         (plugin RSS {rss} KiB)"
    );
    p.assert_alive();
}

/// Item 9: a flood of malformed guest packets costs a bounded amount of log, and the log says
/// how much it suppressed.
#[test]
fn a_malformed_packet_flood_is_logged_at_a_bounded_rate() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let log0 = file_len(&p.stderr_path);
    let n = 5000;
    for _ in 0..n {
        vm.driver
            .send_bytes(&[0u8; 10], &TxLayout::Contiguous)
            .unwrap();
    }
    assert!(vm.driver.wait_tx_done(secs(20)).unwrap());
    // A later line reports the suppressed count.
    std::thread::sleep(secs(1));
    vm.driver
        .send_bytes(&[0u8; 10], &TxLayout::Contiguous)
        .unwrap();
    assert!(vm.driver.wait_tx_done(secs(5)).unwrap());
    let log = file_len(&p.stderr_path) - log0;
    assert!(log < 20_000, "{log} bytes of log for {n} malformed packets");
    assert_logged(&p, "similar lines suppressed");
    canary(&mut vm, &p.vms[0], 7100);
}

/// Item 12: `connect +5000` and `connect 4294967295` (VMADDR_PORT_ANY) are not CONNECT lines.
#[test]
fn malformed_connect_lines_reach_no_guest_port() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    vm.driver.listen(5000);
    vm.driver.listen(u32::MAX);
    for line in ["connect +5000\n", "connect 4294967295\n"] {
        let mut s = hybrid_connect_raw(&p.vm().uds, &[line.as_bytes()]).unwrap();
        let (_, ended) = read_to_eof(&mut s, secs(5));
        assert!(ended, "{line:?}: the client was not closed");
        for port in [5000, u32::MAX] {
            assert!(
                vm.driver.wait_request(port, ms(200)).unwrap().is_none(),
                "{line:?} reached guest port {port}"
            );
        }
    }
}

/// Item 1: a connect flood on one VM's `<uds-path>` (clients that connect and leave at once)
/// must not starve that VM's data path: a transfer on the same VM completes meanwhile.
#[test]
fn a_connect_flood_does_not_starve_the_data_path() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 8000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let uds = p.vm().uds.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if UnixStream::connect(&uds).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(ms(200));
    let data = pattern(8, 1 << 20);
    let t = Instant::now();
    let mut got = Vec::new();
    let mut sent = 0;
    while got.len() < data.len() && t.elapsed() < secs(20) {
        if sent < data.len() {
            sent += vm.driver.try_send(id, &data[sent..]).unwrap();
        }
        vm.driver.pump_for(ms(5)).unwrap();
        if let ReadOutcome::Data(d) = read_some(&mut host, ms(5)) {
            got.extend(d);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connects: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    eprintln!(
        "measured: 1 MiB moved in {:?} during {connects} flooding connects",
        t.elapsed()
    );
    assert!(
        got == data,
        "{} of {} bytes arrived within 20 s during a connect flood ({connects} connects)",
        got.len(),
        data.len()
    );
}

/// Item 1: while idle clients keep the pending set full (so newcomers close the oldest), a
/// client that sends its CONNECT line at once still gets through every time.
#[test]
fn a_client_that_sends_its_line_is_served_during_an_idle_flood() {
    raise_own_fd_limit();
    let p = plugin(&["--connect-line-timeout-ms", "60000"]);
    let mut vm = qemu_vm(&p);
    vm.driver.listen(8100);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let uds = p.vm().uds.clone();
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(s) = UnixStream::connect(&uds) {
                        held.push_back(s);
                    }
                    if held.len() > 300 {
                        held.pop_front();
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(ms(200));
    let mut served = 0;
    let rounds = 20;
    for _ in 0..rounds {
        let Ok(mut s) = hybrid_connect_raw(&p.vm().uds, &[b"connect 8100\n"]) else {
            continue;
        };
        if let Some(req) = vm.driver.wait_request(8100, secs(5)).unwrap() {
            let id = vm.driver.accept_request(&req).unwrap();
            if read_line(&mut s, secs(5)).is_ok_and(|l| l == "OK 8100\n") {
                served += 1;
            }
            vm.driver.reset(id).unwrap();
            vm.driver.conns.remove(&id);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    eprintln!("measured: {served} of {rounds} line-sending clients served during an idle flood");
    assert_eq!(
        served, rounds,
        "line-sending clients were closed during the flood"
    );
}
