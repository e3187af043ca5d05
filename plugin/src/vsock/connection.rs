//! One guest ↔ host connection: the host socket it maps to, its buffers and credit, and its
//! protocol state (the state machine itself, with its transitions, is [`super::csm`]). Its fields
//! are private: the device routes packets and socket events here through methods named for what
//! happened (`queue_to_host`, `note_writable`, `take_rx_ready`, …), as Firecracker's
//! `csm/connection.rs` does, and never writes a flag or a buffer itself.
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
use super::packet::{kind, seq, PacketHeader};
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

/// One connection as the device sees it: it routes packets and events here, and the connection
/// keeps its own buffers, credit and readiness flags (the device never writes them directly).
pub struct Connection {
    pub key: ConnKey,
    /// `kind::STREAM` or `kind::SEQPACKET`.
    pub kind: u16,
    /// Phase and open directions; changed only through its transitions.
    pub state: ConnState,
    /// The host end (None while a guest-initiated connect waits for backlog room or its route).
    host: Option<UnixStream>,
    credit: Credit,
    /// Guest → host bytes waiting for the host socket.
    tx_queue: TxQueue,
    /// Guest → host SEQPACKET message being assembled until EOM.
    seq_partial: Vec<u8>,
    /// Host → guest bytes already taken from the host (CONNECT-line leftovers, or the rest of a
    /// SEQPACKET message), sent before reading the socket again.
    rx_pending: VecDeque<u8>,
    /// `seq::EOM|EOR` flags to put on the packet that empties `rx_pending`.
    rx_pending_eom: u32,
    /// The host socket may have data (edge-triggered: stays true until a read says EAGAIN).
    host_readable: bool,
    /// The host socket may accept data.
    host_writable: bool,
    /// EPOLLOUT is in the socket's epoll interest: exactly while `host_writable` is false (see
    /// `VsockDevice::sync_host_interest`).
    out_watched: bool,
    /// Host-initiated: the guest port requested, for the `OK` line.
    ok_line: Option<Vec<u8>>,
    /// The connection is in the device's rx ready queue.
    rx_queued: bool,
    /// Opened by a host client (CONNECT line) rather than by the guest. Set once.
    host_initiated: bool,
    /// The host end came from a registered host service. Set once.
    via_service: bool,
    /// Payload bytes moved, for status reports (the credit counters wrap at 4 GiB).
    bytes_from_guest: u64,
    bytes_to_guest: u64,
}

impl Connection {
    pub fn new(key: ConnKey, kind: u16, state: ConnState, buf_alloc: u32) -> Connection {
        Connection {
            key,
            kind,
            state,
            host: None,
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

    // ---- Where the connection came from (set once) ----

    /// A host client opened this connection with a CONNECT line: the guest's RESPONSE is
    /// answered with `ok_line`, and `already_read` (bytes the client sent after its CONNECT
    /// line) goes to the guest first.
    pub fn opened_by_host_client(&mut self, ok_line: Vec<u8>, already_read: &[u8]) {
        self.host_initiated = true;
        self.ok_line = Some(ok_line);
        self.rx_pending.extend(already_read);
    }

    pub fn host_initiated(&self) -> bool {
        self.host_initiated
    }

    pub fn via_service(&self) -> bool {
        self.via_service
    }

    /// The host end, connected (guest-initiated) or accepted (host-initiated).
    pub fn attach_host(&mut self, sock: UnixStream) {
        self.host = Some(sock);
    }

    pub fn host(&self) -> Option<&UnixStream> {
        self.host.as_ref()
    }

    /// The host end, handed over by a registered host service.
    pub fn attach_service_socket(&mut self, sock: UnixStream) {
        self.via_service = true;
        self.host = Some(sock);
    }

    /// The `OK <port>` line for the host client, once (empty for a guest-initiated one).
    pub fn take_ok_line(&mut self) -> Vec<u8> {
        self.ok_line.take().unwrap_or_default()
    }

    // ---- Credit (virtio spec 5.10.6.3; the arithmetic is in `Credit`) ----

    pub fn credit(&self) -> &Credit {
        &self.credit
    }

    /// Every guest packet carries its `buf_alloc`/`fwd_cnt`.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.credit.update_from_peer(buf_alloc, fwd_cnt);
    }

    /// Out of credit with data waiting: whether to send CREDIT_REQUEST (once per stall).
    pub fn should_request_credit(&mut self) -> bool {
        self.credit.should_request()
    }

    /// The guest may be waiting for a CREDIT_UPDATE (see `Credit::update_worthwhile`).
    pub fn credit_update_worthwhile(&self) -> bool {
        self.credit.update_worthwhile()
    }

    /// Puts our credit on a packet to the guest (every packet carries it), and remembers the
    /// `fwd_cnt` the guest now knows.
    pub fn stamp_credit(&mut self, hdr: &mut PacketHeader) {
        hdr.set_buf_alloc(self.credit.buf_alloc)
            .set_fwd_cnt(self.credit.fwd_cnt);
        self.note_credit_told();
    }

    /// A CREDIT_UPDATE is queued: it carries the `fwd_cnt` current at send time, so count it as
    /// told now and a burst of data does not queue one update per packet.
    pub fn note_credit_told(&mut self) {
        self.credit.fwd_cnt_sent = self.credit.fwd_cnt;
    }

    // ---- Guest → host ----

    /// Accounts an RW payload of `len` bytes from the guest; false if it exceeds the credit we
    /// gave (the guest must be reset).
    pub fn accept_from_guest(&mut self, len: usize) -> bool {
        self.bytes_from_guest += len as u64;
        self.credit.accept_from_peer(len as u32)
    }

    /// Stream payload may go straight from guest memory to the host socket: nothing is queued
    /// ahead of it (order) and the socket did not come up short.
    pub fn may_write_direct(&self) -> bool {
        !self.is_seqpacket() && self.tx_queue.is_empty() && self.host_writable
    }

    /// `n` payload bytes reached the host socket: they count in `fwd_cnt` only now, so bytes
    /// parked here keep the guest's credit down.
    pub fn wrote_to_host(&mut self, n: usize) {
        self.credit.fwd_cnt = self.credit.fwd_cnt.wrapping_add(n as u32);
    }

    /// Keeps guest → host bytes the socket did not take, to go out (in order) on
    /// [`Self::flush_to_host`].
    pub fn queue_to_host(&mut self, data: Vec<u8>) {
        self.tx_queue.push(data);
    }

    /// Adds one SEQPACKET fragment (`fill` writes its `len` bytes); at EOM the assembled
    /// message is queued whole for the host (a SEQPACKET socket keeps message boundaries).
    pub fn queue_message_part<E>(
        &mut self,
        len: usize,
        eom: bool,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.seq_partial.len();
        self.seq_partial.resize(start + len, 0);
        if let Err(e) = fill(&mut self.seq_partial[start..]) {
            self.seq_partial.truncate(start);
            return Err(e);
        }
        if eom {
            let msg = std::mem::take(&mut self.seq_partial);
            self.tx_queue.push(msg);
        }
        Ok(())
    }

    /// Guest bytes still waiting for the host socket.
    pub fn queued_for_host(&self) -> usize {
        self.tx_queue.len()
    }

    pub fn has_queued_for_host(&self) -> bool {
        !self.tx_queue.is_empty()
    }

    /// Writes what is queued for the host; updates fwd_cnt. Err: the host socket is broken.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        let Some(sock) = self.host.as_ref() else {
            return Ok(());
        };
        if self.tx_queue.is_empty() {
            return Ok(());
        }
        let boundaries = self.is_seqpacket();
        let n = self.tx_queue.flush(sock, boundaries)?;
        self.wrote_to_host(n);
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

    /// The guest closed both directions and everything it sent reached the host: time for our
    /// RST, which completes its close.
    pub fn guest_close_flushed(&self) -> bool {
        self.state.guest_closed_both() && self.tx_queue.is_empty()
    }

    // ---- Host socket readiness (edge-triggered epoll) ----

    /// EPOLLIN/RDHUP/HUP/ERR: a read may return something (data, EOF or the error).
    pub fn note_readable(&mut self) {
        self.host_readable = true;
    }

    /// A read said EAGAIN (or came up short on a stream): wait for the next edge.
    pub fn note_read_drained(&mut self) {
        self.host_readable = false;
    }

    #[cfg(test)]
    pub fn is_host_readable(&self) -> bool {
        self.host_readable
    }

    /// EPOLLOUT: the socket takes data again.
    pub fn note_writable(&mut self) {
        self.host_writable = true;
    }

    /// A write came up short (or would block): hold further data and watch for EPOLLOUT.
    pub fn note_write_blocked(&mut self) {
        self.host_writable = false;
    }

    pub fn is_host_writable(&self) -> bool {
        self.host_writable
    }

    /// EPOLLOUT must be watched exactly while the socket is not writable: `Some(watch)` when the
    /// interest has to change.
    pub fn out_interest_change(&self) -> Option<bool> {
        let want = !self.host_writable;
        (want != self.out_watched).then_some(want)
    }

    /// The EPOLLOUT interest was changed to `watched`.
    pub fn note_out_watched(&mut self, watched: bool) {
        self.out_watched = watched;
    }

    // ---- Host → guest ----

    /// Host → guest data can be produced now (ignoring rx buffer availability).
    pub fn has_rx_data(&self) -> bool {
        self.is_established()
            && self.state.guest_reads()
            && (!self.rx_pending.is_empty() || (self.host_readable && !self.state.host_eof()))
    }

    /// Whether to put the connection in the device's rx ready queue: it has data and is not
    /// queued yet (then it counts as queued).
    pub fn queue_rx_if_ready(&mut self) -> bool {
        if self.rx_queued || !self.has_rx_data() {
            return false;
        }
        self.rx_queued = true;
        true
    }

    /// Taken off the rx ready queue: whether it still has data to send.
    pub fn take_rx_ready(&mut self) -> bool {
        self.rx_queued = false;
        self.has_rx_data()
    }

    /// One whole SEQPACKET message read from the host, for the guest (EOM|EOR on its last
    /// packet).
    pub fn hold_message_for_guest(&mut self, msg: &[u8]) {
        self.rx_pending.extend(msg);
        self.rx_pending_eom = seq::EOM | seq::EOR;
    }

    pub fn has_pending_for_guest(&self) -> bool {
        !self.rx_pending.is_empty()
    }

    /// Up to `max` held bytes for the guest, with the flags for their packet: EOM|EOR when they
    /// end a SEQPACKET message, else 0.
    pub fn take_pending_for_guest(&mut self, max: usize) -> (Vec<u8>, u32) {
        let n = max.min(self.rx_pending.len());
        let bytes: Vec<u8> = self.rx_pending.drain(..n).collect();
        let flags = if self.rx_pending.is_empty() {
            std::mem::take(&mut self.rx_pending_eom)
        } else {
            0
        };
        (bytes, flags)
    }

    /// `n` payload bytes were put on the rx queue (they count against the guest's credit).
    pub fn sent_to_guest(&mut self, n: usize) {
        self.credit.rx_cnt = self.credit.rx_cnt.wrapping_add(n as u32);
        self.bytes_to_guest += n as u64;
    }

    // ---- Status ----

    pub fn bytes_from_guest(&self) -> u64 {
        self.bytes_from_guest
    }

    pub fn bytes_to_guest(&self) -> u64 {
        self.bytes_to_guest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsock::packet::{Endpoints, Op};
    use std::io::Read;
    use std::time::Instant;

    const KEY: ConnKey = ConnKey {
        host_port: 1234,
        guest_port: 5678,
    };

    /// An established connection of `kind` whose host end is one side of a socket pair; the
    /// other side is returned to play the host peer.
    fn established(kind: u16, buf_alloc: u32) -> (Connection, UnixStream) {
        let (ours, peer) = if kind == kind::SEQPACKET {
            seqpacket_pair()
        } else {
            UnixStream::pair().unwrap()
        };
        ours.set_nonblocking(true).unwrap();
        let mut state = ConnState::peer_init(Instant::now(), false);
        state.establish();
        let mut conn = Connection::new(KEY, kind, state, buf_alloc);
        conn.attach_host(ours);
        (conn, peer)
    }

    fn seqpacket_pair() -> (UnixStream, UnixStream) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        let r =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
        unsafe {
            (
                UnixStream::from_raw_fd(fds[0]),
                UnixStream::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn partial_write_then_flush_keeps_order_and_counts_only_written_bytes() {
        let (mut conn, mut peer) = established(kind::STREAM, 1 << 20);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        conn.note_write_blocked();
        assert!(
            !conn.may_write_direct(),
            "a blocked socket takes no direct writes"
        );
        conn.queue_to_host(data[..400_000].to_vec());
        conn.queue_to_host(data[400_000..].to_vec());
        assert_eq!(conn.queued_for_host(), data.len());
        conn.note_writable();
        assert!(!conn.may_write_direct(), "queued bytes go first");

        // The socket buffer is far smaller than 600 kB: the first flush comes up short.
        conn.flush_to_host().unwrap();
        let left = conn.queued_for_host();
        assert!(left > 0 && left < data.len(), "left {left}");
        assert!(
            !conn.is_host_writable(),
            "a short write marks the socket not writable"
        );
        assert_eq!(
            conn.out_interest_change(),
            Some(true),
            "EPOLLOUT must be watched"
        );
        // fwd_cnt counts only what reached the socket, so the guest's credit stays down.
        assert_eq!(conn.credit().fwd_cnt as usize, data.len() - left);

        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while conn.has_queued_for_host() {
            let n = peer.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            conn.note_writable();
            conn.flush_to_host().unwrap();
        }
        assert!(conn.is_host_writable());
        assert!(conn.may_write_direct());
        assert_eq!(conn.credit().fwd_cnt as usize, data.len());
        drop(conn);
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn guest_over_credit_is_refused() {
        let (mut conn, _peer) = established(kind::STREAM, 4096);
        assert!(conn.accept_from_guest(4000));
        assert!(
            !conn.accept_from_guest(97),
            "4097 bytes in a 4096-byte buffer"
        );
        conn.queue_to_host(vec![7; 4000]);
        conn.flush_to_host().unwrap();
        assert!(conn.accept_from_guest(96), "room again once flushed");
        assert_eq!(conn.bytes_from_guest(), 4000 + 97 + 96);
    }

    #[test]
    fn seqpacket_fragments_go_to_the_host_as_one_message_at_eom() {
        let (mut conn, peer) = established(kind::SEQPACKET, 4096);
        let fill = |bytes: &'static [u8]| {
            move |buf: &mut [u8]| {
                buf.copy_from_slice(bytes);
                Ok::<(), ()>(())
            }
        };
        conn.queue_message_part(3, false, fill(b"hel")).unwrap();
        assert!(!conn.has_queued_for_host(), "nothing goes out before EOM");
        // A fragment that cannot be read leaves the message as it was.
        assert!(conn
            .queue_message_part(5, false, |_: &mut [u8]| Err("unreadable"))
            .is_err());
        conn.queue_message_part(2, true, fill(b"lo")).unwrap();
        conn.queue_message_part(3, true, fill(b"two")).unwrap();
        assert_eq!(conn.queued_for_host(), 8);
        conn.flush_to_host().unwrap();
        assert_eq!(conn.credit().fwd_cnt, 8);
        let mut buf = [0u8; 64];
        let n = (&peer).read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"hello",
            "first message whole, without the failed fragment"
        );
        let n = (&peer).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
    }

    #[test]
    fn epollout_interest_follows_writability() {
        let (mut conn, _peer) = established(kind::STREAM, 4096);
        assert!(conn.is_host_writable());
        assert_eq!(conn.out_interest_change(), None, "writable and unwatched");
        conn.note_write_blocked();
        assert_eq!(conn.out_interest_change(), Some(true));
        conn.note_out_watched(true);
        assert_eq!(conn.out_interest_change(), None);
        conn.note_writable();
        assert_eq!(conn.out_interest_change(), Some(false));
        conn.note_out_watched(false);
        assert_eq!(conn.out_interest_change(), None);
    }

    #[test]
    fn readable_host_puts_the_connection_in_the_rx_queue_once() {
        let (mut conn, _peer) = established(kind::STREAM, 4096);
        assert!(!conn.has_rx_data());
        assert!(!conn.queue_rx_if_ready(), "nothing to read yet");
        conn.note_readable();
        assert!(conn.queue_rx_if_ready());
        assert!(!conn.queue_rx_if_ready(), "already queued");
        assert!(
            conn.take_rx_ready(),
            "still readable when taken off the queue"
        );
        assert!(conn.queue_rx_if_ready(), "may be queued again once taken");
        conn.note_read_drained();
        assert!(
            !conn.take_rx_ready(),
            "a drained socket has nothing for the guest"
        );
        assert!(!conn.queue_rx_if_ready());
        // EOF read: no more data even if an edge says readable.
        conn.note_readable();
        conn.state.host_read_eof();
        assert!(!conn.has_rx_data());
    }

    #[test]
    fn no_rx_data_before_established() {
        let mut conn = Connection::new(
            KEY,
            kind::STREAM,
            ConnState::local_init(Instant::now()),
            4096,
        );
        conn.opened_by_host_client(b"OK 5678\n".to_vec(), b"early");
        assert!(conn.host_initiated());
        assert!(!conn.has_rx_data(), "the guest has not accepted yet");
        conn.state.establish();
        assert!(
            conn.has_rx_data(),
            "bytes after the CONNECT line wait for the guest"
        );
        assert_eq!(conn.take_ok_line(), b"OK 5678\n");
        assert_eq!(conn.take_ok_line(), b"", "the OK line is sent once");
        assert_eq!(conn.take_pending_for_guest(64), (b"early".to_vec(), 0));
        assert!(!conn.has_pending_for_guest());
    }

    #[test]
    fn held_message_ends_with_eom_on_its_last_packet() {
        let (mut conn, _peer) = established(kind::SEQPACKET, 4096);
        conn.hold_message_for_guest(b"abcdef");
        assert!(conn.has_rx_data());
        assert_eq!(conn.take_pending_for_guest(4), (b"abcd".to_vec(), 0));
        assert_eq!(
            conn.take_pending_for_guest(4),
            (b"ef".to_vec(), seq::EOM | seq::EOR)
        );
        conn.hold_message_for_guest(b"x");
        assert_eq!(
            conn.take_pending_for_guest(4),
            (b"x".to_vec(), seq::EOM | seq::EOR)
        );
    }

    #[test]
    fn stamped_credit_counts_as_told() {
        let (mut conn, _peer) = established(kind::STREAM, 8192);
        assert!(conn.accept_from_guest(6000));
        conn.queue_to_host(vec![1; 6000]);
        conn.flush_to_host().unwrap();
        // The guest still thinks 6000 of 8192 are used while all is free: worth an update.
        assert!(conn.credit_update_worthwhile());
        let ends = Endpoints {
            src_cid: 2,
            src_port: KEY.host_port,
            dst_cid: 3,
            dst_port: KEY.guest_port,
        };
        let mut hdr = PacketHeader::new(ends, kind::STREAM, Op::Rw);
        conn.stamp_credit(&mut hdr);
        assert_eq!((hdr.buf_alloc(), hdr.fwd_cnt()), (8192, 6000));
        assert!(
            !conn.credit_update_worthwhile(),
            "the header told the guest"
        );
        conn.sent_to_guest(100);
        assert_eq!(conn.credit().rx_cnt, 100);
        assert_eq!(conn.bytes_to_guest(), 100);
    }

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
