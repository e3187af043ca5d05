//! The unfiltered parent's side: reads each seccomp user notification, names the syscall and the
//! arguments the policy checks, and kills the program (enforce mode) or lets the call run and counts
//! it (`--log`), like sandbox2's monitor. The program's own `execve` is let through once.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::RawFd;

use super::launcher::Options;
use super::names;

/// Exit status of a run that made a call outside the policy (128 + SIGSYS, the status sandbox2's
/// `SIGSYS`-killed sandboxee would have).
pub const EXIT_VIOLATION: i32 = 128 + libc::SIGSYS;

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

pub struct Supervisor<'a> {
    opts: &'a Options,
    child: libc::pid_t,
    exec_seen: bool,
    /// Violation shape → count.
    seen: BTreeMap<String, u64>,
    killed: bool,
}

impl<'a> Supervisor<'a> {
    pub fn new(opts: &'a Options, child: libc::pid_t) -> Self {
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
    pub fn serve(&mut self, listener: RawFd) -> io::Result<()> {
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
    pub fn finish(&self, status: i32) -> i32 {
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
