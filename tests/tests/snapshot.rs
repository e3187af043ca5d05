//! Snapshot and restore through VHOST_USER_PROTOCOL_F_DEVICE_STATE, driven with crosvm's exact
//! sequences (`frontend::crosvm_snapshot`, transcribed from google/crosvm @ 10297b9a,
//! devices/src/virtio/vhost_user_frontend/mod.rs) and a guest driver that resets its sockets on
//! TRANSPORT_RESET as Linux does. No VMM on this machine can run these paths for real (QEMU's
//! vhost-user vsock is unmigratable; crosvm needs KVM).

mod common;
use common::*;

use std::io::Write;
use std::sync::atomic::Ordering;

use vsock_plugin::snapshot::format::{self, SavedState, MAX_STATE_BYTES};
use vsock_plugin::snapshot::PADDING_ENV;
use vsock_plugin_tests::frontend::crosvm_snapshot::{self as crosvm, StalledPipe};

const ALL_RINGS: [u32; 3] = [0, 1, 2];

/// A single-VM plugin (guest CID `cid`) with `env`.
fn plugin_env(cid: u64, env: &[(&str, &str)]) -> PluginProcess {
    let env: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
        .collect();
    PluginProcess::single_cid_with_env(cid, &[], &env).unwrap()
}

fn crosvm_vm(p: &PluginProcess) -> Vm {
    vm_with(p, VmOptions::crosvm())
}

/// Sleep + snapshot as `crosvm snapshot take` does: the ring bases and the state.
fn sleep_and_save(vm: &mut Vm) -> (Vec<u16>, Vec<u8>) {
    let acked = vm.negotiated.features;
    let bases = crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();
    let state = crosvm::snapshot(&mut vm.client, secs(5)).unwrap();
    (bases, state)
}

fn wake(vm: &mut Vm, bases: &[u16]) {
    let setups = vm.driver.vring_setups();
    crosvm::wake(
        &mut vm.client,
        &vm.mem,
        &setups,
        bases,
        vm.negotiated.features,
    )
    .unwrap();
    vm.driver.kick_all();
}

/// Restores `state` into the plugin `p` (a fresh process) for the guest of `vm` (its memory and
/// rings are the restored guest's), as crosvm's restore + wake do. Returns the CHECK result.
fn restore_into(vm: &mut Vm, p: &PluginProcess, state: &[u8], bases: &[u16]) -> u64 {
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    crosvm::new_frontend(&mut c, &CrosvmOptions::default()).unwrap();
    let check = crosvm::restore(&mut c, vm.negotiated.features, false, state, secs(5)).unwrap();
    vm.client = c;
    if check == 0 {
        wake(vm, bases);
    }
    check
}

/// `cvd snapshot_take` in one process: suspend (sleep), save, resume (wake). Connections both
/// ways survive, with bytes in flight at the pause (guest chains not yet processed, host bytes
/// written during the pause); every byte arrives once, in order.
#[test]
fn snapshot_then_resume_keeps_connections_and_bytes_both_ways() {
    let p = plugin(&[]);
    let mut vm = crosvm_vm(&p);
    let (g2h, mut ha, _l) = guest_to_host(&mut vm, &p, 6000);
    let (h2g, mut hb) = host_to_guest(&mut vm, &p, 7000);
    let to_host = pattern(1, 200_000);
    let to_guest = pattern(2, 200_000);

    vm.driver.send(g2h, &to_host[..80_000]).unwrap();
    hb.write_all(&to_guest[..80_000]).unwrap();
    let mut got_host = read_exact_timeout(&mut ha, 80_000, secs(5)).unwrap();
    let mut got_guest = vm.driver.recv_exact(h2g, 80_000, secs(5)).unwrap();

    // In flight at the pause: guest tx chains published right before the sleep.
    vm.driver.send(g2h, &to_host[80_000..120_000]).unwrap();
    let (bases, state) = sleep_and_save(&mut vm);
    assert!(!state.is_empty());
    // Host bytes written while the VM is suspended sit in the host socket.
    hb.write_all(&to_guest[80_000..120_000]).unwrap();
    let rx_used = vm.driver.rxq.used_idx();
    std::thread::sleep(ms(300));
    assert_eq!(
        vm.driver.rxq.used_idx(),
        rx_used,
        "rx ring used while asleep"
    );

    wake(&mut vm, &bases);
    vm.driver.send(g2h, &to_host[120_000..]).unwrap();
    hb.write_all(&to_guest[120_000..]).unwrap();
    got_host.extend(read_exact_timeout(&mut ha, 120_000, secs(10)).unwrap());
    got_guest.extend(vm.driver.recv_exact(h2g, 120_000, secs(10)).unwrap());
    assert!(
        got_host == to_host,
        "guest → host bytes differ after snapshot + resume"
    );
    assert!(
        got_guest == to_guest,
        "host → guest bytes differ after snapshot + resume"
    );
    assert_eq!(vm.driver.conn(g2h).state, ConnState::Established);
    assert!(vm.driver.anomalies.is_empty(), "{:?}", vm.driver.anomalies);
    let saved = format::decode(&state, 3, vm.negotiated.features).unwrap();
    assert_eq!(saved.device.connections.len(), 2);
    assert_eq!(saved.device.generation, 0);
}

/// Restore into a second plugin process: TRANSPORT_RESET reaches the guest before any rx
/// packet, the pre-snapshot connections are reset in the guest and never answered, new
/// connections work both ways, the host-initiated local port is not reused, generation 1.
#[test]
fn restore_into_a_new_process_resets_the_guest_then_serves_new_connections() {
    let a = plugin(&[]);
    let mut vm = crosvm_vm(&a);
    let (g2h, mut ha, _la) = guest_to_host(&mut vm, &a, 6100);
    let (h2g, _hb) = host_to_guest(&mut vm, &a, 7100);
    let old_local_port = h2g.peer_port;
    vm.driver.send(g2h, b"before").unwrap();
    assert_eq!(read_exact_timeout(&mut ha, 6, secs(5)).unwrap(), b"before");
    vm.driver.pump_for(ms(100)).unwrap();
    let (bases, state) = sleep_and_save(&mut vm);
    drop(a); // the old process is gone (Cuttlefish restarts the backend for a restore)

    let b = plugin(&[]);
    let listener = listen(&b.vm().port_path(6101));
    let rx0 = vm.driver.rxq.used_idx();
    let ev0 = vm.driver.evq.as_ref().unwrap().used_idx();
    let seen = |vm: &Vm| [g2h, h2g].map(|k| vm.driver.conn(k).history.len());
    let seen_before = seen(&vm);
    assert_eq!(restore_into(&mut vm, &b, &state, &bases), 0);
    // A stale guest socket sends on a pre-snapshot connection before it hears the event.
    let stale = vm.driver.header(g2h, OP_RW, 5, 0);
    vm.driver.send_packet(&stale, b"stale").unwrap();
    // Order in guest memory: the event is used before any rx buffer is.
    assert_reset_before_rx(&mut vm, rx0, ev0);
    assert_eq!(vm.driver.conn(g2h).state, ConnState::Reset);
    assert_eq!(vm.driver.conn(h2g).state, ConnState::Reset);
    vm.driver.pump_for(ms(300)).unwrap();
    assert_eq!(
        seen(&vm),
        seen_before,
        "a packet for a pre-snapshot connection reached the guest (e.g. an RST for the stale RW)"
    );

    // New connections both ways.
    let id = vm.driver.connect(HOST_CID, 6101, TYPE_STREAM).unwrap();
    let mut h = accept_timeout(&listener, secs(5)).unwrap();
    vm.driver.send(id, b"after restore").unwrap();
    assert_eq!(
        read_exact_timeout(&mut h, 13, secs(5)).unwrap(),
        b"after restore"
    );
    let (h2g_new, mut hn) = host_to_guest(&mut vm, &b, 7101);
    hn.write_all(b"hello again").unwrap();
    assert_eq!(
        vm.driver.recv_exact(h2g_new, 11, secs(5)).unwrap(),
        b"hello again"
    );
    assert!(
        h2g_new.peer_port > old_local_port,
        "local port {} handed out again after restore (was {old_local_port})",
        h2g_new.peer_port
    );
    assert_logged(&b, "restored, generation 1");
}

/// States larger than a pipe buffer (64 KiB) go both ways: the save is written while crosvm
/// reads, the load read while crosvm writes. The size comes from the test-only padding field
/// (see device_state.proto): honest for the transfer path, which never looks inside the bytes.
#[test]
fn a_state_larger_than_a_pipe_buffer_saves_and_loads() {
    let a = plugin_env(3, &[(PADDING_ENV, "300000")]);
    let mut vm = crosvm_vm(&a);
    let (bases, state) = sleep_and_save(&mut vm);
    assert!(state.len() > 300_000, "state of {} bytes", state.len());
    let b = plugin(&[]);
    assert_eq!(restore_into(&mut vm, &b, &state, &bases), 0);
    assert_eq!(
        vm.driver.recv_event(secs(3)).unwrap(),
        Some(EVENT_TRANSPORT_RESET)
    );
    assert_logged(&b, "restored, generation 1");
}

/// A frontend that never reads the save pipe, or never closes the load pipe, cannot hang the
/// VM's loop (it answers at once), nor another VM in the process (canary transfer); CHECK
/// reports the failure and the device goes on.
#[test]
fn a_stalled_pipe_fails_the_transfer_without_blocking_anyone() {
    let dir = TempDir::new().unwrap();
    let vms: Vec<VmPaths> = [3u64, 4]
        .iter()
        .enumerate()
        .map(|(k, cid)| VmPaths {
            guest_cid: *cid,
            socket: dir.join(&format!("v{k}.sock")),
            uds: dir.join(&format!("h{k}.sock")),
        })
        .collect();
    let mut args = Vec::new();
    for v in &vms {
        args.push("--vm".to_string());
        args.push(format!(
            "guest-cid={},socket={},uds-path={}",
            v.guest_cid,
            v.socket.display(),
            v.uds.display()
        ));
    }
    let p = PluginProcess::spawn_with_env(
        dir,
        args,
        vms,
        None,
        &[(PADDING_ENV, std::ffi::OsStr::new("200000"))],
    )
    .unwrap();
    let mut vm = Vm::start(&p.vms[0].socket, VmOptions::crosvm().cid(3)).unwrap();
    let mut other = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let (cid4, mut h4, _l4) = guest_to_host_at(&mut other, &p.vms[1], 6200);
    let acked = vm.negotiated.features;
    let bases = crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();

    // Save: the pipe is never read (the state is larger than its buffer).
    let save = StalledPipe::start(&mut vm.client, crosvm::DIRECTION_SAVE).unwrap();
    assert_eq!(save.reply, crosvm::REPLY_OK_NO_FD);
    let t = std::time::Instant::now();
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);
    assert!(t.elapsed() < secs(1), "the VM's loop waited on the pipe");
    let canary = pattern(9, 100_000);
    other.driver.send(cid4, &canary).unwrap();
    assert!(read_exact_timeout(&mut h4, canary.len(), secs(5)).unwrap() == canary);
    // A second transfer while this one is in flight is refused.
    let (_r, w) = crosvm::pipe().unwrap();
    assert_eq!(
        crosvm::set_device_state_fd(&mut vm.client, 0, 0, &w).unwrap(),
        0x101
    );
    std::thread::sleep(secs(4)); // past the 3 s transfer deadline
    assert_eq!(crosvm::check_device_state(&mut vm.client).unwrap(), 1);
    drop(save);

    // Load: some bytes, then the frontend neither writes more nor closes.
    let mut load = StalledPipe::start(&mut vm.client, crosvm::DIRECTION_LOAD).unwrap();
    assert_eq!(load.reply, crosvm::REPLY_OK_NO_FD);
    load.ours.write_all(b"half a state").unwrap();
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);
    assert_eq!(crosvm::check_device_state(&mut vm.client).unwrap(), 1);
    drop(load);

    // The device goes on: wake, and the VM moves data; nothing was restored.
    wake(&mut vm, &bases);
    let (id, mut h, _l) = guest_to_host_at(&mut vm, &p.vms[0], 6201);
    vm.driver.send(id, b"alive").unwrap();
    assert_eq!(read_exact_timeout(&mut h, 5, secs(5)).unwrap(), b"alive");
    assert!(!p.stderr_tail(200).contains("restored, generation"));
}

/// Every refused state leaves the device as it was: CHECK fails with a log line, and a normal
/// activation afterwards runs with no TRANSPORT_RESET (nothing applied) and moves data.
#[test]
fn refused_states_apply_nothing() {
    let a = plugin(&[]);
    let mut vm = crosvm_vm(&a);
    let features = vm.negotiated.features;
    let (bases, good) = sleep_and_save(&mut vm);
    drop(a);

    let mut garbage = pattern(5, 500);
    garbage[0] = 0x08;
    let unknown_bit = {
        let mut m: vsock_plugin_ipc::proto::device_state::DeviceStateSnapshot =
            vsock_plugin_ipc::proto::decode(&good[..good.len() - 6]).unwrap();
        m.required_features = 1 << 40;
        let mut b = vsock_plugin_ipc::proto::encode(&m);
        format::seal(&mut b);
        b
    };
    let mut wrong_cid = format::decode(&good, 3, features).unwrap();
    wrong_cid.guest_cid = 4;
    let wrong_cid = format::encode(&SavedState { ..wrong_cid }, 0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            "truncated or corrupt",
        ),
        ("garbage", garbage, "truncated or corrupt"),
        (
            "unknown must-understand bit",
            unknown_bit,
            "requires features 0x10000000000",
        ),
        (
            "other CID",
            wrong_cid,
            "guest CID 4, this VM is configured with CID 3",
        ),
    ];
    let b = plugin(&[]);
    let mut c = VhostUserClient::connect(&b.vm().socket).unwrap();
    crosvm::new_frontend(&mut c, &CrosvmOptions::default()).unwrap();
    c.set_features(features, false).unwrap();
    for (what, bytes, log) in &cases {
        let check = crosvm::restore(&mut c, features, true, bytes, secs(5)).unwrap();
        assert_eq!(check, 1, "{what} state accepted");
        assert_logged(&b, log);
    }
    // Oversized: the plugin stops reading at the cap (crosvm's write then fails), CHECK fails.
    let huge = vec![0u8; MAX_STATE_BYTES + 4096];
    let r = crosvm::restore(&mut c, features, true, &huge, secs(5));
    let check = match r {
        Ok(v) => v,
        Err(_) => crosvm::check_device_state(&mut c).unwrap(),
    };
    assert_eq!(check, 1, "oversized state accepted");
    assert_logged(&b, "limit");

    // Nothing was applied: a normal activation posts no TRANSPORT_RESET and moves data.
    vm.client = c;
    let ev0 = vm.driver.evq.as_ref().unwrap().used_idx();
    wake(&mut vm, &bases);
    let l = listen(&b.vm().port_path(6300));
    let id = vm.driver.connect(HOST_CID, 6300, TYPE_STREAM).unwrap();
    let mut h = accept_timeout(&l, secs(5)).unwrap();
    vm.driver.send(id, b"unchanged").unwrap();
    assert_eq!(
        read_exact_timeout(&mut h, 9, secs(5)).unwrap(),
        b"unchanged"
    );
    assert_eq!(
        vm.mem
            .load_u16(vm.driver.evq.as_ref().unwrap().used + 2, Ordering::Acquire),
        ev0,
        "an event was posted: a refused state was applied"
    );
    assert!(!b.stderr_tail(400).contains("restored, generation"));
}

/// SET_DEVICE_STATE_FD while a ring runs is refused (0x101) and changes nothing.
#[test]
fn a_save_while_a_ring_runs_is_refused() {
    let p = plugin(&[]);
    let mut vm = crosvm_vm(&p);
    let (id, mut h, _l) = guest_to_host(&mut vm, &p, 6400);
    let (_r, w) = crosvm::pipe().unwrap();
    assert_eq!(
        crosvm::set_device_state_fd(&mut vm.client, crosvm::DIRECTION_SAVE, 0, &w).unwrap(),
        0x101
    );
    assert_logged(&p, "ring 0 is started");
    assert_eq!(crosvm::check_device_state(&mut vm.client).unwrap(), 1);
    vm.driver.send(id, b"still running").unwrap();
    assert_eq!(
        read_exact_timeout(&mut h, 13, secs(5)).unwrap(),
        b"still running"
    );
    // Phase other than Stopped, with the rings stopped: refused too.
    let acked = vm.negotiated.features;
    crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();
    assert_eq!(
        crosvm::set_device_state_fd(&mut vm.client, crosvm::DIRECTION_SAVE, 1, &w).unwrap(),
        0x101
    );
}

/// Cuttlefish's suspend sends SIGTSTP to host processes (`process_monitor.cc`); the plugin must
/// go on serving its frontend (crosvm's sleep and save come after that signal). Without the
/// ignore, the default action stops the process and this handshake times out.
#[test]
fn sigtstp_does_not_stop_the_plugin() {
    let p = plugin(&[]);
    let pid = p.pid().unwrap() as i32;
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTSTP) }, 0);
    std::thread::sleep(ms(200));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_ne!(state, "T", "the plugin was stopped by SIGTSTP");
    let mut vm = crosvm_vm(&p);
    let (id, mut h, _l) = guest_to_host(&mut vm, &p, 6500);
    vm.driver.send(id, b"not stopped").unwrap();
    assert_eq!(
        read_exact_timeout(&mut h, 11, secs(5)).unwrap(),
        b"not stopped"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

/// After a restore the TRANSPORT_RESET is owed even when the guest has not posted an event
/// buffer yet: rx waits (a host connect's REQUEST is not delivered), and the event goes out as
/// soon as a buffer is posted, before the REQUEST.
#[test]
fn the_reset_waits_for_an_event_buffer_and_rx_waits_for_the_reset() {
    let a = plugin(&[]);
    let mut vm = crosvm_vm(&a);
    let features = vm.negotiated.features;
    let (_bases, state) = sleep_and_save(&mut vm);
    drop(a);

    // The restored guest: fresh rings whose event buffers are not published yet.
    let opts = VmOptions::crosvm();
    let mem = std::sync::Arc::new(GuestMemory::new(&opts.mem_layout).unwrap());
    mem.alloc(4096, 4096);
    let driver = VsockDriver::new(mem.clone(), opts.queue_size, opts.driver.clone()).unwrap();
    let evq_avail = driver.evq.as_ref().unwrap().avail;
    let posted = mem.load_u16(evq_avail + 2, Ordering::Acquire);
    assert!(posted > 0);
    mem.store_u16(evq_avail + 2, 0, Ordering::Release);

    let b = plugin(&[]);
    let mut c = VhostUserClient::connect(&b.vm().socket).unwrap();
    crosvm::new_frontend(&mut c, &CrosvmOptions::default()).unwrap();
    assert_eq!(
        crosvm::restore(&mut c, features, false, &state, secs(5)).unwrap(),
        0
    );
    let mut vm = Vm {
        client: c,
        mem: mem.clone(),
        driver,
        negotiated: vm.negotiated.clone(),
    };
    wake(&mut vm, &[0, 0, 0]);
    vm.driver.listen(7300);
    let mut hc = hybrid_connect_raw(&b.vm().uds, &[b"connect 7300\n"]).unwrap();
    std::thread::sleep(ms(500));
    assert_eq!(
        vm.driver.rxq.used_idx(),
        0,
        "rx used before the TRANSPORT_RESET"
    );
    assert_eq!(vm.driver.evq.as_ref().unwrap().used_idx(), 0);

    // The guest posts its event buffers: the event first, then the REQUEST.
    mem.store_u16(evq_avail + 2, posted, Ordering::Release);
    vm.driver.evq.as_ref().unwrap().notify();
    let deadline = std::time::Instant::now() + secs(5);
    while vm.driver.rxq.used_idx() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the REQUEST never came"
        );
        std::thread::sleep(ms(2));
    }
    assert_eq!(
        vm.driver.evq.as_ref().unwrap().used_idx(),
        1,
        "rx before the event"
    );
    assert_eq!(
        vm.driver.recv_event(secs(1)).unwrap(),
        Some(EVENT_TRANSPORT_RESET)
    );
    let req = vm
        .driver
        .wait_request(7300, secs(5))
        .unwrap()
        .expect("REQUEST");
    let id = vm.driver.accept_request(&req).unwrap();
    assert_eq!(read_line(&mut hc, secs(5)).unwrap(), "OK 7300\n");
    hc.write_all(b"fresh").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 5, secs(5)).unwrap(), b"fresh");
}

/// A frontend that goes away in the middle of a load, still holding the pipe's write end (a
/// crashed VMM's child could): the pipe leaves the VM's epoll set with the session, so the loop
/// does not spin on it, and the next frontend is served.
#[test]
fn a_frontend_leaving_mid_transfer_leaves_no_busy_pipe() {
    let p = plugin(&[]);
    let mut vm = crosvm_vm(&p);
    let acked = vm.negotiated.features;
    crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();
    let load = StalledPipe::start(&mut vm.client, crosvm::DIRECTION_LOAD).unwrap();
    assert_eq!(load.reply, crosvm::REPLY_OK_NO_FD);
    // The pipe stays readable (data in it) while the frontend side holds both ends.
    let (mut w, _kept_read_end) = (load.ours, load.theirs);
    w.write_all(b"some bytes").unwrap();
    drop(vm);
    std::thread::sleep(ms(300));
    let pid = p.pid().unwrap();
    let before = measure::cpu_seconds(pid);
    std::thread::sleep(secs(1));
    let used = measure::cpu_seconds(pid) - before;
    assert!(
        used < 0.3,
        "the plugin used {used:.2} CPU-s in 1 s after the frontend left"
    );
    assert_serves_new_frontend(&p);
    drop(w);
}

/// A load into the process that serves the VM now (crosvm restoring a running backend): sleep,
/// load `state`, wake with the current rings.
fn load_in_place(vm: &mut Vm, state: &[u8]) {
    let acked = vm.negotiated.features;
    let bases = crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();
    assert_eq!(
        crosvm::restore(&mut vm.client, acked, true, state, secs(5)).unwrap(),
        0
    );
    wake(vm, &bases);
}

/// Waits for the restore's TRANSPORT_RESET, checking in guest memory that no rx buffer was used
/// before it (`rx0`, `ev0`: the used indexes before the load).
fn assert_reset_before_rx(vm: &mut Vm, rx0: u16, ev0: u16) {
    let deadline = std::time::Instant::now() + secs(5);
    loop {
        let ev = vm.driver.evq.as_ref().unwrap().used_idx();
        let rx = vm.driver.rxq.used_idx();
        assert!(rx == rx0 || ev != ev0, "rx packet before TRANSPORT_RESET");
        if ev != ev0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no TRANSPORT_RESET");
        std::thread::sleep(ms(2));
    }
    assert_eq!(
        vm.driver.recv_event(secs(1)).unwrap(),
        Some(EVENT_TRANSPORT_RESET)
    );
}

/// Reads `s` until EOF or a reset: the host end of a closed connection.
fn assert_host_closed(s: &mut std::os::unix::net::UnixStream) {
    use std::io::Read;
    s.set_read_timeout(Some(secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // bytes written before the load may still be there
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("host socket neither closed nor reset: {e}"),
        }
    }
}

/// A load into a process whose device has live connections (crosvm restoring an earlier
/// snapshot into the running backend): every host socket sees EOF, the guest hears
/// TRANSPORT_RESET before any rx packet, nothing of the old connections reaches it afterwards
/// (host bytes written during the pause, a stale guest RW on a connection from the snapshot and
/// on one opened after it), new connections work both ways, and the plugin's fds are back to
/// what they were before the connections.
#[test]
fn a_load_into_a_running_device_closes_its_connections() {
    let p = plugin(&[]);
    let pid = p.pid().unwrap();
    let mut vm = crosvm_vm(&p);
    vm.driver.pump_for(ms(100)).unwrap();
    let fds_before = measure::fd_count(pid);

    let (g2h, mut ha, _la) = guest_to_host(&mut vm, &p, 6200);
    let (h2g, mut hb) = host_to_guest(&mut vm, &p, 7200);
    let (bases, state) = sleep_and_save(&mut vm);
    wake(&mut vm, &bases);
    // Opened after the save: the restored guest never had it.
    let (later, mut hc, _lc) = guest_to_host(&mut vm, &p, 6202);
    vm.driver.send(g2h, b"old").unwrap();
    assert_eq!(read_exact_timeout(&mut ha, 3, secs(5)).unwrap(), b"old");
    hb.write_all(b"old").unwrap();
    assert_eq!(vm.driver.recv_exact(h2g, 3, secs(5)).unwrap(), b"old");
    vm.driver.send(later, b"later").unwrap();
    assert_eq!(read_exact_timeout(&mut hc, 5, secs(5)).unwrap(), b"later");
    vm.driver.pump_for(ms(100)).unwrap();

    let rx0 = vm.driver.rxq.used_idx();
    let ev0 = vm.driver.evq.as_ref().unwrap().used_idx();
    let old = [g2h, h2g, later];
    let seen = |vm: &Vm| old.map(|k| vm.driver.conn(k).history.len());
    let seen_before = seen(&vm);
    let acked = vm.negotiated.features;
    let bases = crosvm::sleep(&mut vm.client, acked, &ALL_RINGS).unwrap();
    // Host bytes written while the VM sleeps sit in the host socket at the load.
    hb.write_all(b"in flight").unwrap();
    std::thread::sleep(ms(50));
    assert_eq!(
        crosvm::restore(&mut vm.client, acked, true, &state, secs(5)).unwrap(),
        0
    );
    wake(&mut vm, &bases);
    for s in [&mut ha, &mut hb, &mut hc] {
        assert_host_closed(s);
    }
    let _ = hb.write_all(b"after the load"); // EPIPE or lost: never reaches the guest
    for k in [g2h, later] {
        let stale = vm.driver.header(k, OP_RW, 5, 0);
        vm.driver.send_packet(&stale, b"stale").unwrap();
    }
    assert_reset_before_rx(&mut vm, rx0, ev0);
    for k in old {
        assert_eq!(vm.driver.conn(k).state, ConnState::Reset, "{k:?}");
    }
    vm.driver.pump_for(ms(300)).unwrap();
    assert_eq!(
        seen(&vm),
        seen_before,
        "a packet of a pre-load connection reached the guest (e.g. an RST for a stale RW)"
    );

    // New connections both ways.
    let (g2h_new, mut hn, _ln) = guest_to_host(&mut vm, &p, 6201);
    vm.driver.send(g2h_new, b"new g2h").unwrap();
    assert_eq!(read_exact_timeout(&mut hn, 7, secs(5)).unwrap(), b"new g2h");
    hn.write_all(b"reply").unwrap();
    assert_eq!(vm.driver.recv_exact(g2h_new, 5, secs(5)).unwrap(), b"reply");
    let (h2g_new, mut hm) = host_to_guest(&mut vm, &p, 7201);
    hm.write_all(b"new h2g").unwrap();
    assert_eq!(
        vm.driver.recv_exact(h2g_new, 7, secs(5)).unwrap(),
        b"new h2g"
    );
    vm.driver.send(h2g_new, b"back").unwrap();
    assert_eq!(read_exact_timeout(&mut hm, 4, secs(5)).unwrap(), b"back");
    assert!(vm.driver.anomalies.is_empty(), "{:?}", vm.driver.anomalies);
    assert_logged(&p, "restored, generation 1");

    // The sockets of the old connections are gone; those of the new ones go when they close.
    drop((ha, hb, hc, hn, hm, _la, _lc, _ln));
    let deadline = std::time::Instant::now() + secs(5);
    loop {
        vm.driver.pump_for(ms(50)).unwrap();
        let now = measure::fd_count(pid);
        if now <= fds_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plugin holds {now} fds, {fds_before} before the connections"
        );
    }
}

/// Two VMs of one group in one process with a connection between them; A is loaded in place.
/// The sibling's end is reset (RST), a packet it still sends on the old connection never reaches
/// A's guest (and is answered with RST), one A's restored guest sends on it never reaches B, and
/// new connections between them work both ways.
#[test]
fn a_load_resets_sibling_connections_and_filters_their_packets() {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1")]).unwrap();
    let mut a = Vm::start(&p.vms[0].socket, VmOptions::crosvm().cid(3)).unwrap();
    let mut b = Vm::start(&p.vms[1].socket, VmOptions::crosvm().cid(4)).unwrap();
    let acked = a.negotiated.features;
    let bases = crosvm::sleep(&mut a.client, acked, &ALL_RINGS).unwrap();
    let state = crosvm::snapshot(&mut a.client, secs(5)).unwrap();
    wake(&mut a, &bases);

    // A → B, connected after the save: the load rolls A back to before it.
    b.driver.listen(9000);
    let aid = a.driver.connect_start(4, 9000, TYPE_STREAM).unwrap();
    let req = b
        .driver
        .wait_request(9000, secs(5))
        .unwrap()
        .expect("REQUEST");
    let bid = b.driver.accept_request(&req).unwrap();
    assert_eq!(
        a.driver.wait_connected(aid, secs(5)).unwrap(),
        ConnState::Established
    );
    a.driver.send(aid, b"to b").unwrap();
    assert_eq!(b.driver.recv_exact(bid, 4, secs(5)).unwrap(), b"to b");

    a.driver.pump_for(ms(100)).unwrap();
    let rx0 = a.driver.rxq.used_idx();
    let ev0 = a.driver.evq.as_ref().unwrap().used_idx();
    load_in_place(&mut a, &state);
    assert_reset_before_rx(&mut a, rx0, ev0);
    assert_eq!(a.driver.conn(aid).state, ConnState::Reset);
    let a_seen = a.driver.conn(aid).history.len();

    // The sibling hears of it: its socket is reset.
    let deadline = std::time::Instant::now() + secs(5);
    while b.driver.conn(bid).state != ConnState::Reset {
        assert!(
            std::time::Instant::now() < deadline,
            "the sibling's end of the connection was not reset"
        );
        b.driver.pump_for(ms(20)).unwrap();
    }
    let b_seen = b.driver.conn(bid).history.len();

    // The sibling still sends on it (a packet in flight, or a socket that ignored the RST).
    let hdr = b.driver.header(bid, OP_RW, 5, 0);
    b.driver.send_packet(&hdr, b"stale").unwrap();
    // A's restored guest still sends on it (before it processed the reset).
    let hdr = a.driver.header(aid, OP_RW, 5, 0);
    a.driver.send_packet(&hdr, b"stale").unwrap();
    a.driver.pump_for(ms(300)).unwrap();
    b.driver.pump_for(ms(300)).unwrap();
    assert_eq!(
        a.driver.conn(aid).history.len(),
        a_seen,
        "a packet of a pre-load sibling connection reached the restored guest"
    );
    let b_new: Vec<u16> = b.driver.conn(bid).history[b_seen..]
        .iter()
        .map(|h| h.op)
        .collect();
    assert_eq!(
        b_new,
        vec![OP_RST],
        "the sibling's stale packet is answered with RST, and the restored guest's never arrives"
    );

    // New connections, both directions.
    sibling_round_trip(&mut a.driver, &mut b.driver, 4, 9001);
    sibling_round_trip(&mut b.driver, &mut a.driver, 3, 9002);
    assert!(a.driver.anomalies.is_empty(), "{:?}", a.driver.anomalies);
    assert!(b.driver.anomalies.is_empty(), "{:?}", b.driver.anomalies);
}

/// `from` connects to `port` of sibling `to` (guest CID `to_cid`), and a few bytes go each way.
fn sibling_round_trip(
    from: &mut vsock_plugin_tests::frontend::vsock_driver::VsockDriver,
    to: &mut vsock_plugin_tests::frontend::vsock_driver::VsockDriver,
    to_cid: u64,
    port: u32,
) {
    to.listen(port);
    let from_id = from.connect_start(to_cid, port, TYPE_STREAM).unwrap();
    let req = to.wait_request(port, secs(5)).unwrap().expect("REQUEST");
    let to_id = to.accept_request(&req).unwrap();
    assert_eq!(
        from.wait_connected(from_id, secs(5)).unwrap(),
        ConnState::Established
    );
    from.send(from_id, b"ping").unwrap();
    assert_eq!(to.recv_exact(to_id, 4, secs(5)).unwrap(), b"ping");
    to.send(to_id, b"pong").unwrap();
    assert_eq!(from.recv_exact(from_id, 4, secs(5)).unwrap(), b"pong");
}
