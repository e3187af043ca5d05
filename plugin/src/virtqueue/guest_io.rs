//! Socket I/O straight between host sockets and guest memory, through raw iovecs.
//!
//! vm-memory never hands out references to guest memory: the guest may write it at any time, so
//! a `&[u8]` over it would be unsound. Bytes are copied with vm-memory's volatile accessors
//! ([`copy_from_guest`]), or the kernel reads and writes guest memory itself from iovecs
//! ([`send_from_guest`], [`recv_into_guest`]). Each iovec is built from a pointer guard that
//! stays alive, in the same function, until the system call that uses it has returned.

use std::io;
use std::os::fd::RawFd;

use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Guest memory ranges (guest addresses, or IOVAs in translated mode) forming one byte stream.
pub type GuestRanges = [(GuestAddress, usize)];

/// Most iovecs one system call takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// What keeps a guest mapping valid while an iovec points into it.
enum Guard {
    Read(#[allow(dead_code)] PtrGuard),
    Write(#[allow(dead_code)] PtrGuardMut),
}

fn memory_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("guest memory: {e}"))
}

/// The iovecs over `ranges` (with `access`), their guards pushed to `guards`: the iovecs are
/// valid only while those guards live.
fn iovecs<M: GuestMemory>(
    mem: &M,
    ranges: &GuestRanges,
    access: Permissions,
    guards: &mut Vec<Guard>,
) -> io::Result<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        for slice in mem.get_slices(addr, len, access).map_err(memory_error)? {
            let slice = slice.map_err(memory_error)?;
            let (ptr, guard) = if access == Permissions::Write {
                let g = slice.ptr_guard_mut();
                (g.as_ptr(), Guard::Write(g))
            } else {
                let g = slice.ptr_guard();
                (g.as_ptr().cast_mut(), Guard::Read(g))
            };
            iov.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: slice.len(),
            });
            guards.push(guard);
        }
    }
    Ok(iov)
}

/// Runs a system call until it is not interrupted; a negative result is the errno.
fn retrying(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends the guest bytes of `ranges` on socket `fd` with one `sendmsg(MSG_NOSIGNAL)` (a closed
/// peer is EPIPE, never SIGPIPE). Returns the bytes the socket took.
pub fn send_from_guest<M: GuestMemory>(
    fd: RawFd,
    mem: &M,
    ranges: &GuestRanges,
) -> io::Result<usize> {
    let mut guards = Vec::new();
    let iov = iovecs(mem, ranges, Permissions::Read, &mut guards)?;
    // SAFETY: zeroed is a valid msghdr (null name and control, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len().min(IOV_MAX) as _;
    // SAFETY: `msg` points at `iov`, alive here; each iovec covers guest memory that
    // get_slices found mapped and readable, kept mapped by `guards` (alive until the end of
    // this function) and by `mem` (borrowed for the call). sendmsg only reads it.
    let sent = retrying(|| unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) });
    drop(guards);
    sent
}

/// Reads from socket `fd` straight into the guest memory of `ranges` with one `readv`.
pub fn recv_into_guest<M: GuestMemory>(
    fd: RawFd,
    mem: &M,
    ranges: &GuestRanges,
) -> io::Result<usize> {
    let mut guards = Vec::new();
    let iov = iovecs(mem, ranges, Permissions::Write, &mut guards)?;
    // SAFETY: each iovec covers guest memory that get_slices found mapped and writable, kept
    // mapped by `guards` (alive until the end of this function) and `mem`; readv writes at most
    // iov_len bytes into each. The guest may access that memory concurrently, which is fine for
    // the kernel's copy (no Rust reference to it exists).
    let got = retrying(|| unsafe { libc::readv(fd, iov.as_ptr(), iov.len().min(IOV_MAX) as i32) });
    drop(guards);
    got
}

/// The bytes of `ranges` after the first `skip`, copied out with volatile reads.
pub fn copy_from_guest<M: GuestMemory>(
    mem: &M,
    ranges: &GuestRanges,
    mut skip: usize,
) -> io::Result<Vec<u8>> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut out = vec![0u8; total.saturating_sub(skip)];
    let mut done = 0;
    for &(addr, len) in ranges {
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = len - skip;
        let at = GuestAddress(addr.0 + skip as u64);
        mem.read_slice(&mut out[done..done + take], at)
            .map_err(memory_error)?;
        done += take;
        skip = 0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x8000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn bytes_go_both_ways_across_ranges_and_regions() {
        let m = mem();
        m.write_slice(b"hello ", GuestAddress(0x3ffa)).unwrap();
        m.write_slice(b"guest", GuestAddress(0x8000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let out = [(GuestAddress(0x3ffa), 6), (GuestAddress(0x8000), 5)];
        assert_eq!(send_from_guest(a.as_raw_fd(), &m, &out).unwrap(), 11);
        let mut got = [0u8; 11];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello guest");
        assert_eq!(copy_from_guest(&m, &out, 3).unwrap(), b"lo guest");
        assert_eq!(copy_from_guest(&m, &out, 7).unwrap(), b"uest");

        b.write_all(b"0123456789").unwrap();
        let into = [(GuestAddress(0x100), 4), (GuestAddress(0x8ffa), 6)];
        assert_eq!(recv_into_guest(a.as_raw_fd(), &m, &into).unwrap(), 10);
        let mut back = [0u8; 10];
        m.read_slice(&mut back[..4], GuestAddress(0x100)).unwrap();
        m.read_slice(&mut back[4..], GuestAddress(0x8ffa)).unwrap();
        assert_eq!(&back, b"0123456789");
    }

    #[test]
    fn ranges_outside_guest_memory_are_refused_before_any_io() {
        let m = mem();
        let (a, _b) = UnixStream::pair().unwrap();
        let hole = [(GuestAddress(0x3ff0), 0x20)];
        assert!(send_from_guest(a.as_raw_fd(), &m, &hole).is_err());
        assert!(recv_into_guest(a.as_raw_fd(), &m, &hole).is_err());
        assert!(copy_from_guest(&m, &hole, 0).is_err());
    }
}
