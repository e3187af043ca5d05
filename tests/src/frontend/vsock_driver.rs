//! A guest virtio-vsock driver in userspace, on top of [`SplitQueue`]s.
//!
//! Queues: 0 rx (device-writable buffers kept stocked), 1 tx, 2 event (crosvm only, stocked with
//! 4-byte buffers). Two APIs:
//! - raw: [`VsockDriver::send_packet`] sends any header/payload with any descriptor split,
//!   [`VsockDriver::recv_packet`] returns the next packet not claimed by a stream connection;
//! - stream: [`VsockDriver::connect`], [`VsockDriver::accept`], `send`/`recv` with credit
//!   accounting (the guest advertises `buf_alloc`/`fwd_cnt`, honours the peer's credit and sends
//!   CREDIT_UPDATE), shutdown and RST.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guest_memory::GuestMemory;
use super::split_queue::{Buf, KickPolicy, SplitQueue};
use super::vsock_packet::*;

/// How a tx packet (header + payload bytes) is cut into descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and payload in one descriptor.
    Contiguous,
    /// Header alone, then the payload in this many (roughly equal) descriptors.
    HeaderSeparate(usize),
    /// Explicit descriptor sizes over the header+payload bytes; the last one takes the rest.
    Sizes(Vec<usize>),
}

impl TxLayout {
    /// Descriptor lengths for `total` bytes.
    pub fn split(&self, total: usize) -> Vec<usize> {
        let mut out = Vec::new();
        match self {
            TxLayout::Contiguous => out.push(total),
            TxLayout::HeaderSeparate(n) => {
                out.push(HDR_LEN.min(total));
                let payload = total.saturating_sub(HDR_LEN);
                let n = (*n).max(1);
                if payload > 0 {
                    let piece = payload.div_ceil(n);
                    let mut left = payload;
                    while left > 0 {
                        let p = piece.min(left);
                        out.push(p);
                        left -= p;
                    }
                }
            }
            TxLayout::Sizes(sizes) => {
                let mut left = total;
                for (k, &s) in sizes.iter().enumerate() {
                    if left == 0 {
                        break;
                    }
                    let s = if k + 1 == sizes.len() {
                        left
                    } else {
                        s.min(left)
                    };
                    out.push(s);
                    left -= s;
                }
                if left > 0 {
                    out.push(left);
                }
            }
        }
        out.retain(|&s| s > 0);
        if out.is_empty() {
            out.push(total);
        }
        out
    }
}

/// Driver parameters.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub guest_cid: u64,
    /// Descriptor sizes of one rx buffer chain (header and payload share it however they fit).
    pub rx_layout: Vec<u32>,
    /// Number of rx chains kept posted (capped by the queue size).
    pub rx_buffers: usize,
    pub tx_layout: TxLayout,
    /// Receive buffer the guest advertises per connection.
    pub buf_alloc: u32,
    /// Largest payload per tx packet.
    pub max_payload: usize,
    /// Send CREDIT_UPDATE automatically as the test consumes data.
    pub auto_credit_update: bool,
    /// Answer the peer's CREDIT_REQUEST with a CREDIT_UPDATE (as Linux does).
    pub answer_credit_request: bool,
    /// Number of 4-byte event buffers to keep posted (crosvm: event queue 2).
    pub event_buffers: usize,
    /// Default wait for stream operations.
    pub timeout: Duration,
    /// Wait only for interrupts (call eventfds), never poll the rings on a timer: a device that
    /// forgets a notification stalls the test, as it would stall a real guest.
    pub interrupt_only: bool,
    /// When to kick (Always, or only as `avail_event` asks, like Linux).
    pub kick_policy: KickPolicy,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            guest_cid: 3,
            rx_layout: vec![4096],
            rx_buffers: 64,
            tx_layout: TxLayout::Contiguous,
            buf_alloc: 256 * 1024,
            max_payload: 64 * 1024,
            auto_credit_update: true,
            answer_credit_request: true,
            event_buffers: 0,
            timeout: Duration::from_secs(5),
            interrupt_only: false,
            kick_policy: KickPolicy::Always,
        }
    }
}

/// Identity of a connection from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub local_port: u32,
    pub peer_cid: u64,
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Established,
    /// The peer reset the connection (RST received).
    Reset,
    /// We reset it.
    Closed,
}

/// Per-connection state, public so tests can inspect the accounting.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub type_: u16,
    pub state: ConnState,
    /// Stream bytes received and not yet consumed by the test.
    pub rx_data: VecDeque<u8>,
    /// SEQPACKET messages received (bytes, flags of the last fragment).
    pub rx_msgs: VecDeque<(Vec<u8>, u32)>,
    seq_partial: Vec<u8>,
    /// Our advertised buffer and counters.
    pub buf_alloc: u32,
    pub rx_cnt: u32,
    pub fwd_cnt: u32,
    pub last_advertised_fwd: u32,
    pub tx_cnt: u32,
    /// The peer's last advertised buffer and forward count.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// SHUTDOWN flags the peer sent (ORed).
    pub peer_shutdown: u32,
    /// Our own shutdown flags sent.
    pub our_shutdown: u32,
    /// RW bytes the peer sent beyond our advertised credit (must stay 0).
    pub credit_violation_bytes: u64,
    /// Every packet received on this connection, in order (headers only).
    pub history: Vec<Header>,
}

impl Conn {
    fn new(id: ConnId, type_: u16, buf_alloc: u32) -> Self {
        Conn {
            id,
            type_,
            state: ConnState::Connecting,
            rx_data: VecDeque::new(),
            rx_msgs: VecDeque::new(),
            seq_partial: Vec::new(),
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_advertised_fwd: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            our_shutdown: 0,
            credit_violation_bytes: 0,
            history: Vec::new(),
        }
    }

    /// Bytes we may still send under the peer's credit.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes the peer may still send us.
    pub fn our_credit(&self) -> u32 {
        self.buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    /// The peer closed its sending side (SHUTDOWN SEND) or reset.
    pub fn peer_done(&self) -> bool {
        self.peer_shutdown & SHUTDOWN_SEND != 0 || self.state == ConnState::Reset
    }
}

/// The guest driver.
pub struct VsockDriver {
    pub cfg: DriverConfig,
    mem: Arc<GuestMemory>,
    pub rxq: SplitQueue,
    pub txq: SplitQueue,
    pub evq: Option<SplitQueue>,
    rx_chains: HashMap<u16, Vec<Buf>>,
    ev_chains: HashMap<u16, u64>,
    tx_pool: Vec<u64>,
    tx_block: usize,
    tx_inflight: HashMap<u16, u64>,
    /// Packets not claimed by a connection, oldest first.
    raw_pending: VecDeque<Packet>,
    /// REQUESTs to ports we listen on.
    incoming: VecDeque<Packet>,
    listening: HashSet<u32>,
    pub conns: HashMap<ConnId, Conn>,
    next_port: u32,
    events: VecDeque<u32>,
    /// Protocol oddities seen in rx (used len ≠ header + len, op 0, wrong dst_cid...).
    pub anomalies: Vec<String>,
    /// Count of every packet received.
    pub rx_packets: u64,
}

impl VsockDriver {
    /// Allocates the rings (2 queues, or 3 when `cfg.event_buffers > 0`) and stocks rx/event
    /// buffers. Nothing is published to the device until the rings are handed over and kicked.
    pub fn new(mem: Arc<GuestMemory>, queue_size: u16, cfg: DriverConfig) -> io::Result<Self> {
        let mut rxq = SplitQueue::new(mem.clone(), 0, queue_size)?;
        let mut txq = SplitQueue::new(mem.clone(), 1, queue_size)?;
        let mut evq = if cfg.event_buffers > 0 {
            Some(SplitQueue::new(mem.clone(), 2, queue_size)?)
        } else {
            None
        };
        rxq.kick_policy = cfg.kick_policy;
        txq.kick_policy = cfg.kick_policy;
        if let Some(q) = evq.as_mut() {
            q.kick_policy = cfg.kick_policy;
        }
        let tx_block = (HDR_LEN + cfg.max_payload).next_multiple_of(4096);
        let pool_n = 32usize;
        let tx_pool = (0..pool_n)
            .map(|_| mem.alloc(tx_block as u64, 4096))
            .collect();
        let mut d = VsockDriver {
            cfg,
            mem,
            rxq,
            txq,
            evq,
            rx_chains: HashMap::new(),
            ev_chains: HashMap::new(),
            tx_pool,
            tx_block,
            tx_inflight: HashMap::new(),
            raw_pending: VecDeque::new(),
            incoming: VecDeque::new(),
            listening: HashSet::new(),
            conns: HashMap::new(),
            next_port: 50000,
            events: VecDeque::new(),
            anomalies: Vec::new(),
            rx_packets: 0,
        };
        d.stock_rx();
        d.stock_events();
        Ok(d)
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The rx buffer chains currently posted (by head).
    pub fn rx_buffers(&self) -> Vec<(u16, Vec<Buf>)> {
        let mut v: Vec<_> = self
            .rx_chains
            .iter()
            .map(|(h, b)| (*h, b.clone()))
            .collect();
        v.sort_by_key(|(h, _)| *h);
        v
    }

    fn stock_rx(&mut self) {
        self.post_rx_chains(self.cfg.rx_buffers);
    }

    /// Posts `n` more rx chains (as many as the ring holds) and kicks: a guest that starts
    /// reading late (tests start with `rx_buffers = 0` to play a guest that never reads).
    pub fn post_rx_buffers(&mut self, n: usize) {
        self.post_rx_chains(n);
        self.rxq.kick();
    }

    fn post_rx_chains(&mut self, n: usize) {
        let per_chain = self.cfg.rx_layout.len();
        let room = self.rxq.num_free() / per_chain.max(1);
        let n = n.min(room);
        for _ in 0..n {
            let bufs: Vec<Buf> = self
                .cfg
                .rx_layout
                .iter()
                .map(|&len| Buf {
                    gpa: self.mem.alloc(len as u64, 8),
                    len,
                    writable: true,
                })
                .collect();
            let head = self.rxq.push(&bufs).expect("rx descriptors");
            self.rx_chains.insert(head, bufs);
        }
    }

    fn stock_events(&mut self) {
        let Some(evq) = self.evq.as_mut() else { return };
        let n = self.cfg.event_buffers.min(evq.size as usize);
        for _ in 0..n {
            let gpa = self.mem.alloc(4, 4);
            self.mem.write(gpa, &0xffff_ffffu32.to_le_bytes());
            let head = evq
                .push(&[Buf {
                    gpa,
                    len: 4,
                    writable: true,
                }])
                .unwrap();
            self.ev_chains.insert(head, gpa);
        }
    }

    /// Kicks every queue (call once the rings have been handed to the device).
    pub fn kick_all(&self) {
        self.rxq.notify();
        self.txq.notify();
        if let Some(q) = &self.evq {
            q.notify();
        }
    }

    /// Ring setups for the vhost-user handshake (2 or 3 rings).
    pub fn vring_setups(&self) -> Vec<super::vhost_user_client::VringSetup> {
        let mut v = vec![self.rxq.setup(), self.txq.setup()];
        if let Some(q) = &self.evq {
            v.push(q.setup());
        }
        v
    }

    // ---------------------------------------------------------------- tx

    fn reap_tx(&mut self) -> io::Result<()> {
        while let Some(u) = self.txq.pop_used()? {
            if let Some(block) = self.tx_inflight.remove(&u.head) {
                self.tx_pool.push(block);
            }
        }
        Ok(())
    }

    /// Waits until a tx block and `ndesc` descriptors are free (pumping rx meanwhile).
    fn wait_tx_space(&mut self, ndesc: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap_tx()?;
            if !self.tx_pool.is_empty() && self.txq.num_free() >= ndesc {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "tx queue full: device completed nothing for {timeout:?} ({} chains in flight)",
                        self.txq.num_in_flight()
                    ),
                ));
            }
            // Serve rx meanwhile (pump() also reaps tx); sleep only if that freed nothing.
            self.pump()?;
            if !self.tx_pool.is_empty() && self.txq.num_free() >= ndesc {
                return Ok(());
            }
            self.idle(deadline);
        }
    }

    /// Sends raw bytes (normally header + payload) on the tx queue, cut per `layout`.
    /// Returns the chain's head.
    pub fn send_bytes(&mut self, bytes: &[u8], layout: &TxLayout) -> io::Result<u16> {
        assert!(
            bytes.len() <= self.tx_block,
            "packet larger than a tx block"
        );
        let sizes = layout.split(bytes.len());
        self.wait_tx_space(sizes.len(), self.cfg.timeout)?;
        let block = self.tx_pool.pop().unwrap();
        self.mem.write(block, bytes);
        let mut off = 0u64;
        let bufs: Vec<Buf> = sizes
            .iter()
            .map(|&s| {
                let b = Buf {
                    gpa: block + off,
                    len: s as u32,
                    writable: false,
                };
                off += s as u64;
                b
            })
            .collect();
        let head = self.txq.push(&bufs).unwrap();
        self.tx_inflight.insert(head, block);
        self.txq.kick();
        Ok(head)
    }

    /// Sends one packet with the configured tx layout. `hdr.len` is sent as given.
    pub fn send_packet(&mut self, hdr: &Header, payload: &[u8]) -> io::Result<()> {
        let layout = self.cfg.tx_layout.clone();
        self.send_packet_with(hdr, payload, &layout)
    }

    pub fn send_packet_with(
        &mut self,
        hdr: &Header,
        payload: &[u8],
        layout: &TxLayout,
    ) -> io::Result<()> {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes, layout).map(|_| ())
    }

    /// Waits until every tx chain sent so far was returned by the device.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump()?;
            if self.txq.num_in_flight() == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.idle(deadline);
            // (pump at the top of the loop re-checks after every wakeup)
        }
    }

    // ---------------------------------------------------------------- rx

    /// Reads one completed rx chain, if any, and re-posts its buffers.
    fn fetch_rx(&mut self) -> io::Result<Option<Packet>> {
        let Some(u) = self.rxq.pop_used()? else {
            return Ok(None);
        };
        let bufs = self.rx_chains.remove(&u.head).ok_or_else(|| {
            io::Error::other(format!("rx used head {} is not an rx chain", u.head))
        })?;
        let cap: u32 = bufs.iter().map(|b| b.len).sum();
        let mut bytes = Vec::with_capacity(u.len as usize);
        let mut left = u.len.min(cap) as usize;
        for b in &bufs {
            if left == 0 {
                break;
            }
            let n = left.min(b.len as usize);
            bytes.extend_from_slice(&self.mem.read_vec(b.gpa, n));
            left -= n;
        }
        if u.len > cap {
            self.anomalies.push(format!(
                "rx used len {} exceeds the chain's {} bytes",
                u.len, cap
            ));
        }
        // re-post the same buffers
        let head = self.rxq.push(&bufs).expect("rx descriptors");
        self.rx_chains.insert(head, bufs);
        self.rxq.kick();
        self.rx_packets += 1;
        if bytes.len() < HDR_LEN {
            self.anomalies
                .push(format!("rx used len {} is shorter than a header", u.len));
            let mut b = bytes.clone();
            b.resize(HDR_LEN, 0);
            return Ok(Some(Packet {
                hdr: Header::from_bytes(&b),
                payload: Vec::new(),
                used_len: u.len,
            }));
        }
        let hdr = Header::from_bytes(&bytes);
        let end = (HDR_LEN + hdr.len as usize).min(bytes.len());
        let pkt = Packet {
            hdr,
            payload: bytes[HDR_LEN..end].to_vec(),
            used_len: u.len,
        };
        if pkt.used_len as usize != HDR_LEN + hdr.len as usize {
            self.anomalies.push(format!(
                "used len {} != 44 + header len for {pkt:?}",
                pkt.used_len
            ));
        }
        if hdr.op == 0 || hdr.op > OP_CREDIT_REQUEST {
            self.anomalies.push(format!("bad op in {pkt:?}"));
        }
        if hdr.dst_cid != self.cfg.guest_cid {
            self.anomalies
                .push(format!("dst_cid is not the guest CID in {pkt:?}"));
        }
        Ok(Some(pkt))
    }

    /// Receives the next packet not claimed by a stream connection, raw (no dispatch of this
    /// packet), waiting up to `timeout`.
    pub fn recv_packet(&mut self, timeout: Duration) -> io::Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.raw_pending.pop_front() {
                return Ok(Some(p));
            }
            if let Some(p) = self.fetch_rx()? {
                if self.claims(&p) {
                    self.dispatch(p)?;
                    continue;
                }
                return Ok(Some(p));
            }
            self.reap_tx()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.idle(deadline);
        }
    }

    /// Receives the next raw packet or fails with a description of the timeout.
    pub fn expect_packet(&mut self, timeout: Duration) -> Packet {
        match self.recv_packet(timeout) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("no packet from the device within {timeout:?}"),
            Err(e) => panic!("rx error: {e}"),
        }
    }

    /// Receives raw packets until one satisfies `pred`; panics with the packets seen otherwise.
    pub fn expect_packet_where(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&Packet) -> bool,
    ) -> Packet {
        match self.recv_until(timeout, pred) {
            Ok((Some(p), _)) => p,
            Ok((None, seen)) => panic!("no {what} within {timeout:?}; saw {seen:?}"),
            Err(e) => panic!("rx error waiting for {what}: {e}"),
        }
    }

    /// Receives raw packets until one satisfies `pred` (others are returned in the vector).
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Packet) -> bool,
    ) -> io::Result<(Option<Packet>, Vec<Packet>)> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_packet(left)? {
                Some(p) if pred(&p) => return Ok((Some(p), skipped)),
                Some(p) => skipped.push(p),
                None => return Ok((None, skipped)),
            }
        }
    }

    /// Whether a stream connection (or listener) takes this packet.
    fn claims(&self, p: &Packet) -> bool {
        let id = ConnId {
            local_port: p.hdr.dst_port,
            peer_cid: p.hdr.src_cid,
            peer_port: p.hdr.src_port,
        };
        self.conns.contains_key(&id)
            || (p.hdr.op == OP_REQUEST && self.listening.contains(&p.hdr.dst_port))
    }

    /// Moves every completed rx packet to its connection (or the raw queue); services the
    /// event queue and reaps tx completions. Never blocks.
    pub fn pump(&mut self) -> io::Result<usize> {
        let mut n = 0;
        while let Some(p) = self.fetch_rx()? {
            n += 1;
            if self.claims(&p) {
                self.dispatch(p)?;
            } else {
                self.raw_pending.push_back(p);
            }
        }
        self.pump_events()?;
        self.reap_tx()?;
        Ok(n)
    }

    fn dispatch(&mut self, p: Packet) -> io::Result<()> {
        let id = ConnId {
            local_port: p.hdr.dst_port,
            peer_cid: p.hdr.src_cid,
            peer_port: p.hdr.src_port,
        };
        let mut reply: Option<(u16, u32)> = None;
        if let Some(c) = self.conns.get_mut(&id) {
            c.history.push(p.hdr);
            c.peer_buf_alloc = p.hdr.buf_alloc;
            c.peer_fwd_cnt = p.hdr.fwd_cnt;
            match p.hdr.op {
                OP_RESPONSE => {
                    if c.state == ConnState::Connecting {
                        c.state = ConnState::Established;
                    } else {
                        self.anomalies
                            .push(format!("RESPONSE on a {:?} connection: {p:?}", c.state));
                    }
                }
                OP_RW => {
                    let len = p.payload.len() as u32;
                    let credit = c.our_credit();
                    if len > credit {
                        c.credit_violation_bytes += (len - credit) as u64;
                    }
                    c.rx_cnt = c.rx_cnt.wrapping_add(len);
                    if c.type_ == TYPE_SEQPACKET {
                        c.seq_partial.extend_from_slice(&p.payload);
                        if p.hdr.flags & SEQ_EOM != 0 {
                            let msg = std::mem::take(&mut c.seq_partial);
                            c.rx_msgs.push_back((msg, p.hdr.flags));
                        }
                    } else {
                        c.rx_data.extend(p.payload.iter());
                    }
                }
                OP_SHUTDOWN => c.peer_shutdown |= p.hdr.flags,
                OP_RST => c.state = ConnState::Reset,
                OP_CREDIT_REQUEST if self.cfg.answer_credit_request => {
                    reply = Some((OP_CREDIT_UPDATE, 0))
                }
                OP_CREDIT_REQUEST => {}
                OP_CREDIT_UPDATE => {}
                _ => self
                    .anomalies
                    .push(format!("unexpected packet on {id:?}: {p:?}")),
            }
        } else if p.hdr.op == OP_REQUEST {
            self.incoming.push_back(p);
        } else {
            self.raw_pending.push_back(p);
        }
        if let Some((op, flags)) = reply {
            self.send_ctrl(id, op, flags)?;
        }
        Ok(())
    }

    fn pump_events(&mut self) -> io::Result<()> {
        let Some(evq) = self.evq.as_mut() else {
            return Ok(());
        };
        while let Some(u) = evq.pop_used()? {
            let Some(gpa) = self.ev_chains.remove(&u.head) else {
                self.anomalies
                    .push(format!("event used head {} unknown", u.head));
                continue;
            };
            let mut b = [0u8; 4];
            self.mem.read(gpa, &mut b);
            if u.len != 4 {
                self.anomalies
                    .push(format!("event used len {} (expected 4)", u.len));
            }
            let id = u32::from_le_bytes(b);
            if id == EVENT_TRANSPORT_RESET {
                // As Linux's virtio_vsock_event_handle → virtio_vsock_reset_sock over
                // vsock_for_each_connected_socket: every *connected* socket is reset
                // (ECONNRESET); one still connecting is not in that table and waits for its
                // RESPONSE or RST.
                for c in self.conns.values_mut() {
                    if c.state == ConnState::Established {
                        c.state = ConnState::Reset;
                    }
                }
            }
            self.events.push_back(id);
            self.mem.write(gpa, &0xffff_ffffu32.to_le_bytes());
            let head = evq
                .push(&[Buf {
                    gpa,
                    len: 4,
                    writable: true,
                }])
                .unwrap();
            self.ev_chains.insert(head, gpa);
            evq.kick();
        }
        Ok(())
    }

    /// Waits for the next event-queue event id (crosvm mode).
    pub fn recv_event(&mut self, timeout: Duration) -> io::Result<Option<u32>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump()?;
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.idle(deadline);
        }
    }

    /// The three rings' indices, for failure messages.
    pub fn describe_rings(&self) -> String {
        let mut v = vec![self.rxq.describe(), self.txq.describe()];
        if let Some(q) = &self.evq {
            v.push(q.describe());
        }
        v.join("; ")
    }

    /// Waits up to `d` for an interrupt on any queue (or the timeout); drains the eventfds.
    pub fn wait_activity(&self, d: Duration) {
        let mut queues = vec![&self.rxq, &self.txq];
        if let Some(q) = &self.evq {
            queues.push(q);
        }
        let mut fds: Vec<libc::pollfd> = queues
            .iter()
            .map(|q| libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&q.call),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        for q in queues {
            let _ = q.call.read();
        }
    }

    /// Sleeps until the next interrupt, at most until `deadline`; in polling mode (the default)
    /// at most 5 ms, so a missing interrupt costs time but never a hang.
    fn idle(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if self.cfg.interrupt_only {
            self.wait_activity(left);
        } else {
            self.wait_activity(left.min(Duration::from_millis(5)));
        }
    }

    /// Pumps for `d`, collecting everything.
    pub fn pump_for(&mut self, d: Duration) -> io::Result<()> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.pump()? == 0 {
                self.idle(deadline);
            }
        }
        Ok(())
    }

    /// Pumps until `cond` holds or `timeout` passes; returns whether it held.
    pub fn pump_until(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump()?;
            if cond(self) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.idle(deadline);
        }
    }

    // ---------------------------------------------------------------- stream API

    /// A header from the guest for `id`, carrying the connection's current credit.
    pub fn header(&self, id: ConnId, op: u16, len: u32, flags: u32) -> Header {
        let c = self.conns.get(&id);
        Header {
            src_cid: self.cfg.guest_cid,
            dst_cid: id.peer_cid,
            src_port: id.local_port,
            dst_port: id.peer_port,
            len,
            type_: c.map(|c| c.type_).unwrap_or(TYPE_STREAM),
            op,
            flags,
            buf_alloc: c.map(|c| c.buf_alloc).unwrap_or(self.cfg.buf_alloc),
            fwd_cnt: c.map(|c| c.fwd_cnt).unwrap_or(0),
        }
    }

    /// Sends a control packet (no payload) on `id`.
    pub fn send_ctrl(&mut self, id: ConnId, op: u16, flags: u32) -> io::Result<()> {
        let hdr = self.header(id, op, 0, flags);
        if let Some(c) = self.conns.get_mut(&id) {
            c.last_advertised_fwd = c.fwd_cnt;
        }
        self.send_packet(&hdr, &[])
    }

    /// A fresh local port.
    pub fn alloc_port(&mut self) -> u32 {
        let p = self.next_port;
        self.next_port += 1;
        p
    }

    /// Sends a REQUEST to `peer_cid:peer_port` and returns at once.
    pub fn connect_start(
        &mut self,
        peer_cid: u64,
        peer_port: u32,
        type_: u16,
    ) -> io::Result<ConnId> {
        let id = ConnId {
            local_port: self.alloc_port(),
            peer_cid,
            peer_port,
        };
        self.conns
            .insert(id, Conn::new(id, type_, self.cfg.buf_alloc));
        self.send_ctrl(id, OP_REQUEST, 0)?;
        Ok(id)
    }

    /// Waits until `id` leaves the Connecting state; returns the new state.
    pub fn wait_connected(&mut self, id: ConnId, timeout: Duration) -> io::Result<ConnState> {
        self.pump_until(timeout, |d| d.conns[&id].state != ConnState::Connecting)?;
        Ok(self.conns[&id].state)
    }

    /// Connects to `peer_cid:peer_port`; Err(ConnectionRefused) on RST, TimedOut otherwise.
    pub fn connect(&mut self, peer_cid: u64, peer_port: u32, type_: u16) -> io::Result<ConnId> {
        let id = self.connect_start(peer_cid, peer_port, type_)?;
        match self.wait_connected(id, self.cfg.timeout)? {
            ConnState::Established => Ok(id),
            ConnState::Reset => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{id:?}: RST in reply to REQUEST"),
            )),
            s => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{id:?}: no RESPONSE within {:?} (state {s:?})",
                    self.cfg.timeout
                ),
            )),
        }
    }

    /// Starts claiming REQUESTs to `port` (the stream API's listen()).
    pub fn listen(&mut self, port: u32) {
        self.listening.insert(port);
        // REQUESTs already received raw become incoming.
        let mut keep = VecDeque::new();
        while let Some(p) = self.raw_pending.pop_front() {
            if p.hdr.op == OP_REQUEST && p.hdr.dst_port == port {
                self.incoming.push_back(p);
            } else {
                keep.push_back(p);
            }
        }
        self.raw_pending = keep;
    }

    /// Waits for a REQUEST to a listened port `port`.
    pub fn wait_request(&mut self, port: u32, timeout: Duration) -> io::Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump()?;
            if let Some(pos) = self.incoming.iter().position(|p| p.hdr.dst_port == port) {
                return Ok(self.incoming.remove(pos));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.idle(deadline);
        }
    }

    /// Accepts a REQUEST: creates the connection and sends RESPONSE.
    pub fn accept_request(&mut self, req: &Packet) -> io::Result<ConnId> {
        let id = ConnId {
            local_port: req.hdr.dst_port,
            peer_cid: req.hdr.src_cid,
            peer_port: req.hdr.src_port,
        };
        let mut c = Conn::new(id, req.hdr.type_, self.cfg.buf_alloc);
        c.state = ConnState::Established;
        c.peer_buf_alloc = req.hdr.buf_alloc;
        c.peer_fwd_cnt = req.hdr.fwd_cnt;
        c.history.push(req.hdr);
        self.conns.insert(id, c);
        self.send_ctrl(id, OP_RESPONSE, 0)?;
        Ok(id)
    }

    /// Refuses a REQUEST with RST.
    pub fn reject_request(&mut self, req: &Packet) -> io::Result<()> {
        let hdr = Header {
            src_cid: self.cfg.guest_cid,
            dst_cid: req.hdr.src_cid,
            src_port: req.hdr.dst_port,
            dst_port: req.hdr.src_port,
            len: 0,
            type_: req.hdr.type_,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        };
        self.send_packet(&hdr, &[])
    }

    /// Listens on `port`, waits for a REQUEST and accepts it.
    pub fn accept(&mut self, port: u32, timeout: Duration) -> io::Result<ConnId> {
        self.listen(port);
        let req = self.wait_request(port, timeout)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no REQUEST to port {port} within {timeout:?}"),
            )
        })?;
        self.accept_request(&req)
    }

    pub fn conn(&self, id: ConnId) -> &Conn {
        &self.conns[&id]
    }

    pub fn conn_mut(&mut self, id: ConnId) -> &mut Conn {
        self.conns.get_mut(&id).unwrap()
    }

    /// Sends as much of `data` as the peer's credit allows right now (RW packets of at most
    /// `max_payload`); returns the number of bytes sent.
    pub fn try_send(&mut self, id: ConnId, data: &[u8]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < data.len() {
            let credit = self.conns[&id].peer_credit() as usize;
            let n = (data.len() - sent).min(credit).min(self.cfg.max_payload);
            if n == 0 {
                break;
            }
            let hdr = self.header(id, OP_RW, n as u32, 0);
            {
                let c = self.conns.get_mut(&id).unwrap();
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.last_advertised_fwd = c.fwd_cnt;
            }
            self.send_packet(&hdr, &data[sent..sent + n])?;
            sent += n;
        }
        Ok(sent)
    }

    /// Sends all of `data`, waiting for credit (sends CREDIT_REQUEST when it runs out).
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut sent = 0;
        let mut asked = false;
        while sent < data.len() {
            let n = self.try_send(id, &data[sent..])?;
            sent += n;
            if sent == data.len() {
                break;
            }
            if n > 0 {
                asked = false;
            } else if !asked {
                self.send_ctrl(id, OP_CREDIT_REQUEST, 0)?;
                asked = true;
            }
            if self.conns[&id].state != ConnState::Established {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("{id:?} is {:?}", self.conns[&id].state),
                ));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{id:?}: no credit for {:?} after {sent} of {} bytes (peer buf_alloc {}, fwd_cnt {}, our tx_cnt {}); rings: {}; last packets: {:?}",
                        self.cfg.timeout,
                        data.len(),
                        self.conns[&id].peer_buf_alloc,
                        self.conns[&id].peer_fwd_cnt,
                        self.conns[&id].tx_cnt,
                        self.describe_rings(),
                        &self.conns[&id].history[self.conns[&id].history.len().saturating_sub(3)..]
                    ),
                ));
            }
            // Only sleep when the pump brought nothing: a CREDIT_UPDATE just processed must not
            // be followed by a wait for an interrupt that will never come.
            if self.pump()? > 0 || self.conns[&id].peer_credit() > 0 {
                continue;
            }
            self.idle(deadline);
        }
        Ok(())
    }

    /// Sends one SEQPACKET message (fragments of at most `max_payload`; EOM|EOR on the last).
    pub fn send_msg(&mut self, id: ConnId, data: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut off = 0;
        loop {
            let left = data.len() - off;
            let n = left.min(self.cfg.max_payload);
            if (self.conns[&id].peer_credit() as usize) < n {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no credit"));
                }
                if self.pump()? == 0 && (self.conns[&id].peer_credit() as usize) < n {
                    self.idle(deadline);
                }
                continue;
            }
            let last = off + n == data.len();
            let flags = if last { SEQ_EOM | SEQ_EOR } else { 0 };
            let hdr = self.header(id, OP_RW, n as u32, flags);
            {
                let c = self.conns.get_mut(&id).unwrap();
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.last_advertised_fwd = c.fwd_cnt;
            }
            self.send_packet(&hdr, &data[off..off + n])?;
            off += n;
            if last {
                return Ok(());
            }
        }
    }

    /// Marks `n` bytes consumed (fwd_cnt) and sends CREDIT_UPDATE when auto mode says so.
    fn consumed(&mut self, id: ConnId, n: usize) -> io::Result<()> {
        let c = self.conns.get_mut(&id).unwrap();
        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
        let unadvertised = c.fwd_cnt.wrapping_sub(c.last_advertised_fwd);
        if self.cfg.auto_credit_update
            && unadvertised > 0
            && unadvertised >= c.buf_alloc / 4
            && c.state == ConnState::Established
        {
            self.send_ctrl(id, OP_CREDIT_UPDATE, 0)?;
        }
        Ok(())
    }

    /// Sends a CREDIT_UPDATE on `id` now.
    pub fn credit_update(&mut self, id: ConnId) -> io::Result<()> {
        self.send_ctrl(id, OP_CREDIT_UPDATE, 0)
    }

    /// Takes up to `max` buffered bytes without waiting (updates fwd_cnt).
    pub fn take(&mut self, id: ConnId, max: usize) -> io::Result<Vec<u8>> {
        let c = self.conns.get_mut(&id).unwrap();
        let n = max.min(c.rx_data.len());
        let out: Vec<u8> = c.rx_data.drain(..n).collect();
        if n > 0 {
            self.consumed(id, n)?;
        }
        Ok(out)
    }

    /// Receives at least one byte (up to `max`) within `timeout`; empty on timeout or when the
    /// peer finished sending.
    pub fn recv(&mut self, id: ConnId, max: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        self.pump_until(timeout, |d| {
            let c = &d.conns[&id];
            !c.rx_data.is_empty() || c.peer_done()
        })?;
        self.take(id, max)
    }

    /// Receives exactly `n` bytes within `timeout` (fails with what arrived otherwise).
    pub fn recv_exact(&mut self, id: ConnId, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = self.recv(id, n - out.len(), left.min(Duration::from_millis(200)))?;
            if chunk.is_empty() {
                let c = &self.conns[&id];
                if c.peer_done() || left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{id:?}: got {} of {n} bytes (state {:?}, peer shutdown {:#x}); first bytes {:02x?}",
                            out.len(),
                            c.state,
                            c.peer_shutdown,
                            &out[..out.len().min(32)]
                        ),
                    ));
                }
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Receives until the peer shuts down its sending side (or resets), within `timeout`.
    pub fn recv_to_end(&mut self, id: ConnId, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = self.recv(id, usize::MAX, left.min(Duration::from_millis(200)))?;
            out.extend_from_slice(&chunk);
            if chunk.is_empty() && self.conns[&id].peer_done() && self.conns[&id].rx_data.is_empty()
            {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{id:?}: no end of stream after {} bytes", out.len()),
                ));
            }
        }
    }

    /// Receives the next SEQPACKET message (bytes, flags of its last fragment).
    pub fn recv_msg(
        &mut self,
        id: ConnId,
        timeout: Duration,
    ) -> io::Result<Option<(Vec<u8>, u32)>> {
        self.pump_until(timeout, |d| {
            let c = &d.conns[&id];
            !c.rx_msgs.is_empty() || c.peer_done()
        })?;
        let c = self.conns.get_mut(&id).unwrap();
        let m = c.rx_msgs.pop_front();
        if let Some((ref bytes, _)) = m {
            self.consumed(id, bytes.len())?;
        }
        Ok(m)
    }

    /// Sends SHUTDOWN with `flags` (RCV 1, SEND 2).
    pub fn shutdown(&mut self, id: ConnId, flags: u32) -> io::Result<()> {
        self.conn_mut(id).our_shutdown |= flags;
        self.send_ctrl(id, OP_SHUTDOWN, flags)
    }

    /// Sends RST and forgets nothing (the state becomes Closed).
    pub fn reset(&mut self, id: ConnId) -> io::Result<()> {
        self.send_ctrl(id, OP_RST, 0)?;
        self.conn_mut(id).state = ConnState::Closed;
        Ok(())
    }

    /// Sum of credit violations over all connections.
    pub fn credit_violations(&self) -> u64 {
        self.conns.values().map(|c| c.credit_violation_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_layout_split() {
        assert_eq!(TxLayout::Contiguous.split(100), vec![100]);
        assert_eq!(
            TxLayout::HeaderSeparate(3).split(44 + 10),
            vec![44, 4, 4, 2]
        );
        assert_eq!(TxLayout::HeaderSeparate(2).split(44), vec![44]);
        assert_eq!(
            TxLayout::Sizes(vec![10, 40, 1]).split(100),
            vec![10, 40, 50]
        );
        assert_eq!(TxLayout::Sizes(vec![10, 40, 1]).split(30), vec![10, 20]);
    }
}
