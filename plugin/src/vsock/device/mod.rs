//! The vsock device of one VM: it moves packets between the guest's virtqueues and host
//! connections (hybrid Unix sockets) or sibling VMs.
//!
//! Queue rules:
//! - tx (guest → device): every chain is returned to the used ring with length 0, whatever its
//!   fate; a malformed packet is dropped with a log line (and an RST when it names a connection).
//!   A chain with descriptors outside guest memory breaks the queue (see `Vring`). The tx queue is
//!   paused, never dropped, when the guest's own rx side is backed up (control backlog); a full
//!   sibling inbox costs only the connections to that sibling (see `sibling_out`).
//! - rx (device → guest): control packets first (they are small and unblock the guest), then
//!   sibling packets, then connection data round-robin. A packet never exceeds the guest's buffer
//!   nor its credit; an rx chain is taken only when something is ready to go into it.
//! - event: TRANSPORT_RESET is posted when the event queue starts after the device lost its
//!   connections (reset or a new frontend), so the guest resets its sockets.
//! - While a ring is disabled it is not processed at all (tx chains stay in the ring until enable).
//!
//! The device is a muxer: it routes packets and events to connections (`vsock::connection`,
//! which own their buffers, credit and readiness flags; their protocol state is the state machine
//! `vsock::csm`) and turns their answers into packets. Here: the device's state and its control-plane hooks. `tx` handles guest packets,
//! `rx` fills the rx and event queues, `host_events` reacts to host sockets, hybrid clients
//! and timers, `interests` says which fds it watches (through the worker's registry, with
//! generation-tagged tokens), `socket_io` moves bytes between host sockets and guest buffers,
//! `sibling_out` parks packets for full sibling inboxes, `drain` ends the device at exit.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use crate::iotlb::DeviceMemory;

use super::conn_table::ConnTable;
use super::connection::Connection;
use super::packet::{kind, Endpoints, Op, PacketHeader, HOST_CID};
use super::status::{ConnKey, ConnSnapshot, Stats};
use crate::config::OkReply;
use crate::host::connect_line::ConnectLine;
use crate::host::route::{ConnectionEvents, ConnectionLimits, HostRoute, RouteRequests};
use crate::host::sibling::{SiblingPort, SiblingRouter};
use crate::host::unix;
use crate::virtqueue::vring::Vring;

mod drain;
mod host_events;
pub(crate) mod interests;
mod rx;
mod sibling_conns;
mod sibling_out;
pub mod snapshot;
mod socket_io;
mod tx;

use interests::{EventRegistry, Interests};

/// Largest payload of one packet we build (the virtio-vsock maximum, 64 KiB).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Log target of the data-path pattern lines (guest kicks, chains and payload bytes per pass,
/// used-ring signals), at trace level: `RUST_LOG=vsock_plugin::datapath=trace` shows only these
/// (`real-guest --measure --pattern` reads them). Off, each costs one level check.
pub const DATAPATH_LOG: &str = "vsock_plugin::datapath";
/// Control packets waiting for rx buffers before the tx queue pauses and host connects are
/// refused. The queue is bounded: beyond this, only packets about existing connections are
/// added (at most a SHUTDOWN and an RST each), and a connection whose REQUEST never left the
/// queue takes it out again when it ends.
const CONTROL_BACKLOG: usize = 1024;
/// First host-side port for host-initiated connections (Firecracker's range, 2^30 .. 2^31).
const LOCAL_PORT_FIRST: u32 = 1 << 30;
const LOCAL_PORT_END: u32 = 1 << 31;
/// Most payload bytes gathered into one `sendmsg` (see [`TxBatch`]).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most extra rx buffers filled by one `readv` besides the first.
const MAX_RX_GATHER: usize = 15;
/// Most tx chains held back from the used ring within one pass.
const MAX_HELD_CHAINS: usize = 1024;
/// Host clients on `<uds-path>` waiting for their CONNECT line, per VM; a newcomer beyond this
/// closes the oldest.
pub const MAX_PENDING_CLIENTS: usize = 128;
/// Host clients accepted per readiness event of the hybrid listener.
const ACCEPT_BATCH: usize = 64;
/// How long the hybrid listener rests after `accept` failed (out of fds).
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

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
    /// Tells this client's events from those of an earlier client at the same index.
    generation: u32,
}

pub struct VsockDevice {
    cfg: DeviceConfig,
    conns: ConnTable,
    control: VecDeque<Control>,
    clients: Vec<Option<PendingClient>>,
    /// Generation of the next waiting client (see `interests`).
    next_client_generation: u32,
    hybrid: std::os::unix::net::UnixListener,
    /// Which fds the device watches, through the worker's registry (see `interests`).
    interests: Interests,
    /// Set while the hybrid listener is out of the epoll set after a failed accept.
    accept_paused_until: Option<Instant>,
    next_local_port: u32,
    /// Open connections that host clients initiated (see [`host_connection_limit`]).
    host_initiated_open: usize,
    /// Connections that may have host data for the guest, in round-robin order.
    rx_ready: VecDeque<u32>,
    seqpacket: bool,
    transport_reset_pending: bool,
    ever_started: bool,
    tx_paused: bool,
    router: Arc<SiblingRouter>,
    sibling: Arc<SiblingPort>,
    /// Packets for sibling VMs whose inbox was full.
    parked: sibling_out::ParkedSiblings,
    pub stats: Stats,
    /// Reused storage: guest ranges of one rx `readv`, and of a tx pass's batch.
    rx_ranges: Vec<(GuestAddress, usize)>,
    tx_batch_scratch: Vec<(GuestAddress, usize)>,
    /// Extra rx chains filled by the last read, to complete right after the first one.
    rx_extra_used: Vec<(u16, u32)>,
    /// Connections whose host socket may have become (un)writable this round: their EPOLLOUT
    /// interest is brought in line by [`VsockDevice::sync_host_interest`].
    out_dirty: Vec<u32>,
    /// Set when a control plane decides where guest connections go.
    host_router: Option<Box<dyn RouteRequests>>,
    events: Option<Box<dyn ConnectionEvents>>,
    limits: Option<Box<dyn ConnectionLimits>>,
    /// What a DEVICE_STATE restore left behind (see `snapshot`).
    restored: snapshot::Restored,
    /// Sibling connections, known for restores (see `sibling_conns`).
    sibling_conns: sibling_conns::SiblingConns,
}

impl VsockDevice {
    /// A device serving `hybrid` (already listening); it watches nothing until
    /// [`Self::attach_events`].
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
            next_client_generation: 0,
            hybrid,
            interests: Interests::default(),
            accept_paused_until: None,
            next_local_port: LOCAL_PORT_FIRST,
            host_initiated_open: 0,
            rx_ready: VecDeque::new(),
            seqpacket: false,
            transport_reset_pending: false,
            ever_started: false,
            tx_paused: false,
            router,
            sibling,
            parked: Default::default(),
            stats: Stats::default(),
            rx_ranges: Vec::new(),
            tx_batch_scratch: Vec::new(),
            rx_extra_used: Vec::new(),
            out_dirty: Vec::new(),
            host_router: None,
            events: None,
            limits: None,
            restored: Default::default(),
            sibling_conns: Default::default(),
        }
    }

    /// Where the device registers its fds (the worker's epoll set); starts watching the hybrid
    /// listener. Events whose token [`interests::is_device_token`] go to [`Self::handle_event`].
    pub fn attach_events(&mut self, registry: Box<dyn EventRegistry>) -> io::Result<()> {
        self.interests.attach(registry);
        self.interests.watch_listener(self.hybrid.as_raw_fd())
    }

    /// Attaches a control plane: routing of guest connections and connection events.
    pub fn attach_control(
        &mut self,
        router: Box<dyn RouteRequests>,
        events: Box<dyn ConnectionEvents>,
        limits: Box<dyn ConnectionLimits>,
    ) {
        self.host_router = Some(router);
        self.events = Some(events);
        self.limits = Some(limits);
    }

    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        self.conns
            .iter()
            .map(|c| ConnSnapshot {
                key: c.key,
                state: c.state.state(),
                host_initiated: c.host_initiated(),
                via_service: c.via_service(),
                bytes_from_guest: c.bytes_from_guest(),
                bytes_to_guest: c.bytes_to_guest(),
                buf_alloc: c.credit().buf_alloc,
                fwd_cnt: c.credit().fwd_cnt,
                peer_buf_alloc: c.credit().peer_buf_alloc,
                peer_fwd_cnt: c.credit().peer_fwd_cnt,
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
    pub fn apply_route(&mut self, key: ConnKey, route: HostRoute) {
        let Some(slot) = self.conns.slot_of(&key) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.state.route_answered() {
            return;
        }
        match route {
            HostRoute::Unix => self.retry_host_connect(slot),
            HostRoute::Deny(reason) => {
                crate::log_limited!(
                    Info,
                    "guest connect to port {} denied: {reason}",
                    key.host_port
                );
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
                if !ok || !self.watch_host(&sock, slot, false) {
                    self.reset_conn_because(slot, "the host service's socket has the wrong type");
                    return;
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.attach_service_socket(sock);
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
        conn.state.establish();
        let (key, k, hi, vs) = (
            conn.key,
            conn.kind,
            conn.host_initiated(),
            conn.via_service(),
        );
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
        if conn.host_initiated() {
            self.host_initiated_open = self.host_initiated_open.saturating_sub(1);
        }
        if let Some(ev) = &self.events {
            ev.closed(conn.key, reason);
        }
        Some(conn)
    }

    /// Features were negotiated: remember whether SEQPACKET is on.
    pub fn set_seqpacket(&mut self, on: bool) {
        self.seqpacket = on;
    }

    /// The device lost its guest-visible state (RESET_DEVICE, frontend gone): close every host
    /// connection (their peers see EOF) and tell the guest at the next start.
    pub fn reset(&mut self) {
        let dropped = self.conns.drain();
        self.host_initiated_open = 0;
        if !dropped.is_empty() {
            crate::log_limited!(
                Info,
                "device reset: closing {} connection(s)",
                dropped.len()
            );
        }
        if let Some(ev) = &self.events {
            for c in &dropped {
                ev.closed(c.key, "device reset");
            }
        }
        self.control.clear();
        self.parked.clear();
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
            conn.note_credit_told();
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
            let ends = self.ends(conn.key);
            let request_may_wait = conn.host_initiated() && conn.state.is_local_init();
            if request_may_wait && self.unqueue_request(ends) {
                // The guest never saw this connection: nothing to reset, and no stale REQUEST
                // piles up while the guest posts no rx buffers.
                return;
            }
            self.stats.rst_sent += 1;
            self.queue_control(ends, conn.kind, Op::Rst, 0);
        }
    }

    /// Removes a REQUEST for `ends` that is still waiting for an rx buffer; true if there was
    /// one. (The queue is bounded, see [`CONTROL_BACKLOG`].)
    fn unqueue_request(&mut self, ends: Endpoints) -> bool {
        let pos = self
            .control
            .iter()
            .position(|c| c.op == Op::Request && c.ends == ends);
        pos.and_then(|i| self.control.remove(i)).is_some()
    }
}

/// Most connections host clients may hold: half of `max-connections` (rounded up), so host
/// clients can never take the slots the guest needs for its own outbound connections.
pub fn host_connection_limit(max_connections: usize) -> usize {
    max_connections - max_connections / 2
}

fn host_ends(guest_cid: u64, key: ConnKey) -> Endpoints {
    Endpoints {
        src_cid: HOST_CID,
        src_port: key.host_port,
        dst_cid: guest_cid,
        dst_port: key.guest_port,
    }
}

#[cfg(test)]
mod test_guest;
#[cfg(test)]
mod tests;
