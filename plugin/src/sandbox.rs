//! `--sandbox full|stock`: which host sandbox policy the plugin must stay inside.
//!
//! Cuttlefish can run the vsock backend under `process_sandboxer`, whose `vhost_device_vsock`
//! seccomp policy kills the process on any call it does not list (cuttlefish/README.md "Syscalls
//! the plugin makes"). Every call the plugin makes is inside that policy except one that has no
//! equivalent: `shutdown(SHUT_WR)`, which delivers a guest's half-close (SHUTDOWN with only the SEND
//! flag) to the host socket as EOF.
//!
//! - `full` (default): half-close is delivered. Needs the patched policy
//!   (`cuttlefish/sandbox/vhost_device_vsock.cpp.patch`) or no sandbox.
//! - `stock`: never calls `shutdown`. A guest half-close is *not* delivered: the host socket stays
//!   open for both directions, host→guest data keeps flowing, and the host application sees EOF only
//!   when the guest closes the connection fully (SHUTDOWN of both directions or RST), when the
//!   connection is closed. A host application that waits for EOF before answering waits until then.
//!   It also does without the other calls the stock policy lacks ([`beyond_stock_allowed`]):
//!   explicit socket-file modes (`fchmod`/`chmod`: the files get the mode the umask leaves, so run
//!   it with umask 077 in a private directory, as Cuttlefish's per-instance directories are),
//!   raising the soft fd limit (`prlimit64` with a new limit), the `SO_PEERCRED` backstop of the
//!   own-socket check (`getsockopt`; the check by path and inode stays), and reading a memory fd's
//!   seals (`fcntl(F_GET_SEALS)`: every region is then guarded against a shrinking fd, which costs
//!   nothing on the data path).
//!
//! The mode is process-wide (set once by `main` before any worker starts). `--sandbox` sets it;
//! without the flag, `$VSOCK_PLUGIN_SANDBOX` does (for launchers whose command line is fixed, like
//! Cuttlefish's, which starts the replaced `bin/vhost_device_vsock` with vhost-device-vsock's
//! arguments); without either it is `full`.

use std::sync::atomic::{AtomicBool, Ordering};

/// The policy the plugin must stay inside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Everything, half-close included (patched policy or no sandbox).
    #[default]
    Full,
    /// Cuttlefish's stock `vhost_device_vsock` policy: no half-close.
    Stock,
}

impl SandboxMode {
    pub fn parse(s: &str) -> Option<SandboxMode> {
        match s {
            "full" => Some(SandboxMode::Full),
            "stock" => Some(SandboxMode::Stock),
            _ => None,
        }
    }
}

/// The environment variable naming the mode when `--sandbox` is not given.
pub const ENV: &str = "VSOCK_PLUGIN_SANDBOX";

impl SandboxMode {
    /// The mode `$VSOCK_PLUGIN_SANDBOX` names (unset or empty: `full`).
    pub fn from_env() -> Result<SandboxMode, String> {
        match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => Ok(SandboxMode::Full),
            Ok(v) if v.is_empty() => Ok(SandboxMode::Full),
            Ok(v) => {
                SandboxMode::parse(&v).ok_or_else(|| format!("{ENV}={v:?} is not full or stock"))
            }
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(format!("{ENV}={v:?} is not full or stock"))
            }
        }
    }
}

static STOCK: AtomicBool = AtomicBool::new(false);

/// Sets the process-wide mode.
pub fn set_mode(mode: SandboxMode) {
    STOCK.store(mode == SandboxMode::Stock, Ordering::Relaxed);
}

/// Whether a guest half-close may be delivered with `shutdown(SHUT_WR)`.
pub fn half_close_allowed() -> bool {
    !STOCK.load(Ordering::Relaxed)
}

/// Whether calls outside the stock policy other than `shutdown` may be made: `fchmod`/`chmod` of
/// socket files, `prlimit64` raising the fd limit, `getsockopt(SO_PEERCRED)`,
/// `fcntl(F_GET_SEALS)` (the patched policy has them all).
pub fn beyond_stock_allowed() -> bool {
    !STOCK.load(Ordering::Relaxed)
}

/// Whether a thread may end on its own. Under the stock policy it may not: glibc `madvise`s the
/// stack of an exiting thread (MADV_DONTNEED), which that policy lacks. Workers that are done
/// then report it and park until the process exits ([`park_forever`]).
pub fn threads_may_exit() -> bool {
    !STOCK.load(Ordering::Relaxed)
}

/// Parks the calling thread for good (until the process exits).
pub fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}
