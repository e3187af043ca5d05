//! Host-side events: hybrid clients and their CONNECT lines, readiness of host sockets, timers.

use super::*;

impl VsockDevice {
    // ----- events -----------------------------------------------------------------------------

    /// The hybrid listener is readable: accept every waiting host client.
    ///
    /// At most [`MAX_PENDING_CLIENTS`] clients may be waiting for their CONNECT line: a newcomer
    /// beyond that closes the oldest waiting one (an idle client costs its own kind, never the
    /// fds of the process). When `accept` fails for want of a resource (`EMFILE`, `ENFILE`,
    /// `ENOMEM`...) the listener leaves the epoll set for [`ACCEPT_RETRY`] (a level-triggered
    /// listener would fire again at once: a spin) and new clients wait in the kernel's backlog.
    pub fn accept_clients(&mut self, ep: &Epoll) {
        if self.accept_paused_until.is_some() {
            return;
        }
        // A bounded batch: the listener is level-triggered, so the rest waits for the next round
        // of the event loop and a connect flood cannot starve the VM's data path.
        for _ in 0..ACCEPT_BATCH {
            match self.hybrid.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.admit_client(sock, ep);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
                    ) =>
                {
                    // That one client's problem (it left before we took it): next one.
                    crate::log_limited!(
                        Info,
                        "accept on {} failed: {e}",
                        self.cfg.uds_path.display()
                    );
                }
                Err(e) => {
                    crate::log_limited!(
                        Warn,
                        "accept on {} failed: {e}; not accepting for {:?}",
                        self.cfg.uds_path.display(),
                        ACCEPT_RETRY
                    );
                    self.pause_accepting(ep);
                    return;
                }
            }
        }
    }

    /// Takes a new host client into the pending set, closing the oldest one when it is full.
    fn admit_client(&mut self, sock: UnixStream, ep: &Epoll) {
        let pending = self.clients.iter().filter(|c| c.is_some()).count();
        if pending >= MAX_PENDING_CLIENTS {
            let oldest = self
                .clients
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.since)))
                .min_by_key(|(_, since)| *since)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                crate::log_limited!(
                    Info,
                    "{MAX_PENDING_CLIENTS} host clients wait for a CONNECT line on {}; \
                     closing the oldest",
                    self.cfg.uds_path.display()
                );
                self.clients[i] = None;
            }
        }
        let id = match self.clients.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        let ev = EventSet::IN | EventSet::READ_HANG_UP;
        if let Err(e) = ep.ctl(
            ControlOperation::Add,
            sock.as_raw_fd(),
            EpollEvent::new(ev, token::host_client(id as u32)),
        ) {
            crate::log_limited!(Warn, "cannot watch host client: {e}");
            return;
        }
        self.clients[id] = Some(PendingClient {
            sock,
            line: ConnectLine::default(),
            since: Instant::now(),
        });
    }

    fn pause_accepting(&mut self, ep: &Epoll) {
        let _ = ep.ctl(
            ControlOperation::Delete,
            self.hybrid.as_raw_fd(),
            EpollEvent::default(),
        );
        self.accept_paused_until = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// Puts the listener back into the epoll set once the pause is over (from the timer).
    fn resume_accepting(&mut self, ep: &Epoll, now: Instant) {
        if self.accept_paused_until.is_none_or(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        if let Err(e) = ep.ctl(
            ControlOperation::Add,
            self.hybrid.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token::Token::HybridListener.encode()),
        ) {
            crate::log_limited!(Warn, "cannot watch {}: {e}", self.cfg.uds_path.display());
            self.accept_paused_until = Some(now + ACCEPT_RETRY);
            return;
        }
        self.accept_clients(ep);
    }

    /// A host client that has not finished its CONNECT line sent something.
    pub fn client_readable(&mut self, id: u32, ep: &Epoll, running: bool) {
        let Some(Some(client)) = self.clients.get_mut(id as usize) else {
            return;
        };
        let mut buf = [0u8; 256];
        let state = match (&client.sock).read_some(&mut buf) {
            Ok(0) => LineState::Invalid("client closed before sending a CONNECT line".into()),
            Ok(n) => client.line.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => LineState::Invalid(e.to_string()),
        };
        match state {
            LineState::Incomplete => {}
            LineState::Invalid(why) => {
                crate::log_limited!(Info, "host client dropped: {why}");
                self.clients[id as usize] = None;
            }
            LineState::Connect { port, rest } => {
                let Some(client) = self.clients[id as usize].take() else {
                    return;
                };
                self.host_connect(client.sock, port, rest, ep, running);
            }
        }
    }

    pub(super) fn host_connect(
        &mut self,
        sock: UnixStream,
        guest_port: u32,
        rest: Vec<u8>,
        ep: &Epoll,
        running: bool,
    ) {
        if !running {
            crate::log_limited!(
                Info,
                "host connect to guest port {guest_port} refused: the device is not running"
            );
            return;
        }
        let host_limit = host_connection_limit(self.cfg.max_connections);
        if self.conns.len() >= self.cfg.max_connections || self.host_initiated_open >= host_limit {
            crate::log_limited!(
                Warn,
                "host connect to guest port {guest_port} refused: {} connections open, {} of \
                 them from host clients (at most {host_limit}: the rest is kept for the guest)",
                self.conns.len(),
                self.host_initiated_open
            );
            return;
        }
        if self.control.len() >= CONTROL_BACKLOG {
            // The guest is not taking control packets: do not queue more REQUESTs for it.
            crate::log_limited!(
                Warn,
                "host connect to guest port {guest_port} refused: {} control packets wait \
                 for the guest's rx buffers",
                self.control.len()
            );
            return;
        }
        let Some(host_port) = self.allocate_local_port(guest_port) else {
            crate::log_limited!(Warn, "no free local port for guest port {guest_port}");
            return;
        };
        let key = ConnKey {
            host_port,
            guest_port,
        };
        let mut conn = Connection::new(
            key,
            kind::STREAM,
            State::LocalInit {
                since: Instant::now(),
            },
            None,
            self.cfg.buf_alloc,
        );
        let ok_port = match self.cfg.ok_reply {
            OkReply::GuestPort => guest_port,
            OkReply::HostPort => host_port,
        };
        conn.ok_line = Some(format!("OK {ok_port}\n").into_bytes());
        conn.host_initiated = true;
        conn.rx_pending.extend(rest);
        let slot = self.conns.insert(conn);
        self.host_initiated_open += 1;
        if !self.watch_host(ep, &sock, slot, ControlOperation::Modify) {
            self.remove_conn(slot, "cannot watch the host socket");
            return;
        }
        if let Some(c) = self.conns.get_mut(slot) {
            c.host = Some(sock);
        }
        self.queue_control(self.ends(key), kind::STREAM, Op::Request, 0);
        self.stats.connections_opened += 1;
    }

    pub(super) fn allocate_local_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..(LOCAL_PORT_END - LOCAL_PORT_FIRST) {
            let p = self.next_local_port;
            self.next_local_port = if p + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_FIRST
            } else {
                p + 1
            };
            let in_use = self.conns.contains(&ConnKey {
                host_port: p,
                guest_port,
            });
            if !in_use && !self.restored.holds_port(p) {
                return Some(p);
            }
        }
        None
    }

    pub(super) fn watch_host(
        &self,
        ep: &Epoll,
        sock: &UnixStream,
        slot: u32,
        op: ControlOperation,
    ) -> bool {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        let res = ep.ctl(
            op,
            sock.as_raw_fd(),
            EpollEvent::new(ev, token::host_conn(slot)),
        );
        if let Err(e) = res {
            crate::log_limited!(Warn, "cannot watch host socket: {e}");
            return false;
        }
        true
    }

    /// Readiness of a connection's host socket changed.
    pub fn host_event(&mut self, slot: u32, events: EventSet) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.host_readable = true;
        }
        if events.contains(EventSet::HANG_UP) {
            conn.host_hup = true;
        }
        if events.contains(EventSet::READ_HANG_UP) {
            conn.host_rdhup = true;
        }
        if events.contains(EventSet::OUT) {
            conn.host_writable = true;
        }
        // Host closed outright after an earlier half-close: the guest must learn RCV too.
        if conn.host_hup
            && conn.host_eof
            && conn.host_shut_sent & shutdown::RCV == 0
            && conn.is_established()
        {
            conn.state = State::Closing {
                since: Instant::now(),
            };
            let key = conn.key;
            let k = conn.kind;
            conn.host_shut_sent = shutdown::BOTH;
            self.queue_control(self.ends(key), k, Op::Shutdown, shutdown::BOTH);
        }
        if events.contains(EventSet::OUT) {
            self.flush_host(slot);
        }
        self.mark_rx(slot);
    }

    pub(super) fn flush_host(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if let Err(e) = conn.flush_tx() {
            crate::log_limited!(Info, "host socket of {:?} failed: {e}", conn.key);
            self.reset_conn(slot);
            return;
        }
        conn.propagate_guest_shutdown();
        let closing_done = conn.guest_shut == shutdown::BOTH && conn.tx_queue.is_empty();
        let update = conn.credit.update_worthwhile();
        let (key, k) = (conn.key, conn.kind);
        if closing_done {
            self.reset_conn(slot);
        } else if update {
            self.queue_credit_update(slot, key, k);
        }
    }

    /// Periodic work: timeouts and retries. Returns whether anything is still timed.
    pub fn on_tick(&mut self, ep: &Epoll) -> bool {
        let now = Instant::now();
        self.resume_accepting(ep, now);
        for c in self.clients.iter_mut() {
            if c.as_ref()
                .is_some_and(|c| now.duration_since(c.since) >= self.cfg.connect_line_timeout)
            {
                crate::log_limited!(
                    Info,
                    "host client sent no CONNECT line within {:?}; closing it",
                    self.cfg.connect_line_timeout
                );
                *c = None;
            }
        }
        let mut timed =
            self.clients.iter().any(Option::is_some) || self.accept_paused_until.is_some();
        for slot in self.conns.slots_from(0) {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            match conn.state {
                State::LocalInit { since } | State::PeerInit { since }
                    if now.duration_since(since) >= self.cfg.connect_timeout =>
                {
                    crate::log_limited!(
                        Info,
                        "connection {:?} not established within {:?}; reset",
                        conn.key,
                        self.cfg.connect_timeout
                    );
                    self.reset_conn(slot);
                }
                State::Closing { since }
                    if now.duration_since(since) >= self.cfg.shutdown_timeout =>
                {
                    crate::log_limited!(
                        Info,
                        "connection {:?} not closed within {:?}; reset",
                        conn.key,
                        self.cfg.shutdown_timeout
                    );
                    self.reset_conn(slot);
                }
                State::PeerInit { .. } => {
                    timed = true;
                    if !conn.route_pending {
                        self.retry_host_connect(slot, ep);
                    }
                }
                State::LocalInit { .. } | State::Closing { .. } => timed = true,
                State::Established => {}
            }
        }
        timed
    }
}

/// `read_some` for `&UnixStream` without pulling `Read` into every caller.
pub(super) trait ReadSome {
    fn read_some(self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadSome for &UnixStream {
    fn read_some(self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        let mut s = self;
        s.read(buf)
    }
}
