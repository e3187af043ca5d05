//! Runs a program under a [`super::policy`] filter and reports every call outside it by name.
//!
//! The launcher forks; the child sets `PR_SET_PDEATHSIG(SIGKILL)` and `PR_SET_NO_NEW_PRIVS`,
//! installs the two filters of [`super::filter`], passes the notification listener fd to the
//! parent (SCM_RIGHTS over a socket pair) and execs the program. The parent closes its copies of
//! the program's inherited fds, forwards SIGTERM/SIGINT/SIGHUP, and runs
//! [`super::supervisor::Supervisor`] until the program is gone.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::BpfProgram;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::filter::{build_filters, install};
use super::names;
use super::policy::Policy;
use super::supervisor::Supervisor;

#[derive(Debug, Clone)]
pub struct Options {
    pub policy: Policy,
    pub log: bool,
    /// Syscalls removed from the policy (to show that a missing one is caught).
    pub drop: Vec<i64>,
    /// File to append each violation line (and the log-mode summary) to, besides stderr.
    pub report: Option<PathBuf>,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// `PATH` lookup done before forking, so the child makes exactly one `execve`.
fn resolve(program: &OsString) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.as_os_str().as_bytes().contains(&b'/') {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Runs `opts.program` under the filter; returns the launcher's exit status.
pub fn run(opts: &Options) -> io::Result<i32> {
    // The child makes these between installing the filter and exec: without them it would block
    // on a notification the parent is not yet reading.
    for nr in [libc::SYS_sendmsg, libc::SYS_close] {
        if opts.drop.contains(&nr) {
            return Err(io::Error::other(format!(
                "--drop {}: the launcher itself needs it between the filter and exec",
                names::name(nr)
            )));
        }
    }
    let (clone3, main) = build_filters(opts.policy, &opts.drop)?;
    let exe = resolve(&opts.program)
        .ok_or_else(|| io::Error::other(format!("{:?}: not found", opts.program)))?;
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| io::Error::other("NUL in an argument"));
    let exe_c = cstr(exe.as_os_str().as_bytes())?;
    let mut argv_c = vec![cstr(opts.program.as_bytes())?];
    for a in &opts.args {
        argv_c.push(cstr(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp_c: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    // The child passes the listener fd over this pair (sendmsg + SCM_RIGHTS: inside the policy).
    let (parent_end, child_end) = UnixStream::pair()?;
    // SAFETY: getpid has no preconditions.
    let parent_pid = unsafe { libc::getpid() };
    // SAFETY: the launcher has no other threads (no lock can be held across the fork); the child
    // runs only `child`, which execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; every pointer was prepared before the fork.
        unsafe { child(&clone3, &main, &child_end, parent_pid, &exe_c, &argv, &envp) };
    }
    drop(child_end);
    // The program's inherited fds are its own: a readiness pipe (`--ready-fd`) or a listening
    // socket (`--socket-fd`) held open here too would keep its peer from seeing EOF or a close.
    close_inherited_fds(parent_end.as_raw_fd());
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `forward` only calls kill.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let mut byte = [0u8; 1];
    let listener = match parent_end.recv_with_fd(&mut byte) {
        Ok((_, Some(fd))) => fd,
        Ok((_, None)) | Err(_) => {
            let e = "no listener fd received";
            let status = wait(pid);
            return Err(io::Error::other(format!(
                "child did not install the filter ({e}); it exited with {status}"
            )));
        }
    };
    let mut sup = Supervisor::new(opts, pid);
    sup.serve(listener.as_raw_fd())?;
    let status = wait(pid);
    Ok(sup.finish(status))
}

/// The forked child: pdeathsig, no_new_privs, both filters, listener fd to the parent, exec.
///
/// # Safety
/// Called right after fork in a single-threaded process; all pointers are valid.
unsafe fn child(
    clone3: &BpfProgram,
    main: &BpfProgram,
    sock: &UnixStream,
    parent: libc::pid_t,
    exe: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    let fail = |what: &[u8]| -> ! {
        libc::write(2, what.as_ptr() as *const libc::c_void, what.len());
        libc::_exit(127)
    };
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 || libc::getppid() != parent {
        fail(b"seccomp-run: PR_SET_PDEATHSIG failed or the launcher is gone\n");
    }
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
        fail(b"seccomp-run: PR_SET_NO_NEW_PRIVS failed\n");
    }
    if install(clone3, 0).is_err() {
        fail(b"seccomp-run: installing the clone3 filter failed\n");
    }
    let listener = match install(main, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER) {
        Ok(fd) => fd,
        Err(_) => fail(b"seccomp-run: installing the policy filter failed\n"),
    };
    // From here on the policy applies: sendmsg, close, execve (notified once, let through).
    if sock.send_with_fd(&[0u8][..], listener).is_err() {
        fail(b"seccomp-run: passing the listener fd failed\n");
    }
    libc::close(listener);
    libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(b"seccomp-run: execve failed\n")
}

/// Closes every fd above stderr except `keep`.
fn close_inherited_fds(keep: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2 && *fd != keep)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // SAFETY: closing fds this process does not use (the read_dir fd is already closed:
        // EBADF, harmless).
        unsafe { libc::close(fd) };
    }
}

/// Waits for `pid`; returns its status as a shell would (code, or 128 + signal).
fn wait(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut st, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 255;
        }
    }
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        255
    }
}
