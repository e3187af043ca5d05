//! The vsock device of one VM: it moves packets between the guest's virtqueues and host
//! connections (hybrid Unix sockets) or sibling VMs.
//!
//! Queue rules:
//! - tx (guest → device): every chain is returned to the used ring with length 0, whatever its
//!   fate; a malformed packet is dropped with a log line (and an RST when it names a connection).
//!   A chain with descriptors outside guest memory breaks the queue (see `Vring`). The tx queue is
//!   paused, never dropped, when the rx side is backed up (control backlog, full sibling inbox).
//! - rx (device → guest): control packets first (they are small and unblock the guest), then
//!   sibling packets, then connection data round-robin. A packet never exceeds the guest's buffer
//!   nor its credit; an rx chain is taken only when something is ready to go into it.
//! - event: TRANSPORT_RESET is posted when the event queue starts after the device lost its
//!   connections (reset or a new frontend), so the guest resets its sockets.
//! - While a ring is disabled it is not processed at all (tx chains stay in the ring until enable).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::Permissions;

use crate::iotlb::DeviceMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn_table::ConnTable;
use super::connection::{ConnKey, Connection, State};
use super::packet::{kind, seq, shutdown, Endpoints, Op, PacketHeader, HEADER_SIZE, HOST_CID};
use crate::config::OkReply;
use crate::host::connect_line::{ConnectLine, LineState};
use crate::host::route::{ConnectionEvents, HostRoute, RouteRequests};
use crate::host::sibling::{Delivery, SiblingPort, SiblingRouter};
use crate::host::unix::{self, Connect};
use crate::vhost_user::features::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::virtqueue::chain::ChainBuffers;
use crate::virtqueue::vring::Vring;
use crate::worker::token;

/// Largest payload of one packet we build (the virtio-vsock maximum, 64 KiB).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Control packets waiting for rx buffers before the tx queue pauses.
const CONTROL_BACKLOG: usize = 1024;
/// First host-side port for host-initiated connections (Firecracker's range, 2^30 .. 2^31).
const LOCAL_PORT_FIRST: u32 = 1 << 30;
const LOCAL_PORT_END: u32 = 1 << 31;
/// Event id of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Settings the device needs from the VM's configuration.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub buf_alloc: u32,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub connect_line_timeout: Duration,
    pub ok_reply: OkReply,
}

/// The rings and memory of the current frontend session, lent to the device for one operation.
pub struct Rings<'a> {
    pub mem: &'a DeviceMemory,
    pub vrings: &'a mut [Vring],
}

/// A header-only packet waiting for an rx buffer. Credit fields are filled when it is sent.
#[derive(Debug, Clone, Copy)]
struct Control {
    ends: Endpoints,
    kind: u16,
    op: Op,
    flags: u32,
}

/// A host client on `<uds-path>` that has not sent its CONNECT line yet.
struct PendingClient {
    sock: UnixStream,
    line: ConnectLine,
    since: Instant,
}

/// Counters, logged at reset and useful in tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub dropped_packets: u64,
    pub rst_sent: u64,
    pub connections_opened: u64,
}

pub struct VsockDevice {
    cfg: DeviceConfig,
    conns: ConnTable,
    control: VecDeque<Control>,
    clients: Vec<Option<PendingClient>>,
    hybrid: std::os::unix::net::UnixListener,
    next_local_port: u32,
    /// Connections that may have host data for the guest, in round-robin order.
    rx_ready: VecDeque<u32>,
    seqpacket: bool,
    transport_reset_pending: bool,
    ever_started: bool,
    tx_paused: bool,
    router: Arc<SiblingRouter>,
    sibling: Arc<SiblingPort>,
    pub stats: Stats,
    iov: IovecScratch,
    /// Set when a control plane decides where guest connections go.
    host_router: Option<Box<dyn RouteRequests>>,
    events: Option<Box<dyn ConnectionEvents>>,
}

/// One connection as status reports show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub key: ConnKey,
    pub state: State,
    pub host_initiated: bool,
    pub via_service: bool,
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

enum TxOutcome {
    Done,
    /// Leave the chain in the ring and stop processing tx for now.
    Backpressure,
}

impl VsockDevice {
    pub fn new(
        cfg: DeviceConfig,
        hybrid: std::os::unix::net::UnixListener,
        router: Arc<SiblingRouter>,
        sibling: Arc<SiblingPort>,
    ) -> VsockDevice {
        VsockDevice {
            cfg,
            conns: ConnTable::default(),
            control: VecDeque::new(),
            clients: Vec::new(),
            hybrid,
            next_local_port: LOCAL_PORT_FIRST,
            rx_ready: VecDeque::new(),
            seqpacket: false,
            transport_reset_pending: false,
            ever_started: false,
            tx_paused: false,
            router,
            sibling,
            stats: Stats::default(),
            iov: IovecScratch::default(),
            host_router: None,
            events: None,
        }
    }

    /// Attaches a control plane: routing of guest connections and connection events.
    pub fn attach_control(
        &mut self,
        router: Box<dyn RouteRequests>,
        events: Box<dyn ConnectionEvents>,
    ) {
        self.host_router = Some(router);
        self.events = Some(events);
    }

    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        self.conns
            .iter()
            .map(|c| ConnSnapshot {
                key: c.key,
                state: c.state,
                host_initiated: c.host_initiated,
                via_service: c.via_service,
                bytes_from_guest: c.bytes_from_guest,
                bytes_to_guest: c.bytes_to_guest,
                buf_alloc: c.credit.buf_alloc,
                fwd_cnt: c.credit.fwd_cnt,
                peer_buf_alloc: c.credit.peer_buf_alloc,
                peer_fwd_cnt: c.credit.peer_fwd_cnt,
            })
            .collect()
    }

    /// Resets one connection on request (control plane); false if there is none.
    pub fn reset_connection(&mut self, key: ConnKey) -> bool {
        match self.conns.slot_of(&key) {
            Some(slot) => {
                self.reset_conn_because(slot, "reset by the control plane");
                true
            }
            None => false,
        }
    }

    /// The control plane answered where a guest connection goes.
    pub fn apply_route(&mut self, key: ConnKey, route: HostRoute, ep: &Epoll) {
        let Some(slot) = self.conns.slot_of(&key) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.route_pending {
            return;
        }
        conn.route_pending = false;
        match route {
            HostRoute::Unix => self.retry_host_connect(slot, ep),
            HostRoute::Deny(reason) => {
                log::info!("guest connect to port {} denied: {reason}", key.host_port);
                self.reset_conn_because(slot, &reason);
            }
            HostRoute::Stream(sock) => {
                let want = if conn.is_seqpacket() {
                    libc::SOCK_SEQPACKET
                } else {
                    libc::SOCK_STREAM
                };
                let ok = unix::socket_type(&sock).is_ok_and(|t| t == want)
                    && sock.set_nonblocking(true).is_ok();
                if !ok || !self.watch_host(ep, &sock, slot, ControlOperation::Add) {
                    self.reset_conn_because(slot, "the host service's socket has the wrong type");
                    return;
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.via_service = true;
                    conn.host = Some(sock);
                }
                self.established(slot);
            }
        }
    }

    /// A guest-initiated connection reached its host end: RESPONSE to the guest.
    fn established(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.state = State::Established;
        let (key, k, hi, vs) = (conn.key, conn.kind, conn.host_initiated, conn.via_service);
        if !hi {
            self.queue_control(self.ends(key), k, Op::Response, 0);
        }
        if let Some(ev) = &self.events {
            ev.opened(key, hi, vs);
        }
    }

    /// The one place connections leave the table (events see every close).
    fn remove_conn(&mut self, slot: u32, reason: &str) -> Option<Connection> {
        let conn = self.conns.remove(slot)?;
        if let Some(ev) = &self.events {
            ev.closed(conn.key, reason);
        }
        Some(conn)
    }

    pub fn hybrid_listener(&self) -> &std::os::unix::net::UnixListener {
        &self.hybrid
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Features were negotiated: remember whether SEQPACKET is on.
    pub fn set_seqpacket(&mut self, on: bool) {
        self.seqpacket = on;
    }

    /// The device lost its guest-visible state (RESET_DEVICE, frontend gone): close every host
    /// connection (their peers see EOF) and tell the guest at the next start.
    pub fn reset(&mut self) {
        let dropped = self.conns.drain();
        if !dropped.is_empty() {
            log::info!("device reset: closing {} connection(s)", dropped.len());
        }
        if let Some(ev) = &self.events {
            for c in &dropped {
                ev.closed(c.key, "device reset");
            }
        }
        self.control.clear();
        self.tx_paused = false;
        self.sibling.set_running(false);
        if self.ever_started {
            self.transport_reset_pending = true;
        }
    }

    pub fn set_running(&mut self, on: bool) {
        self.sibling.set_running(on);
        if on {
            self.ever_started = true;
        }
    }

    // ----- events -----------------------------------------------------------------------------

    /// The hybrid listener is readable: accept every waiting host client.
    pub fn accept_clients(&mut self, ep: &Epoll) {
        loop {
            match self.hybrid.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
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
                        log::warn!("cannot watch host client: {e}");
                        continue;
                    }
                    self.clients[id] = Some(PendingClient {
                        sock,
                        line: ConnectLine::default(),
                        since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept on {} failed: {e}", self.cfg.uds_path.display());
                    return;
                }
            }
        }
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
                log::info!("host client dropped: {why}");
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

    fn host_connect(
        &mut self,
        sock: UnixStream,
        guest_port: u32,
        rest: Vec<u8>,
        ep: &Epoll,
        running: bool,
    ) {
        if !running {
            log::info!(
                "host connect to guest port {guest_port} refused: the device is not running"
            );
            return;
        }
        if self.conns.len() >= self.cfg.max_connections {
            log::warn!(
                "host connect to guest port {guest_port} refused: {} connections open",
                self.conns.len()
            );
            return;
        }
        let Some(host_port) = self.allocate_local_port(guest_port) else {
            log::warn!("no free local port for guest port {guest_port}");
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

    fn allocate_local_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..(LOCAL_PORT_END - LOCAL_PORT_FIRST) {
            let p = self.next_local_port;
            self.next_local_port = if p + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_FIRST
            } else {
                p + 1
            };
            if !self.conns.contains(&ConnKey {
                host_port: p,
                guest_port,
            }) {
                return Some(p);
            }
        }
        None
    }

    fn watch_host(&self, ep: &Epoll, sock: &UnixStream, slot: u32, op: ControlOperation) -> bool {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        let res = ep.ctl(
            op,
            sock.as_raw_fd(),
            EpollEvent::new(ev, token::host_conn(slot)),
        );
        if let Err(e) = res {
            log::warn!("cannot watch host socket: {e}");
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

    fn flush_host(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if let Err(e) = conn.flush_tx() {
            log::info!("host socket of {:?} failed: {e}", conn.key);
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
        for c in self.clients.iter_mut() {
            if c.as_ref()
                .is_some_and(|c| now.duration_since(c.since) >= self.cfg.connect_line_timeout)
            {
                log::info!(
                    "host client sent no CONNECT line within {:?}; closing it",
                    self.cfg.connect_line_timeout
                );
                *c = None;
            }
        }
        let mut timed = self.clients.iter().any(Option::is_some);
        for slot in self.conns.slots_from(0) {
            let Some(conn) = self.conns.get(slot) else {
                continue;
            };
            match conn.state {
                State::LocalInit { since } | State::PeerInit { since }
                    if now.duration_since(since) >= self.cfg.connect_timeout =>
                {
                    log::info!(
                        "connection {:?} not established within {:?}; reset",
                        conn.key,
                        self.cfg.connect_timeout
                    );
                    self.reset_conn(slot);
                }
                State::Closing { since }
                    if now.duration_since(since) >= self.cfg.shutdown_timeout =>
                {
                    log::info!(
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

    // ----- tx: guest → device ------------------------------------------------------------------

    /// Processes the tx queue until it is empty or back-pressured.
    pub fn process_tx(&mut self, rings: &mut Rings, ep: &Epoll) {
        let mem = rings.mem;
        loop {
            let tx = &mut rings.vrings[TX_QUEUE];
            if !tx.is_ready() {
                return;
            }
            tx.disable_notification(mem);
            let mut used_any = false;
            self.tx_paused = false;
            loop {
                if self.control.len() >= CONTROL_BACKLOG {
                    self.tx_paused = true;
                    break;
                }
                let Some(chain) = rings.vrings[TX_QUEUE].pop(mem) else {
                    break;
                };
                match self.handle_tx_chain(&chain, mem, ep) {
                    TxOutcome::Done => {
                        rings.vrings[TX_QUEUE].add_used(mem, chain.head, 0);
                        used_any = true;
                    }
                    TxOutcome::Backpressure => {
                        rings.vrings[TX_QUEUE].unpop();
                        self.tx_paused = true;
                        break;
                    }
                }
            }
            let tx = &mut rings.vrings[TX_QUEUE];
            if used_any {
                tx.notify(mem);
            }
            if self.tx_paused || !tx.enable_notification(mem) {
                return;
            }
        }
    }

    pub fn tx_paused(&self) -> bool {
        self.tx_paused
    }

    fn handle_tx_chain(
        &mut self,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
        ep: &Epoll,
    ) -> TxOutcome {
        self.stats.tx_packets += 1;
        let mut raw = [0u8; HEADER_SIZE];
        if chain.readable.len() < HEADER_SIZE || chain.readable.read_at(mem, 0, &mut raw).is_err() {
            log::warn!(
                "tx packet of {} bytes is shorter than a header; dropped",
                chain.readable.len()
            );
            self.stats.dropped_packets += 1;
            return TxOutcome::Done;
        }
        let hdr = PacketHeader::from_bytes(&raw);
        let len = hdr.len() as usize;
        if hdr.src_cid() != self.cfg.guest_cid {
            log::warn!(
                "tx packet with src_cid {} from guest {}; dropped",
                hdr.src_cid(),
                self.cfg.guest_cid
            );
            self.stats.dropped_packets += 1;
            return TxOutcome::Done;
        }
        if len > MAX_PKT_PAYLOAD.max(self.cfg.buf_alloc as usize)
            || len > chain.readable.len() - HEADER_SIZE
        {
            log::warn!(
                "tx packet claims {len} payload bytes but carries {}; reset",
                chain.readable.len() - HEADER_SIZE
            );
            self.stats.dropped_packets += 1;
            self.reply_rst(&hdr);
            return TxOutcome::Done;
        }
        let Some(op) = hdr.op() else {
            log::warn!("tx packet with unknown op {}; reset", hdr.op_raw());
            self.reply_rst(&hdr);
            return TxOutcome::Done;
        };
        let type_ok =
            hdr.kind() == kind::STREAM || (hdr.kind() == kind::SEQPACKET && self.seqpacket);
        if !type_ok {
            log::info!(
                "tx packet with socket type {} not supported; reset",
                hdr.kind()
            );
            self.reply_rst(&hdr);
            return TxOutcome::Done;
        }
        match hdr.dst_cid() {
            HOST_CID => {
                self.handle_host_packet(&hdr, op, chain, mem, ep);
                TxOutcome::Done
            }
            dst => {
                let mut packet = vec![0u8; HEADER_SIZE + len];
                if chain.readable.read_at(mem, 0, &mut packet).is_err() {
                    return TxOutcome::Done;
                }
                match self.router.deliver(&self.sibling, dst, packet) {
                    Delivery::Delivered => TxOutcome::Done,
                    Delivery::Full => TxOutcome::Backpressure,
                    Delivery::Unreachable => {
                        log::debug!("no reachable sibling with CID {dst}");
                        self.reply_rst(&hdr);
                        TxOutcome::Done
                    }
                }
            }
        }
    }

    fn handle_host_packet(
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
                Op::Request => self.guest_connect(hdr, key, ep),
                Op::Rst => {}
                _ => {
                    log::debug!("{op:?} for unknown connection {key:?}; reset");
                    self.reply_rst(hdr);
                }
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.kind != hdr.kind() {
            log::warn!("connection {key:?} changed socket type; reset");
            self.reset_conn(slot);
            return;
        }
        conn.credit.update_from_peer(hdr.buf_alloc(), hdr.fwd_cnt());
        if conn.credit.peer_free() > 0 {
            conn.credit_requested = false;
        }
        match op {
            Op::Request => {
                log::warn!("duplicate REQUEST for {key:?}; reset");
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

    fn guest_connect(&mut self, hdr: &PacketHeader, key: ConnKey, ep: &Epoll) {
        if self.conns.len() >= self.cfg.max_connections {
            log::warn!(
                "guest connect to port {} refused: {} connections open (max-connections)",
                key.host_port,
                self.conns.len()
            );
            self.reply_rst(hdr);
            return;
        }
        let mut conn = Connection::new(
            key,
            hdr.kind(),
            State::PeerInit {
                since: Instant::now(),
            },
            None,
            self.cfg.buf_alloc,
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
    fn retry_host_connect(&mut self, slot: u32, ep: &Epoll) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let path = unix::port_path(&self.cfg.uds_path, conn.key.host_port);
        let sock_type = if conn.is_seqpacket() {
            libc::SOCK_SEQPACKET
        } else {
            libc::SOCK_STREAM
        };
        match unix::connect(&path, sock_type) {
            Ok(Connect::Connected(sock)) => {
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
                log::info!("guest connect to {} failed: {e}; reset", path.display());
                self.reset_conn(slot);
            }
        }
    }

    fn guest_accepted(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !matches!(conn.state, State::LocalInit { .. }) {
            log::warn!("unexpected RESPONSE for {:?}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        let line = conn.ok_line.take().unwrap_or_default();
        let written = conn
            .host
            .as_ref()
            .map(|s| super::connection::send(s, &line));
        if !matches!(written, Some(Ok(n)) if n == line.len()) {
            log::info!("host client of {:?} went away before OK", conn.key);
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
    ) {
        let len = hdr.len() as usize;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.is_established() && !matches!(conn.state, State::Closing { .. }) {
            log::warn!(
                "RW before the connection {:?} was established; reset",
                conn.key
            );
            self.reset_conn(slot);
            return;
        }
        if conn.guest_shut & shutdown::SEND != 0 || conn.host_hup {
            log::info!("data on {:?} after shutdown; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        conn.bytes_from_guest += len as u64;
        if !conn.credit.accept_from_peer(len as u32) {
            log::warn!("guest overran the credit of {:?}; reset", conn.key);
            self.reset_conn(slot);
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
            write_stream(conn, chain, mem, len, &mut self.iov.0)
        };
        if let Err(e) = result {
            log::info!("host side of {:?} failed: {e}; reset", conn.key);
            self.reset_conn(slot);
            return;
        }
        if conn.credit.update_worthwhile() {
            let (key, k) = (conn.key, conn.kind);
            self.queue_credit_update(slot, key, k);
        }
    }

    fn guest_shutdown(&mut self, slot: u32, flags: u32) {
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

    // ----- rx: device → guest ------------------------------------------------------------------

    /// Fills rx buffers with whatever is ready: control packets, sibling packets, host data.
    pub fn process_rx(&mut self, rings: &mut Rings) {
        let mem = rings.mem;
        if !rings.vrings[RX_QUEUE].is_ready() {
            return;
        }
        let mut used_any = false;
        loop {
            if self.control.is_empty() && !self.sibling.has_packets() && self.rx_ready.is_empty() {
                break;
            }
            let Some(chain) = rings.vrings[RX_QUEUE].pop(mem) else {
                // Out of buffers: ask for a kick when the guest adds some. With EVENT_IDX the
                // guest may have added buffers before it saw the request: then go on now.
                if rings.vrings[RX_QUEUE].enable_notification(mem) {
                    continue;
                }
                break;
            };
            if chain.writable.len() < HEADER_SIZE {
                log::warn!(
                    "rx buffer of {} bytes cannot hold a header; returned unused",
                    chain.writable.len()
                );
                rings.vrings[RX_QUEUE].add_used(mem, chain.head, 0);
                used_any = true;
                continue;
            }
            let written = if let Some(c) = self.control.pop_front() {
                Some(self.write_control(c, &chain, mem))
            } else if let Some(packet) = self.sibling.pop() {
                self.write_sibling(packet, &chain, mem)
            } else {
                self.write_conn_data(&chain, mem)
            };
            match written {
                Some(n) => {
                    rings.vrings[RX_QUEUE].add_used(mem, chain.head, n as u32);
                    self.stats.rx_packets += 1;
                    used_any = true;
                }
                None => {
                    // Nothing was there after all (EAGAIN, EOF, no credit): give the buffer
                    // back. Control packets that came out of it (SHUTDOWN, CREDIT_REQUEST) go
                    // next; otherwise wait for the next event.
                    rings.vrings[RX_QUEUE].unpop();
                    if self.control.is_empty() {
                        break;
                    }
                }
            }
        }
        if used_any {
            rings.vrings[RX_QUEUE].notify(mem);
        }
    }

    /// Whether rx work is waiting (for the worker's decision to re-run tx after rx drained).
    pub fn rx_backlog(&self) -> usize {
        self.control.len()
    }

    /// Puts `slot` in the rx ready queue if it has host data for the guest.
    fn mark_rx(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.rx_queued && conn.has_rx_data() {
                conn.rx_queued = true;
                self.rx_ready.push_back(slot);
            }
        }
    }

    fn write_control(&mut self, c: Control, chain: &ChainBuffers, mem: &DeviceMemory) -> usize {
        let mut hdr = PacketHeader::new(c.ends, c.kind, c.op);
        hdr.set_flags(c.flags);
        let key = ConnKey {
            host_port: c.ends.src_port,
            guest_port: c.ends.dst_port,
        };
        if let Some(conn) = self.conns.slot_of(&key).and_then(|s| self.conns.get_mut(s)) {
            hdr.set_buf_alloc(conn.credit.buf_alloc)
                .set_fwd_cnt(conn.credit.fwd_cnt);
            conn.credit.fwd_cnt_sent = conn.credit.fwd_cnt;
        }
        if chain.writable.write_at(mem, 0, &hdr.to_bytes()).is_err() {
            return 0;
        }
        HEADER_SIZE
    }

    /// Relays a sibling packet. One larger than the buffer (Linux posts 4 KiB rx buffers, a
    /// 6.12 guest sends 64 KiB packets) is split: the rest goes back to the front of the inbox
    /// with its own header, and SEQPACKET EOM/EOR stay on the last piece.
    fn write_sibling(
        &mut self,
        mut packet: Vec<u8>,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
    ) -> Option<usize> {
        let room = chain.writable.len();
        if packet.len() > room {
            let mut raw = [0u8; HEADER_SIZE];
            raw.copy_from_slice(&packet[..HEADER_SIZE]);
            let hdr = PacketHeader::from_bytes(&raw);
            if hdr.op() != Some(Op::Rw) {
                // Header-only packets always fit a buffer that holds a header.
                return None;
            }
            let take = room - HEADER_SIZE;
            let mut first = hdr;
            first
                .set_len(take as u32)
                .set_flags(hdr.flags() & !(seq::EOM | seq::EOR));
            let mut rest_hdr = hdr;
            rest_hdr.set_len((packet.len() - HEADER_SIZE - take) as u32);
            let mut rest = rest_hdr.to_bytes().to_vec();
            rest.extend_from_slice(&packet[HEADER_SIZE + take..]);
            self.sibling.unpop(rest);
            packet.truncate(HEADER_SIZE + take);
            packet[..HEADER_SIZE].copy_from_slice(&first.to_bytes());
        }
        chain.writable.write_at(mem, 0, &packet).ok()?;
        Some(packet.len())
    }

    /// Puts host data of the next ready connection into `chain`. None: nothing was produced
    /// (the chain is given back). Connections without credit leave the queue after asking for
    /// credit once; the guest's next packet for them puts them back.
    fn write_conn_data(&mut self, chain: &ChainBuffers, mem: &DeviceMemory) -> Option<usize> {
        while let Some(slot) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.rx_queued = false;
            if !conn.has_rx_data() {
                continue;
            }
            if conn.credit.peer_free() == 0 {
                if !conn.credit_requested {
                    conn.credit_requested = true;
                    let (key, k) = (conn.key, conn.kind);
                    self.queue_control(self.ends(key), k, Op::CreditRequest, 0);
                }
                continue;
            }
            if let Some(n) = self.fill_from_conn(slot, chain, mem) {
                self.mark_rx(slot);
                return Some(n);
            }
        }
        None
    }

    fn fill_from_conn(
        &mut self,
        slot: u32,
        chain: &ChainBuffers,
        mem: &DeviceMemory,
    ) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        if !conn.has_rx_data() {
            return None;
        }
        let room = (chain.writable.len() - HEADER_SIZE)
            .min(MAX_PKT_PAYLOAD)
            .min(conn.credit.peer_free() as usize);
        if room == 0 {
            return None;
        }
        if conn.rx_pending.is_empty() && conn.is_seqpacket() {
            if let Err(e) = read_host_message(conn) {
                log::info!("host side of {:?} failed: {e}; reset", conn.key);
                self.reset_conn(slot);
                return None;
            }
        }
        let (n, flags) = if !conn.rx_pending.is_empty() {
            let n = room.min(conn.rx_pending.len());
            let bytes: Vec<u8> = conn.rx_pending.drain(..n).collect();
            chain.writable.write_at(mem, HEADER_SIZE, &bytes).ok()?;
            let flags = if conn.rx_pending.is_empty() {
                std::mem::take(&mut conn.rx_pending_eom)
            } else {
                0
            };
            (n, flags)
        } else if conn.is_seqpacket() {
            // read_host_message found nothing (EAGAIN or EOF).
            return self.after_empty_read(slot);
        } else {
            match read_stream(conn, chain, mem, room, &mut self.iov.0) {
                Ok(0) => {
                    conn.host_eof = true;
                    return self.after_empty_read(slot);
                }
                Ok(n) => (n, 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.host_readable = false;
                    return None;
                }
                Err(e) => {
                    log::info!("host socket of {:?} failed: {e}; reset", conn.key);
                    self.reset_conn(slot);
                    return None;
                }
            }
        };
        let mut hdr = PacketHeader::new(host_ends(self.cfg.guest_cid, conn.key), conn.kind, Op::Rw);
        hdr.set_len(n as u32)
            .set_flags(flags)
            .set_buf_alloc(conn.credit.buf_alloc)
            .set_fwd_cnt(conn.credit.fwd_cnt);
        conn.credit.fwd_cnt_sent = conn.credit.fwd_cnt;
        conn.credit.rx_cnt = conn.credit.rx_cnt.wrapping_add(n as u32);
        conn.bytes_to_guest += n as u64;
        chain.writable.write_at(mem, 0, &hdr.to_bytes()).ok()?;
        Some(HEADER_SIZE + n)
    }

    /// The host socket had nothing: EAGAIN (wait for the next edge) or EOF (tell the guest).
    fn after_empty_read(&mut self, slot: u32) -> Option<usize> {
        let conn = self.conns.get_mut(slot)?;
        if !conn.host_eof {
            conn.host_readable = false;
            return None;
        }
        conn.host_readable = false;
        let flags = if conn.host_hup {
            shutdown::BOTH
        } else {
            shutdown::SEND
        };
        if conn.host_shut_sent & flags != flags {
            conn.host_shut_sent |= flags;
            if flags == shutdown::BOTH {
                conn.state = State::Closing {
                    since: Instant::now(),
                };
            }
            let (key, k) = (conn.key, conn.kind);
            self.queue_control(self.ends(key), k, Op::Shutdown, flags);
        }
        None
    }

    /// Posts TRANSPORT_RESET on the event queue if one is owed.
    pub fn process_event(&mut self, rings: &mut Rings) {
        if !self.transport_reset_pending {
            return;
        }
        let mem = rings.mem;
        let Some(chain) = rings.vrings[EVENT_QUEUE].pop(mem) else {
            return;
        };
        let id = EVENT_TRANSPORT_RESET.to_le_bytes();
        if chain.writable.len() < id.len() || chain.writable.write_at(mem, 0, &id).is_err() {
            log::warn!(
                "event buffer of {} bytes cannot hold an event",
                chain.writable.len()
            );
            rings.vrings[EVENT_QUEUE].add_used(mem, chain.head, 0);
        } else {
            rings.vrings[EVENT_QUEUE].add_used(mem, chain.head, id.len() as u32);
            self.transport_reset_pending = false;
            log::info!("posted TRANSPORT_RESET to guest {}", self.cfg.guest_cid);
        }
        rings.vrings[EVENT_QUEUE].notify(mem);
    }

    // ----- helpers ------------------------------------------------------------------------------

    /// Endpoints of a host connection, from the device's (host's) side.
    fn ends(&self, key: ConnKey) -> Endpoints {
        host_ends(self.cfg.guest_cid, key)
    }

    fn queue_control(&mut self, ends: Endpoints, kind: u16, op: Op, flags: u32) {
        self.control.push_back(Control {
            ends,
            kind,
            op,
            flags,
        });
    }

    fn queue_credit_update(&mut self, slot: u32, key: ConnKey, k: u16) {
        if let Some(conn) = self.conns.get_mut(slot) {
            // The update will carry the fwd_cnt current at send time; mark it as told now so
            // a burst of data does not queue one update per packet.
            conn.credit.fwd_cnt_sent = conn.credit.fwd_cnt;
        }
        self.queue_control(self.ends(key), k, Op::CreditUpdate, 0);
    }

    /// Answers a guest packet with RST (never an RST with an RST).
    fn reply_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op() == Some(Op::Rst) {
            return;
        }
        self.stats.rst_sent += 1;
        let kind = if hdr.kind() == kind::SEQPACKET {
            kind::SEQPACKET
        } else {
            kind::STREAM
        };
        self.queue_control(hdr.endpoints().reversed(), kind, Op::Rst, 0);
    }

    /// Ends a connection: RST to the guest, host socket closed.
    fn reset_conn(&mut self, slot: u32) {
        self.reset_conn_because(slot, "reset");
    }

    fn reset_conn_because(&mut self, slot: u32, reason: &str) {
        if let Some(conn) = self.remove_conn(slot, reason) {
            self.stats.rst_sent += 1;
            self.queue_control(self.ends(conn.key), conn.kind, Op::Rst, 0);
        }
    }
}

fn host_ends(guest_cid: u64, key: ConnKey) -> Endpoints {
    Endpoints {
        src_cid: HOST_CID,
        src_port: key.host_port,
        dst_cid: guest_cid,
        dst_port: key.guest_port,
    }
}

/// Reusable iovec storage for one `readv`/`writev` at a time.
#[derive(Default)]
struct IovecScratch(Vec<libc::iovec>);

// SAFETY: the pointers are only written and used within one call on the owning thread; they are
// never dereferenced after the call that filled them, so moving the (stale) storage is harmless.
unsafe impl Send for IovecScratch {}

/// `read_some` for `&UnixStream` without pulling `Read` into every caller.
trait ReadSome {
    fn read_some(self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadSome for &UnixStream {
    fn read_some(self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        let mut s = self;
        s.read(buf)
    }
}

/// Guest → host stream data: straight from guest memory to the socket when it is writable and
/// nothing is queued ahead; what the socket does not take is copied into the connection's queue.
fn write_stream(
    conn: &mut Connection,
    chain: &ChainBuffers,
    mem: &DeviceMemory,
    len: usize,
    iov: &mut Vec<libc::iovec>,
) -> io::Result<()> {
    let mut done = 0usize;
    if conn.tx_queue.is_empty() && conn.host_writable && len > 0 {
        if let Some(sock) = conn.host.as_ref() {
            chain
                .readable
                .iovecs(mem, HEADER_SIZE, len, Permissions::Read, iov)
                .map_err(|e| io::Error::other(e.to_string()))?;
            // SAFETY: the iovecs point into guest memory that `mem` keeps mapped for this call.
            let n = unsafe { writev_nosignal(sock.as_raw_fd(), iov) };
            match n {
                Ok(n) => done = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.host_writable = false,
                Err(e) => return Err(e),
            }
            conn.credit.fwd_cnt = conn.credit.fwd_cnt.wrapping_add(done as u32);
        }
    }
    if done < len {
        conn.host_writable = false;
        let mut rest = vec![0u8; len - done];
        chain
            .readable
            .read_at(mem, HEADER_SIZE + done, &mut rest)
            .map_err(|e| io::Error::other(e.to_string()))?;
        conn.tx_queue.push(rest);
    }
    Ok(())
}

/// `writev` via `sendmsg(MSG_NOSIGNAL)`.
///
/// # Safety
/// Every iovec must describe readable memory that stays valid for the call.
unsafe fn writev_nosignal(fd: i32, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: zeroed msghdr is valid; iov is valid per the caller.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: msg references valid iovecs.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Host → guest stream data: `readv` straight into the rx buffer after the header.
fn read_stream(
    conn: &mut Connection,
    chain: &ChainBuffers,
    mem: &DeviceMemory,
    room: usize,
    iov: &mut Vec<libc::iovec>,
) -> io::Result<usize> {
    let Some(sock) = conn.host.as_ref() else {
        return Ok(0);
    };
    chain
        .writable
        .iovecs(mem, HEADER_SIZE, room, Permissions::Write, iov)
        .map_err(|e| io::Error::other(e.to_string()))?;
    loop {
        // SAFETY: the iovecs describe writable guest memory kept mapped by `mem` for this call.
        let n = unsafe { libc::readv(sock.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Host → guest SEQPACKET: takes one whole message into `rx_pending` (sent as one or more RW
/// packets, EOM|EOR on the last). A message larger than our buffer is a host error (reset).
fn read_host_message(conn: &mut Connection) -> io::Result<()> {
    let Some(sock) = conn.host.as_ref() else {
        return Ok(());
    };
    let mut buf = vec![0u8; conn.credit.buf_alloc as usize];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            conn.host_readable = false;
            return Ok(());
        }
        return Err(e);
    }
    let n = n as usize;
    if n == 0 {
        conn.host_eof = true;
        return Ok(());
    }
    if n > buf.len() {
        return Err(io::Error::other(format!(
            "host message of {n} bytes exceeds the {}-byte buffer",
            buf.len()
        )));
    }
    conn.rx_pending.extend(&buf[..n]);
    conn.rx_pending_eom = seq::EOM | seq::EOR;
    Ok(())
}
