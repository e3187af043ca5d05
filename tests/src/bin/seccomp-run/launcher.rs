//! Runs a program under a [`super::policy`] filter and reports every call outside it by name.
//!
//! How: the launcher forks; the child sets `PR_SET_PDEATHSIG(SIGKILL)` and `PR_SET_NO_NEW_PRIVS`,
//! installs two filters and execs the program. Filter 1 answers `clone3` with ENOSYS and allows
//! everything else; filter 2 allows the policy and sends everything else to the launcher as a
//! seccomp user notification (`SECCOMP_RET_USER_NOTIF`, listener fd passed to the parent with
//! SCM_RIGHTS). The kernel takes the strongest action of all filters (ERRNO beats USER_NOTIF beats
//! ALLOW), so `clone3` gets ENOSYS whatever filter 2 says, as under sandbox2.
//!
//! The parent (not filtered) reads each notification, names the syscall and its checked arguments,
//! and then, like sandbox2's monitor:
//! - enforce mode: kills the process (SIGKILL) before the call runs; exit status [`EXIT_VIOLATION`];
//! - `--log` mode: lets the call run (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`), counts it, and prints a
//!   summary at the end; a run with violations also ends with [`EXIT_VIOLATION`] (the program's own
//!   status is printed).
//!
//! The one `execve` of the program itself is let through (first notification for `execve` from the
//! child), as sandbox2's monitor lets through the one `execveat` of its sandboxee; any later exec is a
//! violation like any other call.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::names;
use super::policy::{self, Policy};

/// Exit status of a run that made a call outside the policy (128 + SIGSYS, the status sandbox2's
/// `SIGSYS`-killed sandboxee would have).
pub const EXIT_VIOLATION: i32 = 128 + libc::SIGSYS;

/// Marks filter 2's mismatch action in seccompiler's output, replaced by USER_NOTIF.
const MISMATCH_MARK: u32 = 0x5ecc;

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

/// The two filters: (clone3 → ENOSYS, policy with mismatch → USER_NOTIF).
pub fn build_filters(policy: Policy, drop: &[i64]) -> io::Result<(BpfProgram, BpfProgram)> {
    let err = |e: seccompiler::BackendError| io::Error::other(format!("seccompiler: {e}"));
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(policy::CLONE3_ERRNO),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let mut rules = policy::rules(policy);
    for &nr in drop {
        rules.remove(nr);
    }
    let main = SeccompFilter::new(
        rules.into_seccompiler(),
        SeccompAction::Trace(MISMATCH_MARK),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let clone3: BpfProgram = clone3.try_into().map_err(err)?;
    let mut main: BpfProgram = main.try_into().map_err(err)?;
    let mark = libc::SECCOMP_RET_TRACE | MISMATCH_MARK;
    let mut marked = 0;
    for insn in &mut main {
        if insn.code == (libc::BPF_RET | libc::BPF_K) as u16 && insn.k == mark {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
            marked += 1;
        }
    }
    if marked == 0 {
        return Err(io::Error::other(
            "filter has no mismatch action to redirect",
        ));
    }
    Ok((clone3, main))
}

fn install(prog: &BpfProgram, flags: libc::c_ulong) -> io::Result<i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; seccompiler's sock_filter has the kernel
    // layout (repr(C) u16, u8, u8, u32).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
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

/// The syscall and the arguments the policy checks, e.g. `mmap(prot=0x0, flags=0x4022)`.
pub fn describe(nr: i64, a: &[u64; 6]) -> String {
    let name = names::name(nr);
    let args = match name.as_str() {
        "mmap" => format!("prot={:#x}, flags={:#x}", a[2] as u32, a[3] as u32),
        "mprotect" => format!("prot={:#x}", a[2] as u32),
        "ioctl" => format!("request={:#x}", a[1] as u32),
        "socket" => format!("domain={}, type={:#x}", a[0] as u32, a[1] as u32),
        "fcntl" => format!("cmd={}", a[1] as u32),
        "prctl" => format!("option={:#x}", a[0] as u32),
        "madvise" => format!("advice={}", a[2] as u32),
        "sendto" => format!(
            "flags={:#x}, dest_addr={}",
            a[3] as u32,
            if a[4] == 0 { "NULL" } else { "set" }
        ),
        "shutdown" => format!("how={}", a[1] as u32),
        "futex" => format!("op={:#x}", a[1] as u32),
        "clone" => format!("flags={:#x}", a[0] as u32),
        "setsockopt" | "getsockopt" => format!("level={}, optname={}", a[1] as u32, a[2] as u32),
        "prlimit64" => format!(
            "resource={}, new_limit={}",
            a[1] as u32,
            if a[2] == 0 { "NULL" } else { "set" }
        ),
        "getrandom" => format!("flags={:#x}", a[2] as u32),
        "statx" | "newfstatat" => format!("flags={:#x}", a[2] as u32),
        "rt_sigprocmask" => format!("how={}", a[0] as u32),
        _ => String::new(),
    };
    format!("{name}({args})")
}

struct Supervisor<'a> {
    opts: &'a Options,
    child: libc::pid_t,
    exec_seen: bool,
    /// Violation shape → count.
    seen: BTreeMap<String, u64>,
    killed: bool,
}

impl<'a> Supervisor<'a> {
    fn new(opts: &'a Options, child: libc::pid_t) -> Self {
        Supervisor {
            opts,
            child,
            exec_seen: false,
            seen: BTreeMap::new(),
            killed: false,
        }
    }

    fn say(&self, line: &str) {
        eprintln!("{line}");
        if let Some(path) = &self.opts.report {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                // One write per line: several launchers may append to the same report.
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
        }
    }

    /// Handles notifications until every filtered task is gone (POLLHUP).
    fn serve(&mut self, listener: RawFd) -> io::Result<()> {
        loop {
            let mut pfd = libc::pollfd {
                fd: listener,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is valid for the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            if pfd.revents & libc::POLLIN != 0 {
                self.one(listener);
            } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return Ok(());
            }
        }
    }

    fn one(&mut self, listener: RawFd) {
        // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: req has the layout SECCOMP_IOCTL_NOTIF_RECV writes.
        if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } < 0 {
            // ENOENT: the task died before we read it.
            return;
        }
        let nr = req.data.nr as i64;
        let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
        resp.id = req.id;
        if nr == libc::SYS_execve && !self.exec_seen && req.pid as libc::pid_t == self.child {
            self.exec_seen = true;
            resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        } else {
            let shape = describe(nr, &req.data.args);
            let first = !self.seen.contains_key(&shape);
            *self.seen.entry(shape.clone()).or_insert(0) += 1;
            if self.opts.log {
                if first {
                    self.say(&format!(
                        "seccomp-run: policy {}: outside the policy (logged, allowed): {shape} by tid {}",
                        self.opts.policy.name(),
                        req.pid
                    ));
                }
                resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
            } else if !self.killed {
                self.say(&format!(
                    "seccomp-run: policy {}: forbidden syscall {shape} by tid {}: killing pid {}",
                    self.opts.policy.name(),
                    req.pid,
                    self.child
                ));
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(self.child, libc::SIGKILL) };
                self.killed = true;
                resp.error = -libc::EPERM;
            } else {
                resp.error = -libc::EPERM;
            }
        }
        // SAFETY: resp has the layout SECCOMP_IOCTL_NOTIF_SEND reads. A failure means the task
        // is gone, which is fine.
        unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }

    /// Prints the summary; returns the launcher's exit status.
    fn finish(&self, status: i32) -> i32 {
        let total: u64 = self.seen.values().sum();
        if total == 0 {
            return status;
        }
        if self.opts.log {
            self.say(&format!(
                "seccomp-run: policy {}: {total} calls outside the policy:",
                self.opts.policy.name()
            ));
            for (shape, n) in &self.seen {
                self.say(&format!("seccomp-run:   {n:6} {shape}"));
            }
        }
        if !self.killed {
            self.say(&format!(
                "seccomp-run: the program's own exit status was {status}"
            ));
        }
        EXIT_VIOLATION
    }
}
