//! The tx queue: packets from the guest, to host connections or sibling VMs.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use vm_memory::GuestAddress;

use super::socket_io::queue_stream;
use super::{
    Rings, VsockDevice, CONTROL_BACKLOG, DATAPATH_LOG, MAX_BATCH_BYTES, MAX_HELD_CHAINS,
    MAX_PKT_PAYLOAD,
};
use crate::host::unix::{self, Connect};
use crate::iotlb::DeviceMemory;
use crate::virtio::TX_QUEUE;
use crate::virtqueue::chain::ChainBuffers;
use crate::virtqueue::guest_io;
use crate::vsock::connection::Connection;
use crate::vsock::csm::ConnState;
use crate::vsock::packet::{kind, seq, Op, PacketHeader, HEADER_SIZE, HOST_CID};
use crate::vsock::status::ConnKey;

impl VsockDevice {
    // ----- tx: guest → device ------------------------------------------------------------------

    /// Processes the tx queue until it is empty or back-pressured.
    ///
    /// Used-ring entries of a pass are returned at its end: until then the guest does not reuse
    /// those buffers, which lets consecutive RW packets of one connection go to the host socket
    /// in a single `sendmsg` straight from guest memory (see `TxBatch`).
    pub fn process_tx(&mut self, rings: &mut Rings) {
        self.drain_parked();
        let mem = rings.mem;
        // The batch names guest buffers of chains in `heads`: every path that hands those chains
        // back to the guest (return_tx_chains) flushes it first, so it never outlives them.
        let mut batch = TxBatch {
            ranges: std::mem::take(&mut self.tx_batch_scratch),
            ..TxBatch::default()
        };
        loop {
            let tx = &mut rings.vrings[TX_QUEUE];
            if !tx.is_ready() {
                break;
            }
            tx.disable_notification(mem);
            self.tx_paused = false;
            let mut heads: Vec<u16> = Vec::new();
            let (mut chains, mut payload) = (0usize, 0usize);
            loop {
                if self.control.len() >= CONTROL_BACKLOG {
                    self.tx_paused = true;
                    break;
                }
                if heads.len() >= MAX_HELD_CHAINS {
                    self.return_tx_chains(rings, &mut heads, &mut batch);
                }
                let Some(chain) = rings.vrings[TX_QUEUE].pop(mem) else {
                    break;
                };
                self.handle_tx_chain(&chain, mem, &mut batch);
                chains += 1;
                payload += chain.readable.len().saturating_sub(HEADER_SIZE);
                heads.push(chain.head);
            }
            self.return_tx_chains(rings, &mut heads, &mut batch);
            let tx = &mut rings.vrings[TX_QUEUE];
            if chains > 0 {
                let signalled = tx.notify(mem);
                log::trace!(target: DATAPATH_LOG,
                    "tx pass chains={chains} payload={payload} signal={}", signalled as u8);
            }
            if self.tx_paused || !tx.enable_notification(mem) {
                break;
            }
        }
        self.tx_batch_scratch = batch.ranges;
    }

    /// Sends what is batched, then hands the chains of this pass back to the guest.
    fn return_tx_chains(&mut self, rings: &mut Rings, heads: &mut Vec<u16>, batch: &mut TxBatch) {
        self.flush_tx_batch(batch, rings.mem);
        for head in heads.drain(..) {
            rings.vrings[TX_QUEUE].add_used(rings.mem, head, 0);
        }
    }

    /// Writes the batched payloads with one `sendmsg`, straight from the guest buffers; what
    /// the socket does not take is copied into the connection's queue (the buffers are about to
    /// be returned). A batch whose connection ended (or whose slot holds a newer connection) is
    /// dropped: its bytes have nowhere to go.
    fn flush_tx_batch(&mut self, batch: &mut TxBatch, mem: &DeviceMemory) {
        let Some((slot, generation)) = batch.target.take() else {
            return;
        };
        let bytes = std::mem::take(&mut batch.bytes);
        let ranges = std::mem::take(&mut batch.ranges);
        let alive = self.conns.generation(slot) == generation;
        if let Some(conn) = self.conns.get_mut(slot).filter(|_| alive) {
            let result = match conn.host() {
                // Bytes queued ahead (an earlier flush the socket did not take whole) go first.
                Some(_) if conn.has_queued_for_host() => Ok(0),
                Some(sock) => guest_io::send_from_guest(sock.as_raw_fd(), mem, &ranges),
                None => Ok(0),
            };
            let queued = match result {
                Ok(done) => {
                    conn.wrote_to_host(done);
                    if done < bytes {
                        conn.note_write_blocked();
                        guest_io::copy_from_guest(mem, &ranges, done)
                            .map(|rest| conn.queue_to_host(rest))
                    } else {
                        Ok(())
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.note_write_blocked();
                    guest_io::copy_from_guest(mem, &ranges, 0).map(|rest| conn.queue_to_host(rest))
                }
                Err(e) => Err(e),
            };
            if !conn.is_host_writable() {
                // A write came up short: watch for EPOLLOUT (sync_host_interest).
                self.out_dirty.push(slot);
            }
            if let Err(e) = queued {
                crate::log_limited!(Info, "host side of {:?} failed: {e}; reset", conn.key);
                self.reset_conn(slot);
            } else if conn.credit_update_worthwhile() {
                let (key, k) = (conn.key, conn.kind);
                self.queue_credit_update(slot, key, k);
            }
        }
        batch.ranges = ranges;
        batch.ranges.clear();
    }

    pub fn tx_paused(&self) -> bool {
        self.tx_paused
    }

    fn handle_tx_chain(&mut self, chain: &ChainBuffers, mem: &DeviceMemory, batch: &mut TxBatch) {
        self.stats.tx_packets += 1;
        let mut raw = [0u8; HEADER_SIZE];
        if chain.readable.len() < HEADER_SIZE || chain.readable.read_at(mem, 0, &mut raw).is_err() {
            crate::log_limited!(
                Warn,
                "tx packet of {} bytes is shorter than a header; dropped",
                chain.readable.len()
            );
            self.stats.dropped_packets += 1;
            return;
        }
        let hdr = PacketHeader::from_bytes(&raw);
        let len = hdr.len() as usize;
        if hdr.src_cid() != self.cfg.guest_cid {
            crate::log_limited!(
                Warn,
                "tx packet with src_cid {} from guest {}; dropped",
                hdr.src_cid(),
                self.cfg.guest_cid
            );
            self.stats.dropped_packets += 1;
            return;
        }
        if len > MAX_PKT_PAYLOAD.max(self.cfg.buf_alloc as usize)
            || len > chain.readable.len() - HEADER_SIZE
        {
            crate::log_limited!(
                Warn,
                "tx packet claims {len} payload bytes but carries {}; reset",
                chain.readable.len() - HEADER_SIZE
            );
            self.stats.dropped_packets += 1;
            self.reject_packet(&hdr, "malformed packet (length beyond its buffers)");
            return;
        }
        let Some(op) = hdr.op() else {
            crate::log_limited!(Warn, "tx packet with unknown op {}; reset", hdr.op_raw());
            self.reject_packet(&hdr, "packet with an unknown op");
            return;
        };
        let type_ok =
            hdr.kind() == kind::STREAM || (hdr.kind() == kind::SEQPACKET && self.seqpacket);
        if !type_ok {
            crate::log_limited!(
                Info,
                "tx packet with socket type {} not supported; reset",
                hdr.kind()
            );
            self.reject_packet(&hdr, "packet with an unsupported socket type");
            return;
        }
        match hdr.dst_cid() {
            HOST_CID => {
                self.handle_host_packet(&hdr, op, chain, mem, batch);
            }
            dst => {
                if !self.sibling_out_allowed(&hdr) {
                    return;
                }
                let mut packet = vec![0u8; HEADER_SIZE + len];
                if chain.readable.read_at(mem, 0, &mut packet).is_err() {
                    return;
                }
                self.send_to_sibling(&hdr, dst, packet);
            }
        }
    }

    /// Answers a packet the device refuses with RST. When it names an existing host connection,
    /// that connection ends too (host socket closed, slot freed): an RST always ends the
    /// connection on both sides, never just in the guest's view.
    fn reject_packet(&mut self, hdr: &PacketHeader, reason: &str) {
        if hdr.dst_cid() == HOST_CID {
            let key = ConnKey {
                host_port: hdr.dst_port(),
                guest_port: hdr.src_port(),
            };
            if let Some(slot) = self.conns.slot_of(&key) {
                self.reset_conn_because(slot, reason);
                return;
            }
        }
        self.reply_rst(hdr);
    }

    fn handle_host_packet(
        &mut self,
        hdr: &PacketHeader,
        op: Op,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        batch: &mut TxBatch,
    ) {
        let key = ConnKey {
            host_port: hdr.dst_port(),
            guest_port: hdr.src_port(),
        };
        let Some(slot) = self.conns.slot_of(&key) else {
            match op {
                Op::Request => {
                    self.restored.forget(&key);
                    self.guest_connect(hdr, key)
                }
                Op::Rst => {}
                // Restored: the guest reset this pre-snapshot socket (TRANSPORT_RESET); no reply.
                _ if self.restored.is_stale(&key) => {
                    crate::log_limited!(
                        Debug,
                        "{op:?} for pre-snapshot connection {key:?}; dropped"
                    );
                }
                _ => {
                    crate::log_limited!(Debug, "{op:?} for unknown connection {key:?}; reset");
                    self.reply_rst(hdr);
                }
            }
            return;
        };
        if op != Op::Rw && batch.target.is_some_and(|(s, _)| s == slot) {
            // Keep the order: batched data goes out before a SHUTDOWN, RST or anything else.
            self.flush_tx_batch(batch, mem);
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.kind != hdr.kind() {
            crate::log_limited!(Warn, "connection {key:?} changed socket type; reset");
            self.reset_conn(slot);
            return;
        }
        conn.peer_credit(hdr.buf_alloc(), hdr.fwd_cnt());
        match op {
            Op::Request => {
                crate::log_limited!(Warn, "duplicate REQUEST for {key:?}; reset");
                self.reset_conn(slot);
            }
            Op::Response => self.guest_accepted(slot),
            Op::Rw => self.guest_data(slot, hdr, chain, mem, batch),
            Op::CreditUpdate => {}
            Op::CreditRequest => {
                let k = conn.kind;
                self.queue_credit_update(slot, key, k);
            }
            Op::Shutdown => self.guest_shutdown(slot, hdr.flags()),
            Op::Rst => {
                log::debug!("guest reset {key:?}");
                self.remove_conn(slot, "reset by the guest");
            }
        }
        // Any guest packet may have opened credit or established the connection.
        self.mark_rx(slot);
    }

    pub(super) fn guest_connect(&mut self, hdr: &PacketHeader, key: ConnKey) {
        if self.conns.len() >= self.cfg.max_connections {
            crate::log_limited!(
                Warn,
                "guest connect to port {} refused: {} connections open (max-connections)",
                key.host_port,
                self.conns.len()
            );
            self.reply_rst(hdr);
            return;
        }
        let limits = self
            .limits
            .as_ref()
            .map(|l| l.limits(key.host_port))
            .unwrap_or_default();
        if limits.max_connections > 0 {
            let open = self
                .conns
                .iter()
                .filter(|c| c.key.host_port == key.host_port && !c.host_initiated())
                .count();
            if open >= limits.max_connections as usize {
                crate::log_limited!(
                    Warn,
                    "guest connect to port {} refused: {open} connections open (policy limit {})",
                    key.host_port,
                    limits.max_connections
                );
                self.reply_rst(hdr);
                return;
            }
        }
        let buf_alloc = if limits.buf_alloc > 0 {
            limits.buf_alloc
        } else {
            self.cfg.buf_alloc
        };
        let mut conn = Connection::new(
            key,
            hdr.kind(),
            // With a control plane the route is asked for first (answered in apply_route).
            ConnState::peer_init(Instant::now(), self.host_router.is_some()),
            buf_alloc,
        );
        conn.peer_credit(hdr.buf_alloc(), hdr.fwd_cnt());
        let slot = self.conns.insert(conn);
        self.stats.connections_opened += 1;
        match &self.host_router {
            Some(router) => router.request(key),
            None => self.retry_host_connect(slot),
        }
    }

    /// Connects a guest-initiated connection to `<uds-path>_<port>`.
    pub(super) fn retry_host_connect(&mut self, slot: u32) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let path = unix::port_path(&self.cfg.uds_path, conn.key.host_port);
        let sock_type = if conn.is_seqpacket() {
            libc::SOCK_SEQPACKET
        } else {
            libc::SOCK_STREAM
        };
        if unix::is_own_socket(&path) {
            self.refuse_own_socket(slot, &path);
            return;
        }
        match unix::connect(&path, sock_type) {
            Ok(Connect::Connected(sock)) => {
                if !unix::peer_is_this_process(&sock).is_ok_and(|own| !own) {
                    // A confused deputy otherwise: the guest would speak to the control plane
                    // or another VM's sockets with the plugin's own identity.
                    self.refuse_own_socket(slot, &path);
                    return;
                }
                if !self.watch_host(&sock, slot, false) {
                    self.reset_conn(slot);
                    return;
                }
                let Some(conn) = self.conns.get_mut(slot) else {
                    return;
                };
                conn.attach_host(sock);
                self.established(slot);
            }
            Ok(Connect::Busy) => {}
            Err(e) => {
                crate::log_limited!(
                    Info,
                    "guest connect to {} failed: {e}; reset",
                    path.display()
                );
                self.reset_conn(slot);
            }
        }
    }

    /// A guest connection that would reach one of the plugin's own sockets (its control plane,
    /// another VM's sockets) is reset: the plugin never acts as a deputy for the guest there.
    fn refuse_own_socket(&mut self, slot: u32, path: &std::path::Path) {
        crate::log_limited!(
            Warn,
            "guest connect to {} refused: it is one of the plugin's own sockets",
            path.display()
        );
        self.reset_conn_because(slot, "target is one of the plugin's own sockets");
    }

    pub(super) fn guest_accepted(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.state.is_local_init() {
            crate::log_limited!(Warn, "unexpected RESPONSE for {:?}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        let line = conn.take_ok_line();
        let written = conn
            .host()
            .map(|s| crate::vsock::connection::send(s, &line));
        if !matches!(written, Some(Ok(n)) if n == line.len()) {
            crate::log_limited!(Info, "host client of {:?} went away before OK", conn.key);
            self.reset_conn(slot);
            return;
        }
        self.established(slot);
    }

    fn guest_data(
        &mut self,
        slot: u32,
        hdr: &PacketHeader,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        batch: &mut TxBatch,
    ) {
        let len = hdr.len() as usize;
        let target = (slot, self.conns.generation(slot));
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.is_established() && !conn.state.is_closing() {
            crate::log_limited!(
                Warn,
                "RW before the connection {:?} was established; reset",
                conn.key
            );
            self.reset_conn(slot);
            return;
        }
        if !conn.state.guest_may_send() {
            crate::log_limited!(Info, "data on {:?} after shutdown; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        if !conn.accept_from_guest(len) {
            crate::log_limited!(Warn, "guest overran the credit of {:?}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        let stream_data = !conn.is_seqpacket() && len > 0;
        if stream_data
            && (batch.target.is_some_and(|t| t != target) || batch.bytes + len > MAX_BATCH_BYTES)
        {
            // Flushed before deciding how this packet goes: a flush that comes up short queues
            // the rest of the batch, and this packet must then queue behind it, not be batched
            // (or queued) ahead of bytes still in the batch.
            self.flush_tx_batch(batch, mem);
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.may_write_direct() && len > 0 {
            // Straight from guest memory, gathered with the connection's previous packets.
            if let Err(e) = chain.readable.ranges(HEADER_SIZE, len, &mut batch.ranges) {
                crate::log_limited!(Warn, "tx payload of {slot} unreadable: {e}; reset");
                self.reset_conn(slot);
                return;
            }
            batch.target = Some(target);
            batch.bytes += len;
            return;
        }
        let result = if conn.is_seqpacket() {
            let eom = hdr.flags() & seq::EOM != 0;
            conn.queue_message_part(len, eom, |buf| {
                chain.readable.read_at(mem, HEADER_SIZE, buf)
            })
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|_| conn.flush_to_host())
        } else {
            queue_stream(conn, chain, mem, len)
        };
        if let Err(e) = result {
            crate::log_limited!(Info, "host side of {:?} failed: {e}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        if !conn.is_host_writable() {
            self.out_dirty.push(slot);
        }
        if conn.credit_update_worthwhile() {
            let (key, k) = (conn.key, conn.kind);
            self.queue_credit_update(slot, key, k);
        }
    }

    pub(super) fn guest_shutdown(&mut self, slot: u32, flags: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.state.guest_shutdown(flags) {
            // The guest is closing: flush what we hold, then RST to complete its close.
            let _ = conn.flush_to_host();
            if !conn.has_queued_for_host() {
                self.reset_conn(slot);
            } else {
                conn.state.start_closing(Instant::now());
                self.out_dirty.push(slot);
            }
        } else {
            conn.propagate_guest_shutdown();
        }
    }
}

/// Guest → host payloads of one stream connection gathered during a tx pass, sent with one
/// `sendmsg` (a 4 KiB-write workload otherwise costs one syscall and one host wake-up per
/// packet). It names guest buffers by address only; they stay the guest's until
/// [`VsockDevice::process_tx`] returns their chains, which it does only after flushing.
#[derive(Default)]
struct TxBatch {
    /// (slot, generation) of the connection the bytes belong to.
    target: Option<(u32, u32)>,
    bytes: usize,
    ranges: Vec<(GuestAddress, usize)>,
}
