//! Cuttlefish's `vhost_device_vsock` sandbox policy as a seccomp filter (x86_64).
//!
//! Transcribed from (file@commit as stored in the reference index this was written from):
//! - google/android-cuttlefish
//!   `base/cvd/cuttlefish/host/commands/process_sandboxer/policies/vhost_device_vsock.cpp`
//!   @6f97ce4becb8cc940d468b175d4aee33f1c0edcb and `policies/baseline.cpp`
//!   @1e06290da8003e7bbcd1cd6ff7f516a426ae889c;
//! - the `PolicyBuilder::Allow*` helpers they call, google/sandboxed-api
//!   `sandboxed_api/sandbox2/policybuilder.cc`, and the default policy sandbox2 puts in front of
//!   every user policy, `sandboxed_api/sandbox2/policy.cc` (`GetDefaultPolicy`). Cuttlefish pins
//!   sandboxed-api at 75b6c16e8e95314456795b34af06571879b18e1f (`base/cvd/MODULE.bazel`
//!   @012bc9088426f628f0bd8ff8a51ed5e332eb7a2f); the index holds policybuilder.cc at
//!   ee58a410d93c4436c8c8875ab76760404b43d7a8, 00747d52412452eff185f07a5b67c89c769c4e5e and a
//!   newer version (55 198 bytes) that has every helper the baseline calls
//!   (`AllowDynamicStartup(MapExec)`, `Allow(MapExec)`, `AllowEpollWait`, `AllowDup`,
//!   `AllowEventFd`, `AllowReadlink`, the `kAllowSlowFences` restartable sequences). The transcription follows that newer version; where
//!   the older ones differ it is said below. Not checked against the pinned commit itself.
//!
//! sandbox2 evaluates the rules in order and the first `ALLOW`/`ERRNO` wins; every rule it adds
//! allows, except `clone3` (ENOSYS, in the default policy, *before* the user policy) and two
//! "overridable" errno rules (`readlink` ENOENT and `sigaltstack` ENOSYS, *after* it: the baseline's
//! `AllowReadlink` and `AllowHandleSignals` allow both first). So the policy is the union of the
//! allowed call shapes below, plus `clone3` answered ENOSYS. Anything else ends in sandbox2's final
//! `KILL`.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition, SeccompRule};

/// Which policy to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Cuttlefish's policy as written (baseline + `vhost_device_vsock.cpp` + sandbox2 defaults).
    Stock,
    /// Stock plus the additions in [`patch`] (`cuttlefish/sandbox/vhost_device_vsock.cpp.patch`).
    Patched,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "stock" => Some(Policy::Stock),
            "patched" => Some(Policy::Patched),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Stock => "stock",
            Policy::Patched => "patched",
        }
    }
}

/// One allowed shape of a syscall: every condition must hold (an empty list: any arguments).
type Shape = Vec<SeccompCondition>;

/// The allowed syscalls and, for those the policy checks, the allowed argument shapes.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// `None`: allowed with any arguments; `Some(shapes)`: allowed when one shape matches.
    map: BTreeMap<i64, Option<Vec<Shape>>>,
}

/// `ARG_32(i) == v` (sandbox2's ARG_32/JEQ32: the low 32 bits of argument `i`).
fn eq32(arg: u8, v: u64) -> SeccompCondition {
    cond(arg, Len::Dword, Op::Eq, v)
}

fn cond(arg: u8, len: Len, op: Op, v: u64) -> SeccompCondition {
    // Only invalid for arg > 5, which this module never asks for.
    SeccompCondition::new(arg, len, op, v).unwrap_or_else(|e| panic!("condition on arg {arg}: {e}"))
}

impl Rules {
    /// `AllowSyscall`: any arguments.
    pub fn allow(&mut self, nr: i64) -> &mut Self {
        self.map.insert(nr, None);
        self
    }

    pub fn allow_all(&mut self, nrs: &[i64]) -> &mut Self {
        for &nr in nrs {
            self.allow(nr);
        }
        self
    }

    /// `AddPolicyOnSyscall(nr, { ..., JEQ32(v, ALLOW) })`: allowed when `shape` holds. A syscall
    /// already allowed with any arguments stays so (rules are a union).
    pub fn allow_when(&mut self, nr: i64, shape: Shape) -> &mut Self {
        match self.map.entry(nr).or_insert_with(|| Some(Vec::new())) {
            None => {}
            Some(shapes) => shapes.push(shape),
        }
        self
    }

    /// `ARG_32(arg)` equal to one of `values`.
    pub fn allow_arg_in(&mut self, nr: i64, arg: u8, values: &[u64]) -> &mut Self {
        for &v in values {
            self.allow_when(nr, vec![eq32(arg, v)]);
        }
        self
    }

    /// `mmap(prot, flags)` exactly (sandbox2's `AddPolicyOnMmap` blocks compare both for equality).
    pub fn allow_mmap(&mut self, prot: i32, flags: &[i32]) -> &mut Self {
        for &f in flags {
            self.allow_when(
                libc::SYS_mmap,
                vec![eq32(2, prot as u32 as u64), eq32(3, f as u32 as u64)],
            );
        }
        self
    }

    /// `AllowFutexOp(op)`: `(ARG_32(1) & FUTEX_CMD_MASK) == op`.
    fn allow_futex_op(&mut self, op: i32) -> &mut Self {
        let mask = !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME) as u32 as u64;
        self.allow_when(
            libc::SYS_futex,
            vec![cond(1, Len::Dword, Op::MaskedEq(mask), op as u64)],
        )
    }

    /// Removes `nr` entirely (for the check that a missing syscall is caught).
    pub fn remove(&mut self, nr: i64) -> &mut Self {
        self.map.remove(&nr);
        self
    }

    #[cfg(test)]
    pub fn contains(&self, nr: i64) -> bool {
        self.map.contains_key(&nr)
    }

    /// The rule map seccompiler takes (an empty rule list matches any arguments).
    pub fn into_seccompiler(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.map
            .into_iter()
            .map(|(nr, shapes)| {
                let rules = shapes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| SeccompRule::new(s).unwrap_or_else(|e| panic!("rule for {nr}: {e}")))
                    .collect();
                (nr, rules)
            })
            .collect()
    }
}

/// The allowed syscalls of `policy`. `clone3` is not among them: [`CLONE3_ERRNO`] answers it.
pub fn rules(policy: Policy) -> Rules {
    let mut r = Rules::default();
    sandbox2_default(&mut r);
    baseline(&mut r);
    vhost_device_vsock(&mut r);
    if policy == Policy::Patched {
        patch(&mut r);
    }
    r
}

/// sandbox2 `Policy::GetDefaultPolicy` answers `clone3` with this errno (so glibc falls back to
/// `clone`).
pub const CLONE3_ERRNO: u32 = libc::ENOSYS as u32;

/// sandbox2 `Policy::GetDefaultPolicy`: `clone` only without new-namespace flags or
/// `CLONE_UNTRACED` (`JA32(unsafe_clone_flags, DENY)`), `ptrace`/`bpf` denied (by not being
/// listed here), `clone3` → ENOSYS ([`CLONE3_ERRNO`], a separate filter). The sandboxee's own
/// `execveat` is allowed once by the monitor; the launcher does the same for its `execve`
/// (`super::launcher`), so `execve` is not listed. `clone` itself is allowed by the user policy
/// (`AllowSyscall(__NR_clone)` in `vhost_device_vsock.cpp`); the flag check is folded in here.
fn sandbox2_default(r: &mut Rules) {
    let unsafe_flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWPID
        | libc::CLONE_UNTRACED) as u32 as u64;
    r.allow_when(
        libc::SYS_clone,
        vec![cond(0, Len::Dword, Op::MaskedEq(unsafe_flags), 0)],
    );
}

/// `BaselinePolicy` (baseline.cpp) with the helpers it calls expanded.
fn baseline(r: &mut Rules) {
    use libc::*;
    // AllowDynamicStartup(MapExec()): AllowAccess, AllowOpen, AllowRead, AllowStat, lseek, close,
    // munmap, mprotect(R / NONE / RW / RX), AllowStaticStartup, and its mmap block.
    r.allow_all(&[SYS_access, SYS_faccessat, SYS_faccessat2]);
    r.allow_all(&[SYS_creat, SYS_open, SYS_openat]);
    r.allow_all(&[SYS_read, SYS_readv, SYS_preadv, SYS_pread64]);
    // AllowStat: fstat, fstatfs, lstat, newfstatat, stat, statfs. No statx (in no version read).
    r.allow_all(&[
        SYS_fstat,
        SYS_fstatfs,
        SYS_lstat,
        SYS_newfstatat,
        SYS_stat,
        SYS_statfs,
    ]);
    r.allow_all(&[SYS_lseek, SYS_close, SYS_munmap]);
    r.allow_arg_in(
        SYS_mprotect,
        2,
        &[
            PROT_READ as u64,
            PROT_NONE as u64,
            (PROT_READ | PROT_WRITE) as u64,
            (PROT_READ | PROT_EXEC) as u64,
        ],
    );
    // AllowStaticStartup: AllowGetRlimit (getrlimit; prlimit64 only as a read: new_limit, the
    // 64-bit arg 2, is NULL), uname, brk, set_tid_address, set_robust_list, futex WAIT_BITSET,
    // rt_sigaction(SIGRTMIN / SIGRTMIN+1) (superseded by AllowHandleSignals below),
    // rt_sigprocmask, arch_prctl(ARCH_SET_FS), mprotect(PROT_READ).
    r.allow(SYS_getrlimit);
    r.allow_when(SYS_prlimit64, vec![cond(2, Len::Qword, Op::Eq, 0)]);
    r.allow_all(&[SYS_uname, SYS_brk, SYS_set_tid_address, SYS_set_robust_list]);
    r.allow_futex_op(FUTEX_WAIT_BITSET);
    r.allow(SYS_rt_sigprocmask);
    const ARCH_SET_FS: u64 = 0x1002;
    r.allow_arg_in(SYS_arch_prctl, 0, &[ARCH_SET_FS]);
    // AllowDynamicStartup's mmap block.
    r.allow_mmap(PROT_READ, &[MAP_PRIVATE]);
    r.allow_mmap(
        PROT_READ | PROT_WRITE,
        &[
            MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE,
            MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED,
            MAP_ANONYMOUS | MAP_PRIVATE,
        ],
    );
    // The newer policybuilder.cc adds the MAP_FIXED variant; ee58a410 has only the first.
    r.allow_mmap(
        PROT_READ | PROT_EXEC,
        &[
            MAP_PRIVATE | MAP_DENYWRITE,
            MAP_PRIVATE | MAP_DENYWRITE | MAP_FIXED,
        ],
    );
    // AllowExit, AllowGetPIDs, AllowGetRandom (flags 0 / GRND_NONBLOCK; vhost_device_vsock.cpp
    // then allows getrandom with any flags).
    r.allow_all(&[SYS_exit, SYS_exit_group]);
    r.allow_all(&[SYS_getpid, SYS_getppid, SYS_gettid]);
    // Allow(MapExec()): no PROT_EXEC deny in the default policy. The baseline's own mmap block:
    r.allow_mmap(
        PROT_NONE,
        &[
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
            MAP_PRIVATE | MAP_ANONYMOUS,
        ],
    );
    r.allow_mmap(
        PROT_READ,
        &[
            MAP_PRIVATE | MAP_ANONYMOUS,
            MAP_PRIVATE | MAP_DENYWRITE,
            MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE,
            MAP_PRIVATE,
        ],
    );
    r.allow_mmap(
        PROT_READ | PROT_EXEC,
        &[
            MAP_PRIVATE | MAP_DENYWRITE,
            MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE,
        ],
    );
    r.allow_mmap(
        PROT_READ | PROT_WRITE,
        &[MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS],
    );
    // AllowReadlink (also overrides AllowStaticStartup's overridable readlink → ENOENT).
    r.allow_all(&[SYS_readlink, SYS_readlinkat]);
    // AllowRestartableSequences(kAllowSlowFences): rseq, mmap(RW, PRIVATE|ANONYMOUS), getcpu,
    // membarrier, futex WAIT / WAKE, AllowRead, AllowOpen, AllowPoll, close,
    // rt_sigprocmask(SIG_SETMASK), AllowPrctlSetVma, sched_getaffinity, sched_setaffinity.
    r.allow(SYS_rseq);
    r.allow_mmap(PROT_READ | PROT_WRITE, &[MAP_PRIVATE | MAP_ANONYMOUS]);
    r.allow_all(&[SYS_getcpu, SYS_membarrier]);
    r.allow_futex_op(FUTEX_WAIT);
    r.allow_futex_op(FUTEX_WAKE);
    r.allow_all(&[SYS_poll, SYS_ppoll]);
    const PR_SET_VMA: u64 = 0x53564d41;
    const PR_SET_VMA_ANON_NAME: u64 = 0;
    r.allow_when(
        SYS_prctl,
        vec![eq32(0, PR_SET_VMA), eq32(1, PR_SET_VMA_ANON_NAME)],
    );
    r.allow_all(&[SYS_sched_getaffinity, SYS_sched_setaffinity]);
    // AllowWrite.
    r.allow_all(&[SYS_write, SYS_writev, SYS_pwritev, SYS_pwrite64]);
}

/// `VhostDeviceVsockPolicy` (vhost_device_vsock.cpp).
fn vhost_device_vsock(r: &mut Rules) {
    use libc::*;
    // mmap: PROT_READ|PROT_WRITE with MAP_STACK|MAP_PRIVATE|MAP_ANONYMOUS (thread stacks) or
    // MAP_NORESERVE|MAP_SHARED (guest memory).
    r.allow_mmap(
        PROT_READ | PROT_WRITE,
        &[
            MAP_STACK | MAP_PRIVATE | MAP_ANONYMOUS,
            MAP_NORESERVE | MAP_SHARED,
        ],
    );
    r.allow_arg_in(SYS_ioctl, 1, &[FIONBIO]);
    r.allow_arg_in(SYS_socket, 0, &[AF_UNIX as u64]);
    // AllowDup, AllowEpoll (+ AllowEpollWait), AllowEventFd.
    r.allow_all(&[SYS_dup, SYS_dup2, SYS_dup3]);
    r.allow_all(&[
        SYS_epoll_create,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
    ]);
    r.allow_all(&[SYS_eventfd, SYS_eventfd2]);
    // AllowHandleSignals (restart_syscall is in the newer version only).
    r.allow_all(&[
        SYS_restart_syscall,
        SYS_rt_sigaction,
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
    ]);
    // AllowPrctlSetName.
    r.allow_arg_in(SYS_prctl, 0, &[PR_SET_NAME as u64]);
    // AllowSafeFcntl.
    r.allow_arg_in(
        SYS_fcntl,
        1,
        &[
            F_GETFD as u64,
            F_SETFD as u64,
            F_GETFL as u64,
            F_SETFL as u64,
            F_GETLK as u64,
            F_SETLK as u64,
            F_SETLKW as u64,
            F_DUPFD as u64,
            F_DUPFD_CLOEXEC as u64,
        ],
    );
    r.allow_all(&[
        SYS_accept4,
        SYS_bind,
        SYS_connect,
        SYS_getrandom,
        SYS_listen,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_sendmsg,
    ]);
    // AllowSyscall(__NR_clone): with sandbox2's flag check, see `sandbox2_default`.
    // AllowUnlink (rmdir in the newer version only).
    r.allow_all(&[SYS_rmdir, SYS_unlink, SYS_unlinkat]);
}

/// What the patch (`cuttlefish/sandbox/vhost_device_vsock.cpp.patch`) adds, each with its reason.
fn patch(r: &mut Rules) {
    use libc::*;
    // Half-close: a guest SHUTDOWN(SEND) becomes shutdown(SHUT_WR) on the host socket, so the host
    // application reads EOF while it can still send. No other call does this.
    r.allow_arg_in(SYS_shutdown, 1, &[SHUT_WR as u64]);
    // Toolchain drift that kills the stock vhost-device-vsock 0.3.0 built with today's Rust:
    // env_logger's terminal probe (isatty → ioctl(TCGETS)) ...
    r.allow_arg_in(SYS_ioctl, 1, &[TCGETS]);
    // ... glibc reserving a 64 MiB malloc arena per thread (mmap(PROT_NONE,
    // MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE), then mprotect(RW) piecewise, already allowed) ...
    r.allow_mmap(PROT_NONE, &[MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE]);
    // ... Rust std's UnixStream::write = send(fd, buf, len, MSG_NOSIGNAL) = sendto without an
    // address (only that shape: flags MSG_NOSIGNAL, dest_addr NULL) ...
    r.allow_when(
        SYS_sendto,
        vec![eq32(3, MSG_NOSIGNAL as u64), cond(4, Len::Qword, Op::Eq, 0)],
    );
    // ... and glibc freeing thread stacks / trimming arenas with madvise(MADV_DONTNEED).
    r.allow_arg_in(SYS_madvise, 2, &[MADV_DONTNEED as u64]);
    // vsock-plugin's hardening in full mode (`--sandbox stock` makes none of these):
    // socket files get an explicit mode whatever the umask (fchmod before bind, chmod after) ...
    r.allow_all(&[SYS_fchmod, SYS_chmod, SYS_fchmodat]);
    // ... the soft fd limit is raised to the hard one at start (prlimit64 writing NOFILE) ...
    r.allow_arg_in(SYS_prlimit64, 1, &[RLIMIT_NOFILE as u64]);
    // ... a guest-memory fd's seals are read (sealed against shrinking: no SIGBUS guard needed) ...
    r.allow_arg_in(SYS_fcntl, 1, &[F_GET_SEALS as u64]);
    // ... and a relayed connect checks its listener is not the plugin itself (SO_PEERCRED).
    r.allow_when(
        SYS_getsockopt,
        vec![eq32(1, SOL_SOCKET as u64), eq32(2, SO_PEERCRED as u64)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_lacks_what_the_patch_adds() {
        let stock = rules(Policy::Stock);
        let patched = rules(Policy::Patched);
        for nr in [
            libc::SYS_shutdown,
            libc::SYS_sendto,
            libc::SYS_madvise,
            libc::SYS_statx,
        ] {
            assert!(!stock.contains(nr), "stock allows {nr}");
        }
        for nr in [libc::SYS_shutdown, libc::SYS_sendto, libc::SYS_madvise] {
            assert!(patched.contains(nr), "patched lacks {nr}");
        }
        assert!(!patched.contains(libc::SYS_statx));
        assert!(!stock.contains(libc::SYS_clone3) && !stock.contains(libc::SYS_execve));
    }
}
