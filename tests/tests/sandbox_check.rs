//! The sandbox check catches a call outside the policy and names it: the plugin in full mode under
//! the *stock* policy is killed at the first guest half-close (`shutdown`), and the patched policy
//! with `recvmsg` removed kills the plugin at the first vhost-user message.
#![cfg(target_arch = "x86_64")]

mod common;
use common::*;

use std::process::{Command, Stdio};
use vsock_plugin_tests::frontend::plugin_process::plugin_binary;

const SECCOMP_RUN: &str = env!("CARGO_BIN_EXE_seccomp-run");

/// Waits (bounded) for the launcher to exit; returns (exit code, its stderr).
fn launcher_exit(p: &PluginProcess) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(st) = p.try_exit_status() {
            return (st.code(), p.stderr_tail(4000));
        }
        std::thread::sleep(ms(20));
    }
    (None, p.stderr_tail(4000))
}

fn under(launcher_args: &[&str], plugin_args: &[&str]) -> PluginProcess {
    under_with_env(launcher_args, plugin_args, &[])
}

fn under_with_env(
    launcher_args: &[&str],
    plugin_args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> PluginProcess {
    try_under(launcher_args, plugin_args, env).unwrap()
}

fn try_under(
    launcher_args: &[&str],
    plugin_args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::io::Result<PluginProcess> {
    let dir = TempDir::new().unwrap();
    let vm = VmPaths {
        guest_cid: 3,
        socket: dir.join("v.sock"),
        uds: dir.join("h.sock"),
    };
    let mut args: Vec<String> = launcher_args.iter().map(|s| s.to_string()).collect();
    args.push("--".into());
    args.push(plugin_binary().display().to_string());
    args.extend(plugin_args.iter().map(|s| s.to_string()));
    args.extend([
        "--guest-cid".into(),
        "3".into(),
        "--socket".into(),
        vm.socket.display().to_string(),
        "--uds-path".into(),
        vm.uds.display().to_string(),
    ]);
    PluginProcess::spawn_program(SECCOMP_RUN.as_ref(), dir, args, vec![vm], env)
}

#[test]
fn full_mode_under_the_stock_policy_is_killed_at_start_naming_fchmod() {
    // Full mode sets socket-file modes explicitly: fchmod, which the stock policy lacks, before
    // the first socket exists.
    let err = match try_under(&["--policy", "stock"], &[], &[]) {
        Ok(_) => panic!("full mode started under the stock policy"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("exit status: 159") && err.contains("policy stock: forbidden syscall fchmod("),
        "{err}"
    );
}

#[test]
fn full_mode_without_shutdown_in_the_policy_is_killed_at_half_close_naming_shutdown() {
    let p = under(&["--policy", "patched", "--drop", "shutdown"], &[]);
    let mut vm = qemu_vm(&p);
    let (id, _host, _l) = guest_to_host(&mut vm, &p, 6400);
    vm.driver.send(id, b"data").unwrap();
    vm.driver.shutdown(id, SHUTDOWN_SEND).unwrap();
    let (code, stderr) = launcher_exit(&p);
    assert_eq!(code, Some(159), "launcher status; stderr:\n{stderr}");
    assert!(
        stderr.contains("forbidden syscall shutdown(how=1)"),
        "{stderr}"
    );
}

#[test]
fn the_environment_selects_stock_mode_when_the_command_line_cannot() {
    // Cuttlefish starts the replaced binary with vhost-device-vsock's arguments only.
    let p = under_with_env(
        &["--policy", "stock"],
        &[],
        &[("VSOCK_PLUGIN_SANDBOX", "stock".as_ref())],
    );
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6600);
    vm.driver.send(id, b"data").unwrap();
    vm.driver.shutdown(id, SHUTDOWN_SEND).unwrap();
    assert_eq!(read_exact_timeout(&mut host, 4, secs(5)).unwrap(), b"data");
    let (_, eof) = read_to_eof(&mut host, ms(500));
    assert!(!eof, "half-close passed on in stock mode");
    p.assert_alive();
    assert!(
        !p.stderr_tail(4000).contains("seccomp-run:"),
        "{}",
        p.stderr_tail(4000)
    );
    // A bad value is a usage error, as a bad --sandbox is.
    let out = Command::new(plugin_binary())
        .env("VSOCK_PLUGIN_SANDBOX", "strict")
        .args([
            "--guest-cid",
            "3",
            "--socket",
            "/tmp/vp-e.sock",
            "--uds-path",
            "/tmp/vp-e.vsock",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("VSOCK_PLUGIN_SANDBOX=\"strict\" is not full or stock"),
        "{err}"
    );
}

#[test]
fn a_policy_without_recvmsg_kills_the_plugin_at_the_first_vhost_user_message() {
    let p = under(&["--policy", "patched", "--drop", "recvmsg"], &[]);
    let _ = Vm::qemu(&p.vm().socket); // fails: the plugin dies
    let (code, stderr) = launcher_exit(&p);
    assert_eq!(code, Some(159), "launcher status; stderr:\n{stderr}");
    assert!(
        stderr.contains("seccomp-run: policy patched: forbidden syscall recvmsg()"),
        "{stderr}"
    );
}

#[test]
fn log_mode_lets_calls_run_and_lists_them() {
    let p = under(&["--policy", "patched", "--drop", "shutdown", "--log"], &[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 6500);
    vm.driver.send(id, b"data").unwrap();
    vm.driver.shutdown(id, SHUTDOWN_SEND).unwrap();
    let (bytes, eof) = read_to_eof(&mut host, secs(5));
    assert_eq!(
        (bytes.as_slice(), eof),
        (&b"data"[..], true),
        "half-close ran"
    );
    p.assert_alive();
    // SIGTERM to the launcher reaches the plugin; the summary follows, and the status is 159.
    let pid = p.pid().unwrap() as i32;
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (code, stderr) = launcher_exit(&p);
    assert_eq!(code, Some(159), "{stderr}");
    assert!(
        stderr.contains("seccomp-run: policy patched: 1 calls outside the policy:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("seccomp-run:        1 shutdown(how=1)"),
        "{stderr}"
    );
}

#[test]
fn a_clean_program_keeps_its_exit_status_and_clone3_gets_enosys() {
    // `true` is inside the stock policy; `sh -c 'exit 7'` keeps its status through the launcher.
    let st = Command::new(SECCOMP_RUN)
        .args(["--policy", "stock", "--", "true"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // A threaded program: glibc tries clone3, gets ENOSYS, falls back to clone (allowed).
    let p = under(&["--policy", "stock"], &["--sandbox", "stock"]);
    let _vm = qemu_vm(&p);
    p.assert_alive();
    assert!(
        !p.stderr_tail(4000).contains("seccomp-run:"),
        "{}",
        p.stderr_tail(4000)
    );
}

#[test]
fn the_launcher_keeps_no_copy_of_the_programs_ready_fd() {
    // A readiness pipe passed through the launcher: the plugin writes its byte and closes it; the
    // reader must then see EOF (the launcher must not hold its own copy open).
    let dir = TempDir::new().unwrap();
    let mut fds = [-1; 2];
    // SAFETY: fds is a valid 2-int array; no O_CLOEXEC so the write end is inherited.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds from pipe().
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    let mut child = Command::new(SECCOMP_RUN)
        .args(["--policy", "stock", "--"])
        .arg(plugin_binary())
        .args(["--sandbox", "stock", "--guest-cid", "3", "--ready-fd"])
        .arg(fds[1].to_string())
        .arg("--socket")
        .arg(dir.join("v.sock"))
        .arg("--uds-path")
        .arg(dir.join("h.sock"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SAFETY: our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let r = std::io::Read::read_to_end(&mut reader, &mut got);
        let _ = tx.send((r.is_ok(), got));
    });
    let result = rx.recv_timeout(secs(20));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        result,
        Ok((true, b"\n".to_vec())),
        "byte then EOF through the launcher"
    );
}
