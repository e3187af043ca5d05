//! Readiness without polling: `--ready-fd N` gets one byte once every socket listens and is then
//! closed; `$NOTIFY_SOCKET` (path or `@abstract`) gets `READY=1`. At that moment every
//! vhost-user, hybrid and control socket accepts connections.

mod common;
use common::*;

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vsock_plugin_tests::frontend::plugin_process::run_plugin_to_exit;

/// Two VMs and a control socket in `dir`: (args, VM paths, control socket path).
fn two_vms_with_control(dir: &TempDir) -> (Vec<String>, Vec<VmPaths>, PathBuf) {
    let mut args = Vec::new();
    let mut vms = Vec::new();
    for (k, cid) in [3u64, 4].iter().enumerate() {
        let vm = VmPaths {
            guest_cid: *cid,
            socket: dir.join(&format!("v{k}.sock")),
            uds: dir.join(&format!("h{k}.sock")),
        };
        args.push("--vm".to_string());
        args.push(format!(
            "guest-cid={cid},socket={},uds-path={}",
            vm.socket.display(),
            vm.uds.display()
        ));
        vms.push(vm);
    }
    let ctl = dir.join("ctl.sock");
    args.push("--control".to_string());
    args.push(format!("unix://{}#vsock", ctl.display()));
    (args, vms, ctl)
}

/// Every socket the plugin should listen on accepts a connection now.
fn assert_all_listen(vms: &[VmPaths], ctl: &PathBuf) {
    for vm in vms {
        for path in [&vm.socket, &vm.uds] {
            UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("{} not listening when ready: {e}", path.display()));
        }
    }
    UnixStream::connect(ctl).unwrap_or_else(|e| panic!("control socket not listening: {e}"));
}

/// Reads `fd` until EOF (bounded by `wait`); returns the bytes and whether EOF came.
fn read_to_eof_fd(fd: &OwnedFd, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
            continue;
        }
        let mut b = [0u8; 16];
        // SAFETY: reads into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        if n <= 0 {
            return (got, true);
        }
        got.extend_from_slice(&b[..n as usize]);
    }
}

#[test]
fn ready_fd_gets_one_byte_then_eof_when_every_socket_listens() {
    let dir = TempDir::new().unwrap();
    let (mut args, vms, ctl) = two_vms_with_control(&dir);
    args.extend(["--ready-fd".to_string(), "3".to_string()]);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, owned at once.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let p = PluginProcess::spawn_inheriting(dir, args, vms.clone(), Some(wr.as_raw_fd())).unwrap();
    drop(wr);
    let (got, eof) = read_to_eof_fd(&rd, secs(20));
    assert_eq!(
        got,
        b"\n",
        "exactly one byte; log:\n{}",
        p.stderr_tail(3000)
    );
    assert!(eof, "the ready fd was not closed after the byte");
    assert_all_listen(&vms, &ctl);
    p.assert_alive();
}

#[test]
fn ready_fd_closed_without_byte_when_start_fails() {
    let dir = TempDir::new().unwrap();
    let (mut args, vms, _ctl) = two_vms_with_control(&dir);
    // The second VM's vhost-user socket cannot be bound: the start fails after the first.
    args[3] = args[3].replace(
        &vms[1].socket.display().to_string(),
        "/nonexistent-dir/v.sock",
    );
    args.extend(["--ready-fd".to_string(), "3".to_string()]);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, owned at once.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let p = PluginProcess::spawn_inheriting(dir, args, vms, Some(wr.as_raw_fd())).unwrap();
    drop(wr);
    let (got, eof) = read_to_eof_fd(&rd, secs(20));
    assert!(eof && got.is_empty(), "got {got:?}, eof {eof}");
    let deadline = std::time::Instant::now() + secs(10);
    while p.try_exit_status().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(ms(20));
    }
    assert_eq!(p.try_exit_status().and_then(|s| s.code()), Some(1));
}

#[test]
fn bad_ready_fd_is_refused_before_anything_is_bound() {
    let dir = TempDir::new().unwrap();
    let sock = dir.join("v.sock");
    let uds = dir.join("h.sock");
    let base = [
        "--guest-cid",
        "3",
        "--socket",
        sock.to_str().unwrap(),
        "--uds-path",
        uds.to_str().unwrap(),
    ];
    for (fd, needle) in [
        ("57", "--ready-fd 57: not open"),
        ("-1", "--ready-fd: bad fd \"-1\""),
        ("x", "--ready-fd: bad fd \"x\""),
    ] {
        let mut a = base.to_vec();
        a.extend(["--ready-fd", fd]);
        let (st, err) = run_plugin_to_exit(&a, secs(10));
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{fd}: {err}");
        assert!(err.contains(needle), "{fd}: {err}");
        assert!(!sock.exists(), "{fd}: a socket was bound");
    }
}

fn notify_test(addr: &OsStr, rx: &UnixDatagram) {
    let dir = TempDir::new().unwrap();
    let (args, vms, ctl) = two_vms_with_control(&dir);
    let p = PluginProcess::spawn_with_env(dir, args, vms.clone(), None, &[("NOTIFY_SOCKET", addr)])
        .unwrap();
    rx.set_read_timeout(Some(secs(20))).unwrap();
    let mut buf = [0u8; 256];
    let n = rx
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1: {e}; log:\n{}", p.stderr_tail(3000)));
    assert_eq!(&buf[..n], b"READY=1\n");
    assert_all_listen(&vms, &ctl);
    p.assert_alive();
}

#[test]
fn notify_socket_path_gets_ready() {
    let dir = TempDir::new().unwrap();
    let path = dir.join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    notify_test(path.as_os_str(), &rx);
}

#[test]
fn notify_socket_abstract_gets_ready() {
    let name = format!("vsock-plugin-test-notify-{}", std::process::id());
    let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    notify_test(OsStr::new(&format!("@{name}")), &rx);
}
