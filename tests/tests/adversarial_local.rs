//! Adversarial suite, the local host: other local users (socket modes), hostile configuration
//! input, configurations that would make the plugin a confused deputy, and signals.

mod common;
use common::measure::*;
use common::*;
use vsock_plugin_tests::frontend::plugin_process::run_plugin_to_exit;

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Waits (bounded) for the plugin to exit; its status, or None if it is still running.
fn wait_exit(p: &PluginProcess, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = p.try_exit_status() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(ms(10));
    }
}

fn signal(p: &PluginProcess, sig: libc::c_int) {
    let pid = p.pid().expect("plugin running") as libc::pid_t;
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Item 8: socket files are 0600 whatever the umask (here 000), 0660 with
/// `--socket-group-access`.
#[test]
fn socket_modes_do_not_follow_the_umask() {
    // SAFETY: umask only changes this process's file-creation mask (inherited by the plugin).
    let old = unsafe { libc::umask(0) };
    let private = plugin(&[]);
    for path in [&private.vm().socket, &private.vm().uds] {
        let m = mode(path);
        if m != 0o600 {
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            panic!("{} is {m:o} under umask 000 (want 600)", path.display());
        }
    }
    let group = plugin(&["--socket-group-access"]);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    for path in [&group.vm().socket, &group.vm().uds] {
        assert_eq!(
            mode(path),
            0o660,
            "{} with --socket-group-access",
            path.display()
        );
    }
    // Still usable by the owner.
    let mut vm = qemu_vm(&group);
    let (id, mut h, _l) = guest_to_host(&mut vm, &group, 15000);
    vm.driver.send(id, b"ok").unwrap();
    assert_eq!(read_exact_timeout(&mut h, 2, secs(5)).unwrap(), b"ok");
}

/// Item 3 (start-up): a control socket or another VM's sockets at `<uds-path>_<port>` would let
/// that guest reach them: refused, with the reason, before anything is created.
#[test]
fn sockets_inside_a_guest_namespace_are_refused_at_start_up() {
    let dir = TempDir::new().unwrap();
    let d = dir.path().display().to_string();
    let cases: [Vec<String>; 3] = [
        vec![
            "--vm".into(),
            format!("guest-cid=3,socket={d}/a.sock,uds-path={d}/v"),
            "--vm".into(),
            format!("guest-cid=4,socket={d}/v_5000,uds-path={d}/b"),
        ],
        vec![
            "--socket".into(),
            format!("{d}/a.sock"),
            "--uds-path".into(),
            format!("{d}/v"),
            "--control".into(),
            format!("unix://{d}/v_9999#vsock"),
        ],
        vec![
            "--vm".into(),
            format!("guest-cid=3,socket={d}/a.sock,uds-path={d}/v"),
            "--vm".into(),
            format!("guest-cid=4,socket={d}/b.sock,uds-path={d}/v_7"),
        ],
    ];
    for args in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (st, err) = run_plugin_to_exit(&a, secs(10));
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(2),
            "{args:?} was not refused: {err}"
        );
        assert!(err.contains("guest-reachable namespace"), "{args:?}: {err}");
        assert!(
            !dir.join("a.sock").exists(),
            "{args:?}: a socket was created"
        );
    }
}

/// Item 10: size and count caps on configuration input; what a failed start created is removed.
#[test]
fn configuration_input_is_bounded_and_a_failed_start_cleans_up() {
    let dir = TempDir::new().unwrap();
    let d = dir.path().display().to_string();
    // A 2 MiB configuration file (valid JSON, padded): refused for its size, not parsed.
    let big = dir.join("big.json");
    let mut body = format!(
        "{{\"vms\": [{{\"guestCid\": 3, \"socket\": \"{d}/c.sock\", \"udsPath\": \"{d}/c\"}}]}}"
    );
    body.push_str(&" ".repeat(2 << 20));
    std::fs::write(&big, body).unwrap();
    let (st, err) = run_plugin_to_exit(&["--config", &big.display().to_string()], secs(20));
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    // Too many VMs.
    let mut args = Vec::new();
    for k in 0..600u32 {
        args.push("--vm".to_string());
        args.push(format!(
            "guest-cid={},socket={d}/s{k},uds-path={d}/u{k}",
            k + 3
        ));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, err) = run_plugin_to_exit(&a, secs(30));
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains("at most 512"), "{err}");
    // The second VM cannot bind: the first VM's socket files are removed again.
    let vm1 = [dir.join("one.sock"), dir.join("one")];
    let (st, err) = run_plugin_to_exit(
        &[
            "--vm",
            &format!("guest-cid=3,socket={d}/one.sock,uds-path={d}/one"),
            "--vm",
            &format!("guest-cid=4,socket={d}/missing/two.sock,uds-path={d}/two"),
        ],
        secs(10),
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    for f in &vm1 {
        assert!(
            !f.exists(),
            "{} left behind by a failed start: {err}",
            f.display()
        );
    }
}

/// Item 12: a bad --control is reported as a control-plane error, not as "guest CID 0".
#[test]
fn a_bad_control_uri_is_reported_as_such() {
    let dir = TempDir::new().unwrap();
    let d = dir.path().display().to_string();
    let (st, err) = run_plugin_to_exit(
        &[
            "--socket",
            &format!("{d}/a.sock"),
            "--uds-path",
            &format!("{d}/v"),
            "--control",
            &format!("unix://{d}/no/such/dir/ctl.sock#vsock"),
        ],
        secs(10),
    );
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("control plane"), "{err}");
    assert!(!err.contains("guest CID 0"), "{err}");
    assert!(!dir.join("a.sock").exists(), "socket left behind: {err}");
}

/// Item 11: SIGTERM (and SIGINT) end the plugin with status 0 and remove its socket files.
#[test]
fn sigterm_and_sigint_exit_cleanly_and_remove_the_sockets() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let p = plugin(&[]);
        let _vm = qemu_vm(&p);
        signal(&p, sig);
        let st = wait_exit(&p, secs(10)).expect("the plugin did not exit within 10 s");
        assert_eq!(st.code(), Some(0), "signal {sig}: {st}");
        for f in [&p.vm().socket, &p.vm().uds] {
            assert!(!f.exists(), "signal {sig}: {} left behind", f.display());
        }
    }
}

/// Item 11: guest bytes the device accepted but the host had not read yet are delivered after
/// SIGTERM (within the shutdown timeout), then EOF: the host peer gets the whole stream.
#[test]
fn sigterm_delivers_the_bytes_the_device_holds() {
    let p = plugin(&["--shutdown-timeout-ms", "5000"]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 15001);
    // The host does not read: the socket buffer fills, then the device buffers up to the credit.
    let data = pattern(7, 2 << 20);
    let mut sent = 0;
    let t = Instant::now();
    while t.elapsed() < secs(2) && sent < data.len() {
        sent += vm.driver.try_send(id, &data[sent..]).unwrap();
        vm.driver.pump_for(ms(20)).unwrap();
    }
    assert!(vm.driver.wait_tx_done(secs(5)).unwrap());
    let rss = rss_kib(p.pid().unwrap());
    signal(&p, libc::SIGTERM);
    let (got, ended) = read_to_eof(&mut host, secs(15));
    eprintln!(
        "measured: guest sent {sent} bytes, host got {} after SIGTERM (plugin RSS {rss} KiB)",
        got.len()
    );
    assert!(ended, "no EOF after SIGTERM");
    assert_eq!(got.len(), sent, "bytes the device accepted were lost");
    assert!(got == data[..sent], "bytes differ");
    let st = wait_exit(&p, secs(10)).expect("the plugin did not exit");
    assert_eq!(st.code(), Some(0), "{st}");
}
