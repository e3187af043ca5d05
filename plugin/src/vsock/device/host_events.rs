//! Host-side events: hybrid clients and their CONNECT lines, readiness of host sockets, timers.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EventSet};

use super::interests::{Source, GEN_MASK};
use super::{
    host_connection_limit, PendingClient, VsockDevice, ACCEPT_BATCH, ACCEPT_RETRY, CONTROL_BACKLOG,
    LOCAL_PORT_END, LOCAL_PORT_FIRST, MAX_PENDING_CLIENTS,
};
use crate::config::OkReply;
use crate::host::connect_line::{ConnectLine, LineState};
use crate::vsock::connection::Connection;
use crate::vsock::csm::ConnState;
use crate::vsock::packet::{kind, Op};
use crate::vsock::status::{ConnKey, State};

impl VsockDevice {
    // ----- events -----------------------------------------------------------------------------

    /// An event for one of the device's registrations (`token` is a device token, see
    /// [`super::interests::is_device_token`]). `running`: the guest's rx queue is live, so host
    /// clients may connect.
    pub fn handle_event(&mut self, token: u64, events: EventSet, running: bool) {
        if let Some(source) = Source::decode(token) {
            self.dispatch(source, events, running);
        }
    }

    /// One event. An event whose generation is not its slot's current one belongs to an
    /// earlier occupant (closed and replaced within the same batch): it is dropped.
    pub(super) fn dispatch(&mut self, source: Source, events: EventSet, running: bool) {
        match source {
            Source::HybridListener => self.accept_clients(),
            Source::Client { id, generation } => {
                let current = self.clients.get(id as usize).and_then(Option::as_ref);
                if current.is_some_and(|c| c.generation & GEN_MASK == generation) {
                    self.client_readable(id, running);
                }
            }
            Source::Conn { slot, generation } => {
                if self.conns.get(slot).is_some()
                    && self.conns.generation(slot) & GEN_MASK == generation
                {
                    self.host_event(slot, events);
                }
            }
        }
    }

    /// The hybrid listener is readable: accept every waiting host client.
    ///
    /// At most [`MAX_PENDING_CLIENTS`] clients may be waiting for their CONNECT line: a newcomer
    /// beyond that closes the oldest waiting one (an idle client costs its own kind, never the
    /// fds of the process). When `accept` fails for want of a resource (`EMFILE`, `ENFILE`,
    /// `ENOMEM`...) the listener leaves the epoll set for [`ACCEPT_RETRY`] (a level-triggered
    /// listener would fire again at once: a spin) and new clients wait in the kernel's backlog.
    fn accept_clients(&mut self) {
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
                    self.admit_client(sock);
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
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    /// Takes a new host client into the pending set, closing the oldest one when it is full.
    fn admit_client(&mut self, sock: UnixStream) {
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
        let generation = self.next_client_generation;
        self.next_client_generation = generation.wrapping_add(1);
        if let Err(e) = self
            .interests
            .watch_client(sock.as_raw_fd(), id as u32, generation)
        {
            crate::log_limited!(Warn, "cannot watch host client: {e}");
            return;
        }
        self.clients[id] = Some(PendingClient {
            sock,
            line: ConnectLine::default(),
            since: Instant::now(),
            generation,
        });
    }

    fn pause_accepting(&mut self) {
        self.interests.unwatch(self.hybrid.as_raw_fd());
        self.accept_paused_until = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// Puts the listener back into the epoll set once the pause is over (from the timer).
    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_none_or(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        if let Err(e) = self.interests.watch_listener(self.hybrid.as_raw_fd()) {
            crate::log_limited!(Warn, "cannot watch {}: {e}", self.cfg.uds_path.display());
            self.accept_paused_until = Some(now + ACCEPT_RETRY);
            return;
        }
        self.accept_clients();
    }

    /// A host client that has not finished its CONNECT line sent something.
    fn client_readable(&mut self, id: u32, running: bool) {
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
                self.host_connect(client.sock, port, rest, running);
            }
        }
    }

    pub(super) fn host_connect(
        &mut self,
        sock: UnixStream,
        guest_port: u32,
        rest: Vec<u8>,
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
            ConnState::local_init(Instant::now()),
            self.cfg.buf_alloc,
        );
        let ok_port = match self.cfg.ok_reply {
            OkReply::GuestPort => guest_port,
            OkReply::HostPort => host_port,
        };
        conn.opened_by_host_client(format!("OK {ok_port}\n").into_bytes(), &rest);
        let slot = self.conns.insert(conn);
        self.host_initiated_open += 1;
        if !self.watch_host(&sock, slot, true) {
            self.remove_conn(slot, "cannot watch the host socket");
            return;
        }
        if let Some(c) = self.conns.get_mut(slot) {
            c.attach_host(sock);
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

    /// Watches a connection's host socket under the slot's current generation: readable, read
    /// hang-up; writable only once a write came up short (see [`Self::sync_host_interest`]).
    /// `was_client`: it is the socket of a host client that sent its CONNECT line (already in
    /// the set).
    pub(super) fn watch_host(&self, sock: &UnixStream, slot: u32, was_client: bool) -> bool {
        let op = if was_client {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        self.host_interest(op, sock, slot, false)
    }

    fn host_interest(&self, op: ControlOperation, sock: &UnixStream, slot: u32, out: bool) -> bool {
        let generation = self.conns.generation(slot);
        let res = self
            .interests
            .watch_conn(op, sock.as_raw_fd(), slot, generation, out);
        if let Err(e) = res {
            crate::log_limited!(Warn, "cannot watch host socket: {e}");
            return false;
        }
        true
    }

    /// Brings the EPOLLOUT interest of the connections noted this round in line with their
    /// state: watched exactly while a write came up short (`host_writable` false).
    pub fn sync_host_interest(&mut self) {
        for slot in std::mem::take(&mut self.out_dirty) {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            let Some(want) = conn.out_interest_change() else {
                continue;
            };
            let Some(sock) = conn.host() else {
                continue;
            };
            if self.host_interest(ControlOperation::Modify, sock, slot, want) {
                // Added with EPOLLET, the socket's current writability is reported at once.
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.note_out_watched(want);
                }
            }
        }
    }

    /// Readiness of a connection's host socket changed.
    fn host_event(&mut self, slot: u32, events: EventSet) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.note_readable();
        }
        if events.contains(EventSet::OUT) {
            conn.note_writable();
            self.out_dirty.push(slot);
        }
        let hup = events.contains(EventSet::HANG_UP);
        let rdhup = events.contains(EventSet::READ_HANG_UP);
        // Host closed outright after an earlier half-close: the guest must learn RCV too.
        if let Some(flags) = conn.state.host_hung_up(hup, rdhup) {
            let (key, k) = (conn.key, conn.kind);
            self.queue_control(self.ends(key), k, Op::Shutdown, flags);
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
        if let Err(e) = conn.flush_to_host() {
            crate::log_limited!(Info, "host socket of {:?} failed: {e}", conn.key);
            self.reset_conn(slot);
            return;
        }
        conn.propagate_guest_shutdown();
        let closing_done = conn.guest_close_flushed();
        let update = conn.credit_update_worthwhile();
        let (key, k) = (conn.key, conn.kind);
        if closing_done {
            self.reset_conn(slot);
        } else if update {
            self.queue_credit_update(slot, key, k);
        }
    }

    /// Periodic work: timeouts and retries. Returns whether anything is still timed.
    pub fn on_tick(&mut self) -> bool {
        let now = Instant::now();
        self.resume_accepting(now);
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
            match conn.state.state() {
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
                    if !conn.state.awaiting_route() {
                        self.retry_host_connect(slot);
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
