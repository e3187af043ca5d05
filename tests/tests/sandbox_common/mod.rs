//! Traffic for the sandbox tests (`sandbox_stock.rs`, `sandbox_patched.rs`): each test binary
//! points `VSOCK_PLUGIN_BIN` at a wrapper running the plugin under `seccomp-run`, so every
//! `PluginProcess` of that binary runs inside the filter. A call outside the policy kills the plugin
//! and the launcher writes `seccomp-run: policy P: forbidden syscall NAME(ARGS)` to the plugin's
//! stderr; [`assert_clean`] fails on either.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::common::*;

/// Once per test binary: `VSOCK_PLUGIN_BIN` = wrapper `seccomp-run --policy POLICY -- plugin
/// PLUGIN_ARGS`. Returns the wrapper's path.
pub fn use_sandbox(policy: &str, plugin_args: &[&str]) -> PathBuf {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            // Builds the plugin under cargo.
            let plugin = vsock_plugin_tests::frontend::plugin_process::plugin_binary();
            // Under cargo's per-target tmp dir (kept across runs, one wrapper per policy and
            // mode): written under a temporary name and renamed, so a concurrent run of the same
            // binary never execs a half-written script.
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("sandbox-{policy}{}", plugin_args.join("")));
            std::fs::create_dir_all(&dir).unwrap();
            let name = format!("vsock-plugin-sandboxed.{}", std::process::id());
            let tmp = vsock_plugin_tests::sandbox::write_wrapper(
                &dir,
                &name,
                std::path::Path::new(env!("CARGO_BIN_EXE_seccomp-run")),
                &["--policy", policy],
                &plugin,
                plugin_args,
            )
            .unwrap();
            let w = dir.join("vsock-plugin-sandboxed");
            std::fs::rename(&tmp, &w).unwrap();
            // Set before any plugin of this test binary is spawned (OnceLock).
            std::env::set_var("VSOCK_PLUGIN_BIN", &w);
            w
        })
        .clone()
}

/// The plugin is alive, runs under the launcher's two filters, and the launcher reported no call
/// outside the policy.
pub fn assert_clean(p: &PluginProcess) {
    let launcher = p.pid().expect("launcher pid");
    let children =
        std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).unwrap();
    let plugin: u32 = children.trim().parse().expect("one child: the plugin");
    let status = std::fs::read_to_string(format!("/proc/{plugin}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp_filters:", "2"]),
        "plugin pid {plugin} is not under the two filters:\n{status}"
    );
    assert_no_violations(p, "");
    p.assert_alive();
}

/// The launcher reported no call outside the policy (its `seccomp-run:` lines on the plugin's
/// stderr); returns the log.
fn assert_no_violations(p: &PluginProcess, when: &str) -> String {
    let log = std::fs::read_to_string(&p.stderr_path).unwrap_or_default();
    let violations: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("seccomp-run:"))
        .collect();
    assert!(
        violations.is_empty(),
        "calls outside the policy{when}:\n{}",
        violations.join("\n")
    );
    log
}

/// 256 KiB guest → host and 256 KiB host → guest on one connection.
pub fn both_directions(vm: &mut Vm, p: &PluginProcess, port: u32) {
    let (id, mut host, _l) = guest_to_host(vm, p, port);
    let up = pattern(7, 256 << 10);
    let mut got = Vec::new();
    let mut sent = 0;
    let deadline = std::time::Instant::now() + secs(30);
    while got.len() < up.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "g2h stalled at {}",
            got.len()
        );
        if sent < up.len() {
            sent += vm
                .driver
                .try_send(id, &up[sent..(sent + 16384).min(up.len())])
                .unwrap();
        }
        vm.driver.pump().unwrap();
        if let ReadOutcome::Data(d) = read_some(&mut host, ms(20)) {
            got.extend(d);
        }
    }
    assert!(got == up, "guest → host bytes differ");
    let down = pattern(9, 256 << 10);
    let writer = {
        let mut h = host.try_clone().unwrap();
        let d = down.clone();
        std::thread::spawn(move || h.write_all(&d).unwrap())
    };
    assert!(
        vm.driver.recv_exact(id, down.len(), secs(30)).unwrap() == down,
        "host → guest bytes differ"
    );
    writer.join().unwrap();

    let (hid, mut hs) = host_to_guest(vm, p, port + 1);
    hs.write_all(b"hybrid hello").unwrap();
    assert_eq!(
        vm.driver.recv_exact(hid, 12, secs(5)).unwrap(),
        b"hybrid hello"
    );
    vm.driver.send(hid, b"guest answer").unwrap();
    assert_eq!(
        read_exact_timeout(&mut hs, 12, secs(5)).unwrap(),
        b"guest answer"
    );
}

/// `n` guest → host connections open at once, each echoing its own bytes, then closed by RST.
pub fn many_connections(vm: &mut Vm, p: &PluginProcess, base: u32, n: u32) {
    let mut conns = Vec::new();
    for k in 0..n {
        conns.push(guest_to_host(vm, p, base + k));
    }
    for (k, (id, host, _)) in conns.iter_mut().enumerate() {
        let msg = format!("connection {k}");
        vm.driver.send(*id, msg.as_bytes()).unwrap();
        assert_eq!(
            read_exact_timeout(host, msg.len(), secs(5)).unwrap(),
            msg.as_bytes()
        );
        host.write_all(msg.as_bytes()).unwrap();
        assert_eq!(
            vm.driver.recv_exact(*id, msg.len(), secs(5)).unwrap(),
            msg.as_bytes()
        );
    }
    for (id, mut host, _) in conns {
        vm.driver.reset(id).unwrap();
        let (_, ended) = read_to_eof(&mut host, secs(5));
        assert!(ended, "host socket open after RST");
    }
}

/// Guest SHUTDOWN(SEND) after data; returns whether the host saw EOF within `wait`. Either way the
/// data arrived and the host can still write to the guest.
pub fn guest_half_close(
    vm: &mut Vm,
    p: &PluginProcess,
    port: u32,
    wait: std::time::Duration,
) -> bool {
    let (id, mut host, _l) = guest_to_host(vm, p, port);
    vm.driver.send(id, b"last words").unwrap();
    vm.driver.shutdown(id, SHUTDOWN_SEND).unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 10, secs(5)).unwrap(),
        b"last words"
    );
    let (rest, eof) = read_to_eof(&mut host, wait);
    assert!(rest.is_empty(), "{rest:?}");
    host.write_all(b"still talking").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 13, secs(5)).unwrap(),
        b"still talking"
    );
    if !eof {
        // The full close still reaches the host.
        vm.driver
            .shutdown(id, SHUTDOWN_RCV | SHUTDOWN_SEND)
            .unwrap();
        let (_, ended) = read_to_eof(&mut host, secs(5));
        assert!(ended, "host socket open after guest SHUTDOWN(RCV|SEND)");
    }
    eof
}

/// Three VMs in one process (two in a group): guest → host on each, sibling bytes both ways.
pub fn several_vms() -> PluginProcess {
    let p = PluginProcess::multi(&[(3, "groups=g1"), (4, "groups=g1"), (5, "groups=g2")]).unwrap();
    let mut vms: Vec<Vm> = [3u64, 4, 5]
        .iter()
        .enumerate()
        .map(|(k, cid)| Vm::start(&p.vms[k].socket, VmOptions::qemu().cid(*cid)).unwrap())
        .collect();
    for (k, vm) in vms.iter_mut().enumerate() {
        let l = listen(&p.vms[k].port_path(7000));
        let id = vm.driver.connect(HOST_CID, 7000, TYPE_STREAM).unwrap();
        let mut s = accept_timeout(&l, secs(5)).unwrap();
        vm.driver.send(id, b"vm data").unwrap();
        assert_eq!(read_exact_timeout(&mut s, 7, secs(5)).unwrap(), b"vm data");
    }
    let (a, rest) = vms.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut rest[0]);
    b.driver.listen(9000);
    let id = a.driver.connect_start(4, 9000, TYPE_STREAM).unwrap();
    let req = b
        .driver
        .wait_request(9000, secs(5))
        .unwrap()
        .expect("REQUEST at the sibling");
    let bid = b.driver.accept_request(&req).unwrap();
    assert_eq!(
        a.driver.wait_connected(id, secs(5)).unwrap(),
        ConnState::Established
    );
    a.driver.send(id, b"hello sibling").unwrap();
    assert_eq!(
        b.driver.recv_exact(bid, 13, secs(5)).unwrap(),
        b"hello sibling"
    );
    b.driver.send(bid, b"hello back").unwrap();
    assert_eq!(a.driver.recv_exact(id, 10, secs(5)).unwrap(), b"hello back");
    drop(vms);
    p
}

/// The frontend goes away and comes back (twice); traffic works each time.
pub fn frontend_reconnect(p: &PluginProcess) {
    for round in 0..3u32 {
        let mut vm = qemu_vm(p);
        let (id, mut host, _l) = guest_to_host(&mut vm, p, 7100 + round);
        vm.driver.send(id, b"round").unwrap();
        assert_eq!(read_exact_timeout(&mut host, 5, secs(5)).unwrap(), b"round");
        drop(vm);
        std::thread::sleep(ms(50));
    }
    assert_serves_new_frontend(p);
}

/// The traffic tests both sandbox test binaries run: `$sandboxed` is a `fn(&[&str]) ->
/// PluginProcess` starting a single-VM plugin under that binary's sandbox, `$setup` a `fn()`
/// pointing `VSOCK_PLUGIN_BIN` at it.
#[macro_export]
macro_rules! sandbox_traffic_tests {
    ($sandboxed:ident, $setup:ident) => {
        #[test]
        fn traffic_both_directions() {
            let p = $sandboxed(&[]);
            let mut vm = qemu_vm(&p);
            both_directions(&mut vm, &p, 6100);
            assert_clean(&p);
        }

        #[test]
        fn many_connections_at_once() {
            let p = $sandboxed(&[]);
            let mut vm = qemu_vm(&p);
            many_connections(&mut vm, &p, 6200, 40);
            assert_clean(&p);
        }

        #[test]
        fn several_vms_with_siblings() {
            $setup();
            let p = several_vms();
            assert_clean(&p);
        }

        #[test]
        fn frontend_reconnects() {
            let p = $sandboxed(&[]);
            frontend_reconnect(&p);
            assert_clean(&p);
        }

        #[test]
        fn sigterm_drains_and_exits_inside_the_policy() {
            let p = $sandboxed(&[]);
            let mut vm = qemu_vm(&p);
            both_directions(&mut vm, &p, 6150);
            assert_clean(&p);
            stop_with_sigterm(&p);
        }
    };
}

/// SIGTERM to the launcher (it passes the signal on): the plugin drains, its workers end, and it
/// exits 0 without a call outside the policy (a thread that exits makes glibc `madvise` its
/// stack, which the stock policy lacks: the workers park instead).
pub fn stop_with_sigterm(p: &PluginProcess) {
    let pid = p.pid().expect("launcher pid") as i32;
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + secs(20);
    let status = loop {
        if let Some(st) = p.try_exit_status() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 20 s after SIGTERM"
        );
        std::thread::sleep(ms(20));
    };
    let log = assert_no_violations(p, " at shutdown");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{log}"
    );
}
