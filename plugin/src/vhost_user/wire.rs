//! vhost-user framing: a 12-byte header (`u32 request, u32 flags, u32 size`, native byte order),
//! `size` payload bytes, and file descriptors as SCM_RIGHTS ancillary data on the same `sendmsg`.
//!
//! Rules enforced here (vhost-user spec "Message Specification"):
//! - flags bits 0-1 are the version and must be 1; bit 2 is REPLY, bit 3 NEED_REPLY; other bits are
//!   reserved and must be zero. A request arriving with REPLY set is refused.
//! - a payload is at most [`MAX_PAYLOAD`] bytes; a larger size is a framing error (the stream can no
//!   longer be trusted, so the frontend connection is dropped).
//! - at most [`MAX_FDS`] descriptors travel with one message; more (control data truncated) is an error.
//! - a frontend's message is assembled without blocking ([`super::reader::MessageReader`]) and must
//!   arrive whole within a deadline counted from its first byte; [`recv_message`] (blocking) is for
//!   peers that only answer us and for tests.
//! - every message is sent with `sendmsg` (`MSG_NOSIGNAL`): a closed peer is an error, never SIGPIPE.
//!   Replies to a frontend, and backend-channel requests, are sent with `MSG_DONTWAIT` too: a
//!   frontend that lets them pile up until the socket buffer is full is not reading them, and is
//!   dropped rather than waited for. No socket timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`) are used.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

pub const HEADER_SIZE: usize = 12;
/// `MAX_MSG_SIZE` of the vhost crate: no vhost-user payload is larger.
pub const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Largest number of fds in one message (SET_MEM_TABLE carries one per region, at most 8; we allow
/// a margin and refuse anything beyond).
pub const MAX_FDS: usize = 32;

pub const FLAG_VERSION_1: u32 = 0x1;
pub const FLAG_VERSION_MASK: u32 = 0x3;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error(
        "bad header flags {0:#x} (version must be 1, reserved bits zero, no REPLY on a request)"
    )]
    BadFlags(u32),
    #[error("payload size {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    TooBig(u32),
    #[error("too many file descriptors (control data truncated)")]
    TooManyFds,
}

/// One received message, with ownership of the fds that came with it.
#[derive(Debug)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<File>,
}

impl Message {
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// Receives one request. Blocks until it is complete (bounded by the socket's read timeout).
pub fn recv_message(sock: &UnixStream) -> Result<Message, WireError> {
    recv(sock, false)
}

/// Receives one reply (REPLY flag set), e.g. to a backend-channel request.
pub fn recv_reply(sock: &UnixStream) -> Result<Message, WireError> {
    recv(sock, true)
}

fn recv(sock: &UnixStream, reply: bool) -> Result<Message, WireError> {
    let mut header = [0u8; HEADER_SIZE];
    let (n, fds) = recv_with_fds(sock, &mut header, 0)?;
    if n == 0 {
        return Err(WireError::Closed);
    }
    let mut reader = sock;
    if n < HEADER_SIZE {
        read_exact_or_closed(&mut reader, &mut header[n..])?;
    }
    let Header {
        request,
        flags,
        size,
    } = parse_header(&header, reply)?;
    let mut payload = vec![0u8; size];
    read_exact_or_closed(&mut reader, &mut payload)?;
    Ok(Message {
        request,
        flags,
        payload,
        fds,
    })
}

/// A checked message header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    /// Payload length, at most [`MAX_PAYLOAD`].
    pub size: usize,
}

/// Checks the 12 header bytes of a request (`reply == false`) or a reply (`reply == true`).
pub fn parse_header(header: &[u8; HEADER_SIZE], reply: bool) -> Result<Header, WireError> {
    let word =
        |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    let reply_ok = (flags & FLAG_REPLY != 0) == reply;
    if flags & FLAG_VERSION_MASK != FLAG_VERSION_1 || flags & !0xf != 0 || !reply_ok {
        return Err(WireError::BadFlags(flags));
    }
    if size as usize > MAX_PAYLOAD {
        return Err(WireError::TooBig(size));
    }
    Ok(Header {
        request,
        flags,
        size: size as usize,
    })
}

fn read_exact_or_closed(reader: &mut &UnixStream, buf: &mut [u8]) -> Result<(), WireError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => WireError::Io(e),
    })
}

/// Sends a reply (flags: version 1 | REPLY) for `request` with `payload` to a frontend, without
/// waiting for room in the socket buffer (a full buffer is an error: see the module rules).
pub fn send_reply(sock: &UnixStream, request: u32, payload: &[u8]) -> io::Result<()> {
    send_message_nowait(sock, request, FLAG_VERSION_1 | FLAG_REPLY, payload)
}

/// Sends one message without fds and without waiting for room in the socket buffer: a full
/// buffer is `WouldBlock` (the peer is not reading).
pub fn send_message_nowait(
    sock: &UnixStream,
    request: u32,
    flags: u32,
    payload: &[u8],
) -> io::Result<()> {
    sendmsg_all(
        sock,
        &frame(request, flags, payload),
        &[],
        libc::MSG_DONTWAIT,
    )
}

/// Sends one message with optional fds (blocking until the socket takes it all).
pub fn send_message(
    sock: &UnixStream,
    request: u32,
    flags: u32,
    payload: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    sendmsg_all(sock, &frame(request, flags, payload), fds, 0)
}

/// Header + payload in one buffer.
fn frame(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_SIZE + payload.len());
    buf.extend_from_slice(&request.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// Writes all of `buf` with `sendmsg` (`MSG_NOSIGNAL | extra_flags`), the fds riding on the first
/// call. With `MSG_DONTWAIT` a full socket buffer is `WouldBlock`, also after a partial write.
fn sendmsg_all(sock: &UnixStream, buf: &[u8], fds: &[RawFd], extra_flags: i32) -> io::Result<()> {
    let mut sent = 0;
    let mut fds = fds;
    while sent < buf.len() {
        let rest = &buf[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds);
        let mut control = if fds.is_empty() {
            Vec::new()
        } else {
            control_buffer(fd_bytes)
        };
        let mut msg = msghdr(&mut iov, &mut control);
        if fds.is_empty() {
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
        } else {
            // SAFETY: control has room for one cmsghdr carrying `fds` (CMSG_SPACE above).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr() as *const u8,
                    libc::CMSG_DATA(cmsg),
                    fd_bytes,
                );
            }
        }
        // SAFETY: msg describes `rest` (iov) and `control`, both alive for the call; sendmsg only
        // reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | extra_flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n as usize;
        fds = &[];
    }
    Ok(())
}

/// Room for SCM_RIGHTS ancillary data of `fd_bytes`.
fn control_buffer(fd_bytes: usize) -> Vec<u8> {
    // SAFETY: CMSG_SPACE only computes a size.
    vec![0u8; unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize]
}

/// A msghdr over one iovec and a control buffer; both must outlive its use.
fn msghdr(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; a zeroed one is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() as _;
    msg
}

/// `recvmsg` into `buf` (with `MSG_CMSG_CLOEXEC | extra_flags`), collecting any SCM_RIGHTS fds
/// (owned, close-on-exec).
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    extra_flags: i32,
) -> Result<(usize, Vec<File>), WireError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = control_buffer(MAX_FDS * std::mem::size_of::<RawFd>());
    let mut msg = msghdr(&mut iov, &mut control);
    let n = loop {
        // SAFETY: msg describes valid buffers.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | extra_flags,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc CMSG helpers.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = data_len / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    fds.push(File::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(WireError::TooManyFds);
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A frontend that never reads its replies fills its socket buffer; the next reply is an
    /// error at once (the device thread is never parked on it), and what was sent arrives whole.
    #[test]
    fn reply_to_a_frontend_not_reading_fails_instead_of_blocking() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload = [0x5au8; 1000];
        let mut sent = 0usize;
        let err = loop {
            match send_reply(&a, 24, &payload) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the socket buffer never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let first = recv_reply(&b).unwrap();
        assert_eq!(
            (first.request, first.flags),
            (24, FLAG_VERSION_1 | FLAG_REPLY)
        );
        assert_eq!(first.payload, payload);
    }

    #[test]
    fn round_trip_with_fds_and_rejects_bad_flags() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = File::open("/dev/null").unwrap();
        send_message(
            &a,
            5,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &[1, 2, 3],
            &[f.as_raw_fd()],
        )
        .unwrap();
        let m = recv_message(&b).unwrap();
        assert_eq!(
            (m.request, m.flags, m.payload.as_slice(), m.fds.len()),
            (5, 9, &[1u8, 2, 3][..], 1)
        );
        assert!(m.need_reply());

        send_message(&a, 1, 0x2, &[], &[]).unwrap();
        assert!(matches!(recv_message(&b), Err(WireError::BadFlags(2))));
        send_message(&a, 1, FLAG_VERSION_1 | FLAG_REPLY, &[], &[]).unwrap();
        assert!(matches!(recv_message(&b), Err(WireError::BadFlags(5))));
        let mut big = Vec::new();
        big.extend_from_slice(&1u32.to_ne_bytes());
        big.extend_from_slice(&1u32.to_ne_bytes());
        big.extend_from_slice(&5000u32.to_ne_bytes());
        (&a).write_all(&big).unwrap();
        assert!(matches!(recv_message(&b), Err(WireError::TooBig(5000))));
        drop(a);
        assert!(matches!(recv_message(&b), Err(WireError::Closed)));
    }
}
