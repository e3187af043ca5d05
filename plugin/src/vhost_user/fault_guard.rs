//! Contains SIGBUS on guest RAM whose fd can still shrink.
//!
//! A region is mapped `MAP_SHARED` from a frontend's fd. If the frontend truncates that fd after
//! sharing it, touching a page past the new end raises SIGBUS, whose default action kills the
//! plugin and every VM it serves (F2). Two defences, chosen per region when it is mapped
//! ([`super::memory`]):
//!
//! - **Sealed**: the fd carries `F_SEAL_SHRINK` (`fcntl(F_GET_SEALS)`), so it can never shrink
//!   below the size checked at map time. QEMU's `memory-backend-memfd` seals by default
//!   (`seal=on`), and crosvm seals its guest memfd with shrink + grow + seal
//!   (`vm_memory/src/guest_memory/sys/linux.rs`, `finalize_shm`). Nothing else is needed.
//! - **Unsealed** (plain files, hugetlbfs, `seal=off` memfds): the region's address range is
//!   registered here. A process-wide SIGBUS handler that finds the faulting address inside a
//!   registered range maps an anonymous zero page `MAP_FIXED` over the faulting page (so the
//!   access completes, reading zeros) and flags the range; the worker sees the flag after the
//!   data-path pass and drops that VM's frontend with an error. Other VMs never notice. A SIGBUS
//!   anywhere else is not ours: the previous disposition is restored and the fault repeats
//!   under it (Rust's own stack-overflow handler, or the default action).
//!
//! The handler only uses atomics and async-signal-safe calls (`mmap`, `sigaction`); the table is
//! a fixed array of slots, so registering never allocates in the handler's view.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Guarded ranges at once, process-wide (every unsealed region of every VM).
pub const MAX_GUARDED: usize = 1024;

struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    /// 0 = not armed (set last on register, cleared first on release).
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};
static SLOTS: [Slot; MAX_GUARDED] = [EMPTY; MAX_GUARDED];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS disposition before ours, restored for faults that are not ours.
struct Previous(libc::sigaction);
// SAFETY: a plain C struct written once before the handler is installed, then only read.
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}
static PREVIOUS: OnceLock<Result<Previous, String>> = OnceLock::new();

/// A registered range; dropping it disarms the slot (before the mapping goes away).
#[derive(Debug)]
pub struct FaultGuard {
    slot: usize,
}

impl FaultGuard {
    /// Registers `[start, start + len)` (a mapping of guest RAM whose fd may shrink).
    pub fn register(start: *const u8, len: usize) -> Result<FaultGuard, String> {
        install()?;
        let slot = SLOTS
            .iter()
            .position(|s| {
                s.used
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or_else(|| {
                format!(
                    "more than {MAX_GUARDED} guest memory regions without F_SEAL_SHRINK; \
                     seal the memfd (e.g. QEMU memory-backend-memfd seal=on)"
                )
            })?;
        let s = &SLOTS[slot];
        s.faulted.store(false, Ordering::Release);
        s.start.store(start as usize, Ordering::Release);
        s.len.store(len, Ordering::Release);
        Ok(FaultGuard { slot })
    }

    /// Whether an access to this range raised SIGBUS (the fd shrank under the mapping).
    pub fn faulted(&self) -> bool {
        SLOTS[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        s.len.store(0, Ordering::Release);
        s.used.store(false, Ordering::Release);
    }
}

/// Whether `fd` is sealed against shrinking (`F_SEAL_SHRINK`). Files that cannot carry seals
/// (`EINVAL`) are not.
pub fn shrink_sealed(fd: std::os::fd::RawFd) -> bool {
    if !crate::sandbox::beyond_stock_allowed() {
        // F_GET_SEALS is outside Cuttlefish's stock policy: treat the fd as unsealed (guarded).
        return false;
    }
    // SAFETY: F_GET_SEALS only reads the fd's seal set.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

fn install() -> Result<(), String> {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if page > 0 {
                PAGE_SIZE.store(page as usize, Ordering::Release);
            }
            // SAFETY: a zeroed sigaction is valid; the handler below is async-signal-safe.
            unsafe {
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_sigbus as *const () as usize;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut ours.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, &ours, &mut prev) != 0 {
                    return Err(format!(
                        "cannot install the SIGBUS handler: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(Previous(prev))
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; errno is thread-local.
    let (addr, errno) = unsafe { ((*info).si_addr() as usize, *libc::__errno_location()) };
    let page = PAGE_SIZE.load(Ordering::Acquire);
    let contained = SLOTS.iter().any(|s| {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        if len == 0 || addr < start || addr - start >= len {
            return false;
        }
        let at = addr & !(page - 1);
        // SAFETY: replaces one page inside a registered guest-RAM mapping that this process
        // owns; nothing else lives there.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        s.faulted.store(true, Ordering::Release);
        true
    });
    if !contained {
        if let Some(Ok(prev)) = PREVIOUS.get() {
            // SAFETY: restoring the disposition saved at install; the fault then repeats under it.
            unsafe { libc::sigaction(libc::SIGBUS, &prev.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}
