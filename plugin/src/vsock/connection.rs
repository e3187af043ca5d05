//! One guest ↔ host connection: the host socket it maps to, its buffers and credit, and its
//! protocol state (the state machine itself, with its transitions, is [`super::csm`]).
//!
//! # Protocol primer
//!
//! A vsock connection is identified by (guest port, host port); the guest is always one end and
//! the host (CID 2, here a Unix socket) the other.
//!
//! ```text
//!  guest-initiated                          host-initiated (client sent "connect P\n")
//!  guest: REQUEST ───► connect <uds>_P      plugin: REQUEST ───► guest
//!     ok ◄─── RESPONSE      (Established)   guest: RESPONSE ───► plugin writes "OK P\n" (Established)
//!     no listener ◄─── RST  (removed)       guest: RST ───► host client closed, no OK line
//! ```
//!
//! Established: RW packets carry data both ways under credit flow control (see [`super::credit`]).
//! Every packet carries `buf_alloc`/`fwd_cnt`; CREDIT_REQUEST asks for a CREDIT_UPDATE.
//!
//! Closing: SHUTDOWN flags say which directions a side has finished. Guest SHUTDOWN(SEND) becomes
//! `shutdown(SHUT_WR)` on the host socket once our buffer is flushed (the host reads EOF and may
//! still write). Host EOF becomes SHUTDOWN(SEND) to the guest; a host socket closed outright
//! (HUP) becomes SHUTDOWN(RCV|SEND). When the guest has shut down both directions we flush, close
//! the host socket and answer RST; after we sent SHUTDOWN(RCV|SEND) we wait for the guest's RST.
//! Either wait is bounded by the shutdown timeout, after which we send RST ourselves. RST from
//! either side ends the connection at once. A connection that does not reach Established within
//! the connect timeout is reset. Nothing is dropped silently: every refused or unknown connection
//! gets an RST.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::os::unix::net::UnixStream;

use super::credit::Credit;
use super::csm::ConnState;
use super::packet::kind;
use super::status::ConnKey;

/// Guest → host bytes the host socket did not take yet. For SEQPACKET each entry is one whole
/// message and is sent whole; for streams entries are just chunks.
#[derive(Debug, Default)]
pub struct TxQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written (streams only).
    front_done: usize,
    bytes: usize,
}

impl TxQueue {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes waiting for the host socket.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, data: Vec<u8>) {
        if !data.is_empty() {
            self.bytes += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Writes as much as the socket takes; returns bytes written (payload bytes, for fwd_cnt).
    pub fn flush(&mut self, sock: &UnixStream, message_boundaries: bool) -> io::Result<usize> {
        let mut written = 0;
        while let Some(front) = self.chunks.front() {
            let n = if message_boundaries {
                match send(sock, front) {
                    Ok(n) if n == front.len() => n,
                    Ok(_) => {
                        return Err(io::Error::other(
                            "seqpacket message truncated by the host socket",
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            } else {
                let slices: Vec<IoSlice> = std::iter::once(IoSlice::new(&front[self.front_done..]))
                    .chain(self.chunks.iter().skip(1).take(15).map(|c| IoSlice::new(c)))
                    .collect();
                match (&*sock).write_vectored(&slices) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            written += n;
            self.consume(n, message_boundaries);
        }
        Ok(written)
    }

    fn consume(&mut self, mut n: usize, whole: bool) {
        self.bytes -= n;
        if whole {
            self.chunks.pop_front();
            return;
        }
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.front_done;
            if n >= left {
                n -= left;
                self.front_done = 0;
                self.chunks.pop_front();
            } else {
                self.front_done += n;
                n = 0;
            }
        }
    }
}

/// `sendmsg(2)` with MSG_NOSIGNAL (a closed peer is EPIPE, never SIGPIPE). Not `send`: glibc makes
/// that `sendto`, which Cuttlefish's stock sandbox policy does not allow (`sendmsg` it does).
pub fn send(sock: &UnixStream, data: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; msg_iov points at one iovec over `data`, which sendmsg
        // only reads.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub struct Connection {
    pub key: ConnKey,
    /// `kind::STREAM` or `kind::SEQPACKET`.
    pub kind: u16,
    /// Phase and open directions; changed only through its transitions.
    pub state: ConnState,
    /// The host end (None while a guest-initiated connect waits for backlog room).
    pub host: Option<UnixStream>,
    pub credit: Credit,
    /// Guest → host bytes waiting for the host socket.
    pub tx_queue: TxQueue,
    /// Guest → host SEQPACKET message being assembled until EOM.
    pub seq_partial: Vec<u8>,
    /// Host → guest bytes already taken from the host (CONNECT-line leftovers, or the rest of a
    /// SEQPACKET message), sent before reading the socket again.
    pub rx_pending: VecDeque<u8>,
    /// `seq::EOM|EOR` flags to put on the packet that empties `rx_pending`.
    pub rx_pending_eom: u32,
    /// The host socket may have data (edge-triggered: stays true until a read says EAGAIN).
    pub host_readable: bool,
    /// The host socket may accept data.
    pub host_writable: bool,
    /// EPOLLOUT is in the socket's epoll interest: exactly while `host_writable` is false (see
    /// `VsockDevice::sync_host_interest`).
    pub out_watched: bool,
    /// Host-initiated: the guest port requested, for the `OK` line.
    pub ok_line: Option<Vec<u8>>,
    /// The connection is in the device's rx ready queue.
    pub rx_queued: bool,
    /// Opened by a host client (CONNECT line) rather than by the guest.
    pub host_initiated: bool,
    /// The host end came from a registered host service.
    pub via_service: bool,
    /// Payload bytes moved, for status reports (the credit counters wrap at 4 GiB).
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
}

impl Connection {
    pub fn new(
        key: ConnKey,
        kind: u16,
        state: ConnState,
        host: Option<UnixStream>,
        buf_alloc: u32,
    ) -> Connection {
        Connection {
            key,
            kind,
            state,
            host,
            credit: Credit::new(buf_alloc),
            tx_queue: TxQueue::default(),
            seq_partial: Vec::new(),
            rx_pending: VecDeque::new(),
            rx_pending_eom: 0,
            host_readable: false,
            host_writable: true,
            out_watched: false,
            ok_line: None,
            rx_queued: false,
            host_initiated: false,
            via_service: false,
            bytes_from_guest: 0,
            bytes_to_guest: 0,
        }
    }

    pub fn is_seqpacket(&self) -> bool {
        self.kind == kind::SEQPACKET
    }

    pub fn is_established(&self) -> bool {
        self.state.is_established()
    }

    /// Host → guest data can be produced now (ignoring rx buffer availability).
    pub fn has_rx_data(&self) -> bool {
        self.is_established()
            && self.state.guest_reads()
            && (!self.rx_pending.is_empty() || (self.host_readable && !self.state.host_eof()))
    }

    /// Writes what is queued for the host; updates fwd_cnt. Err: the host socket is broken.
    pub fn flush_tx(&mut self) -> io::Result<()> {
        let Some(sock) = self.host.as_ref() else {
            return Ok(());
        };
        if self.tx_queue.is_empty() {
            return Ok(());
        }
        let boundaries = self.is_seqpacket();
        let n = self.tx_queue.flush(sock, boundaries)?;
        self.credit.fwd_cnt = self.credit.fwd_cnt.wrapping_add(n as u32);
        if !self.tx_queue.is_empty() {
            self.host_writable = false;
        }
        Ok(())
    }

    /// Applies a pending guest SHUTDOWN(SEND) to the host socket once everything is flushed.
    pub fn propagate_guest_shutdown(&mut self) {
        if self.state.take_write_shutdown(self.tx_queue.is_empty()) {
            // Under `--sandbox stock` there is no shutdown(2): the host sees EOF at full close.
            if let (Some(sock), true) = (&self.host, crate::sandbox::half_close_allowed()) {
                let _ = sock.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tx_queue_keeps_order_across_partial_writes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = TxQueue::default();
        let big: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        q.push(big[..300_000].to_vec());
        q.push(big[300_000..].to_vec());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        while !q.is_empty() {
            total += q.flush(&a, false).unwrap();
            let n = b.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        drop(a);
        b.read_to_end(&mut got).unwrap();
        assert_eq!(total, big.len());
        assert_eq!(got, big);
    }
}
