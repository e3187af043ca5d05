//! The tx queue: packets from the guest, to host connections or sibling VMs.

use super::*;

impl VsockDevice {
    // ----- tx: guest → device ------------------------------------------------------------------

    /// Processes the tx queue until it is empty or back-pressured.
    ///
    /// Used-ring entries of a pass are returned at its end: until then the guest does not reuse
    /// those buffers, which lets consecutive RW packets of one connection go to the host socket
    /// in a single `sendmsg` straight from guest memory (see [`TxBatch`]).
    pub fn process_tx(&mut self, rings: &mut Rings, ep: &Epoll) {
        self.drain_parked();
        let mem = rings.mem;
        loop {
            let tx = &mut rings.vrings[TX_QUEUE];
            if !tx.is_ready() {
                return;
            }
            tx.disable_notification(mem);
            self.tx_paused = false;
            let mut heads: Vec<u16> = Vec::new();
            loop {
                if self.control.len() >= CONTROL_BACKLOG {
                    self.tx_paused = true;
                    break;
                }
                if heads.len() >= MAX_HELD_CHAINS {
                    self.return_tx_chains(rings, &mut heads);
                }
                let Some(chain) = rings.vrings[TX_QUEUE].pop(mem) else {
                    break;
                };
                self.handle_tx_chain(&chain, mem, ep);
                heads.push(chain.head);
            }
            let used_any = !heads.is_empty();
            self.return_tx_chains(rings, &mut heads);
            let tx = &mut rings.vrings[TX_QUEUE];
            if used_any {
                tx.notify(mem);
            }
            if self.tx_paused || !tx.enable_notification(mem) {
                return;
            }
        }
    }

    /// Sends what is batched, then hands the chains of this pass back to the guest.
    fn return_tx_chains(&mut self, rings: &mut Rings, heads: &mut Vec<u16>) {
        self.flush_tx_batch();
        for head in heads.drain(..) {
            rings.vrings[TX_QUEUE].add_used(rings.mem, head, 0);
        }
    }

    /// Writes the batched payloads with one `sendmsg`; what the socket does not take is copied
    /// into the connection's queue (the guest buffers are about to be returned).
    pub(super) fn flush_tx_batch(&mut self) {
        let Some(slot) = self.tx_batch.slot.take() else {
            return;
        };
        let bytes = std::mem::take(&mut self.tx_batch.bytes);
        let iov = std::mem::take(&mut self.tx_batch.iov.0);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let result = match conn.host.as_ref() {
            // SAFETY: the iovecs point into guest buffers of chains not yet returned to the guest,
            // in memory kept mapped for this pass (see process_tx).
            Some(sock) => unsafe { writev_nosignal(sock.as_raw_fd(), &iov) },
            None => Ok(0),
        };
        let done = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                crate::log_limited!(Info, "host side of {:?} failed: {e}; reset", conn.key);
                self.reset_conn(slot);
                return;
            }
        };
        conn.credit.fwd_cnt = conn.credit.fwd_cnt.wrapping_add(done as u32);
        if done < bytes {
            conn.host_writable = false;
            // SAFETY: as above; the copy reads only within the iovecs.
            conn.tx_queue.push(unsafe { copy_from_iovecs(&iov, done) });
        }
        self.tx_batch.iov.0 = iov;
        self.tx_batch.iov.0.clear();
        if conn.credit.update_worthwhile() {
            let (key, k) = (conn.key, conn.kind);
            self.queue_credit_update(slot, key, k);
        }
    }

    pub fn tx_paused(&self) -> bool {
        self.tx_paused
    }

    pub(super) fn handle_tx_chain(&mut self, chain: &ChainBuffers, mem: &DeviceMemory, ep: &Epoll) {
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
                self.handle_host_packet(&hdr, op, chain, mem, ep);
            }
            dst => {
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

    pub(super) fn handle_host_packet(
        &mut self,
        hdr: &PacketHeader,
        op: Op,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        ep: &Epoll,
    ) {
        let key = ConnKey {
            host_port: hdr.dst_port(),
            guest_port: hdr.src_port(),
        };
        let Some(slot) = self.conns.slot_of(&key) else {
            match op {
                Op::Request => {
                    self.restored.forget(&key);
                    self.guest_connect(hdr, key, ep)
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
        if op != Op::Rw && self.tx_batch.slot == Some(slot) {
            // Keep the order: batched data goes out before a SHUTDOWN, RST or anything else.
            self.flush_tx_batch();
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.kind != hdr.kind() {
            crate::log_limited!(Warn, "connection {key:?} changed socket type; reset");
            self.reset_conn(slot);
            return;
        }
        conn.credit.update_from_peer(hdr.buf_alloc(), hdr.fwd_cnt());
        if conn.credit.peer_free() > 0 {
            conn.credit_requested = false;
        }
        match op {
            Op::Request => {
                crate::log_limited!(Warn, "duplicate REQUEST for {key:?}; reset");
                self.reset_conn(slot);
            }
            Op::Response => self.guest_accepted(slot),
            Op::Rw => self.guest_data(slot, hdr, chain, mem),
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

    pub(super) fn guest_connect(&mut self, hdr: &PacketHeader, key: ConnKey, ep: &Epoll) {
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
                .filter(|c| c.key.host_port == key.host_port && !c.host_initiated)
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
            State::PeerInit {
                since: Instant::now(),
            },
            None,
            buf_alloc,
        );
        conn.credit.update_from_peer(hdr.buf_alloc(), hdr.fwd_cnt());
        conn.route_pending = self.host_router.is_some();
        let slot = self.conns.insert(conn);
        self.stats.connections_opened += 1;
        match &self.host_router {
            Some(router) => router.request(key),
            None => self.retry_host_connect(slot, ep),
        }
    }

    /// Connects a guest-initiated connection to `<uds-path>_<port>`.
    pub(super) fn retry_host_connect(&mut self, slot: u32, ep: &Epoll) {
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
                if !self.watch_host(ep, &sock, slot, ControlOperation::Add) {
                    self.reset_conn(slot);
                    return;
                }
                let Some(conn) = self.conns.get_mut(slot) else {
                    return;
                };
                conn.host = Some(sock);
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
        if !matches!(conn.state, State::LocalInit { .. }) {
            crate::log_limited!(Warn, "unexpected RESPONSE for {:?}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        let line = conn.ok_line.take().unwrap_or_default();
        let written = conn
            .host
            .as_ref()
            .map(|s| crate::vsock::connection::send(s, &line));
        if !matches!(written, Some(Ok(n)) if n == line.len()) {
            crate::log_limited!(Info, "host client of {:?} went away before OK", conn.key);
            self.reset_conn(slot);
            return;
        }
        self.established(slot);
    }

    pub(super) fn guest_data(
        &mut self,
        slot: u32,
        hdr: &PacketHeader,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
    ) {
        let len = hdr.len() as usize;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.is_established() && !matches!(conn.state, State::Closing { .. }) {
            crate::log_limited!(
                Warn,
                "RW before the connection {:?} was established; reset",
                conn.key
            );
            self.reset_conn(slot);
            return;
        }
        if conn.guest_shut & shutdown::SEND != 0 || conn.host_hup {
            crate::log_limited!(Info, "data on {:?} after shutdown; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        conn.bytes_from_guest += len as u64;
        if !conn.credit.accept_from_peer(len as u32) {
            crate::log_limited!(Warn, "guest overran the credit of {:?}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        if !conn.is_seqpacket() && conn.tx_queue.is_empty() && conn.host_writable && len > 0 {
            // Straight from guest memory, gathered with the connection's previous packets.
            if self.tx_batch.slot.is_some_and(|s| s != slot)
                || self.tx_batch.bytes + len > MAX_BATCH_BYTES
            {
                self.flush_tx_batch();
            }
            let mut piece = Vec::new();
            if let Err(e) =
                chain
                    .readable
                    .iovecs(mem, HEADER_SIZE, len, Permissions::Read, &mut piece)
            {
                crate::log_limited!(Warn, "tx payload of {slot} unreadable: {e}; reset");
                self.reset_conn(slot);
                return;
            }
            self.tx_batch.slot = Some(slot);
            self.tx_batch.bytes += len;
            self.tx_batch.iov.0.extend_from_slice(&piece);
            return;
        }
        let result = if conn.is_seqpacket() {
            let start = conn.seq_partial.len();
            conn.seq_partial.resize(start + len, 0);
            let r = chain
                .readable
                .read_at(mem, HEADER_SIZE, &mut conn.seq_partial[start..]);
            if r.is_ok() && hdr.flags() & seq::EOM != 0 {
                let msg = std::mem::take(&mut conn.seq_partial);
                conn.tx_queue.push(msg);
            }
            r.map_err(|e| io::Error::other(e.to_string()))
                .and_then(|_| conn.flush_tx())
        } else {
            queue_stream(conn, chain, mem, len)
        };
        if let Err(e) = result {
            crate::log_limited!(Info, "host side of {:?} failed: {e}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        if conn.credit.update_worthwhile() {
            let (key, k) = (conn.key, conn.kind);
            self.queue_credit_update(slot, key, k);
        }
    }

    pub(super) fn guest_shutdown(&mut self, slot: u32, flags: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.guest_shut |= flags & shutdown::BOTH;
        if conn.guest_shut == shutdown::BOTH {
            // The guest is closing: flush what we hold, then RST to complete its close.
            let _ = conn.flush_tx();
            if conn.tx_queue.is_empty() {
                self.reset_conn(slot);
            } else {
                conn.state = State::Closing {
                    since: Instant::now(),
                };
            }
        } else {
            conn.propagate_guest_shutdown();
        }
    }
}
