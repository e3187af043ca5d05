//! The benchmark's guest: a lean virtio-vsock stream driver built from the test frontend's parts
//! ([`GuestMemory`] memfds, [`SplitQueue`] rings with eventfd kicks/calls, the QEMU handshake of
//! [`VhostUserClient`], [`Header`]). It plays QEMU + a Linux guest the way Linux does it:
//!
//! - rx: `rx_chains` single-descriptor buffers of header + 64 KiB (the Linux ≥ 6.2 shape, which
//!   both backends accept), re-posted as soon as a packet is consumed, one kick per batch;
//! - tx: one packet per write (at most 64 KiB payload and the peer's credit), by default header
//!   and payload in one descriptor (Linux ≥ 6.2 for linear buffers; the reference's
//!   `virtio-vsock` 0.10 rejects payloads split over several descriptors); kicks follow
//!   EVENT_IDX (`avail_event`) and are issued once per batch of packets;
//! - credit: `buf_alloc` 256 KiB (Linux's default) and Linux's CREDIT_UPDATE rule (send one when
//!   the free space the peer knows of drops below 64 KiB); CREDIT_REQUEST only after 10 ms with
//!   no credit;
//! - waiting: poll(2) on the call eventfds (interrupts), never a busy loop, so the driver leaves
//!   the second core to the backend.
//!
//! Received payloads are checksummed straight out of guest memory (no copy).
//!
//! [`Driver::Linux`] plays a real Linux 6.1 guest under QEMU/TCG instead, as `real-guest
//! --pattern` measured it (README, "Performance"): a kick per tx packet (1.03 packets per kick
//! measured guest→host), tx packets of up to 64 KiB, rx buffers of 4 KiB (3.6 KB per packet
//! measured), an interrupt asked for after every completion (0.97 tx signals per packet), rx
//! handled in passes of at most [`LINUX_RX_BUDGET`] packets with one CREDIT_UPDATE per pass
//! (6.1 sends one after every socket read: 1 per 27 rx packets measured), a CREDIT_UPDATE and
//! the next write going out under one kick (2 packets per kick in round trips), and the guest's
//! own pace: it moves at most [`GuestOpts::pace_mbps`] (TCG's ~135 MB/s), sleeping on the
//! interrupt eventfds in between instead of queueing a big batch.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frontend::guest_memory::GuestMemory;
use crate::frontend::split_queue::{Buf, KickPolicy, SplitQueue};
use crate::frontend::vhost_user_client::{Negotiated, QemuOptions, VhostUserClient, F_EVENT_IDX};
use crate::frontend::vsock_packet::*;

use super::util::Sum64;

/// Largest payload per packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT: usize = 64 * 1024;

/// How a tx packet is laid out in descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxShape {
    /// Header and payload in one descriptor.
    Single,
    /// Header descriptor, then the payload in 4 KiB page descriptors (Linux 6.12 nonlinear
    /// skbs for writes over 32 KiB).
    Paged,
}

/// How the guest driver feeds the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// As many packets per kick as credit and ring allow; rx in 64 KiB buffers; no pacing.
    Batch,
    /// A real Linux guest's pattern (see the module doc).
    Linux,
}

/// Rx packets a [`Driver::Linux`] guest handles per pass (per socket read); measured ~27–32.
pub const LINUX_RX_BUDGET: usize = 32;
/// A TCG Linux 6.1 guest's own rate (MB/s), both directions (real-guest --measure: 135 / 134).
pub const LINUX_PACE_MBPS: f64 = 135.0;

#[derive(Debug, Clone)]
pub struct GuestOpts {
    pub driver: Driver,
    /// Payload bytes per rx buffer (header excluded).
    pub rx_buf: usize,
    /// The guest moves at most this many MB/s of stream data (None: as fast as it can).
    pub pace_mbps: Option<f64>,
    pub queue_size: u16,
    pub rx_chains: usize,
    pub tx_blocks: usize,
    pub buf_alloc: u32,
    pub tx_shape: TxShape,
    /// Negotiate ACCESS_PLATFORM with IOTLB translation (identity IOVAs), IOTLB warmed up front.
    pub iotlb: bool,
    /// This guest's CID (the backend must be configured with the same).
    pub cid: u64,
    /// The CID every connection goes to: the host (2), or a sibling guest's CID.
    pub peer_cid: u64,
}

impl Default for GuestOpts {
    fn default() -> Self {
        GuestOpts {
            driver: Driver::Batch,
            rx_buf: MAX_PKT,
            pace_mbps: None,
            queue_size: 256,
            rx_chains: 128,
            tx_blocks: 96,
            buf_alloc: 256 * 1024,
            tx_shape: TxShape::Single,
            iotlb: false,
            cid: 3,
            peer_cid: HOST_CID,
        }
    }
}

impl GuestOpts {
    /// The [`Driver::Linux`] shape: 4 KiB rx buffers, TCG pace.
    pub fn linux() -> GuestOpts {
        GuestOpts {
            driver: Driver::Linux,
            rx_buf: 4096,
            pace_mbps: Some(LINUX_PACE_MBPS),
            ..GuestOpts::default()
        }
    }
}

/// A connection, keyed by (local port, peer port); the peer is always the host (CID 2).
pub type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Established,
    /// RST received.
    Reset,
}

/// Where received payload goes.
pub enum Sink {
    Checksum(Sum64),
    Buffer(Vec<u8>),
}

pub struct Conn {
    pub state: State,
    /// Closed by us without waiting (Linux's close()): forgotten when the RST arrives.
    pub closing: bool,
    pub sink: Sink,
    pub rx_total: u64,
    pub peer_shutdown: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    last_adv: u32,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Conn {
    fn new(buf_alloc: u32, sink: Sink) -> Self {
        Conn {
            state: State::Connecting,
            closing: false,
            sink,
            rx_total: 0,
            peer_shutdown: 0,
            buf_alloc,
            fwd_cnt: 0,
            last_adv: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// Driver counters (for the report's notes).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub credit_updates_sent: u64,
    pub credit_requests_sent: u64,
    pub waits: u64,
    /// Device notifications (call eventfd writes by the backend), rx and tx queue.
    pub irq_rx: u64,
    pub irq_tx: u64,
}

pub struct Guest {
    pub client: VhostUserClient,
    pub mem: Arc<GuestMemory>,
    pub rxq: SplitQueue,
    pub txq: SplitQueue,
    pub negotiated: Negotiated,
    pub opts: GuestOpts,
    pub counters: Counters,
    cid: u64,
    rx_gpa: Vec<u64>,
    rx_len: u32,
    tx_free: Vec<u64>,
    tx_block_of: Vec<u64>,
    pub conns: HashMap<Key, Conn>,
    listen_port: Option<u32>,
    requests: VecDeque<Header>,
    /// Control packets waiting for a tx slot.
    ctrl_out: VecDeque<Header>,
    next_port: u32,
    /// Connections closed with [`Guest::close_nowait`] still waiting for their RST.
    closing: usize,
    /// Linux driver: connections that received data in the current rx pass (one CREDIT_UPDATE
    /// each at its end).
    credit_due: Vec<Key>,
    /// Pacing clock: when the paced transfer started.
    pace_start: Option<Instant>,
}

fn to(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg)
}

impl Guest {
    /// Connects to the backend's vhost-user socket, builds 96 MiB of guest RAM (QEMU's two-region
    /// layout), the rings and buffers, and runs QEMU's handshake with whatever features and
    /// protocol features the backend offers (within what QEMU knows).
    pub fn start(socket: &Path, opts: GuestOpts) -> io::Result<Guest> {
        let mut client = VhostUserClient::connect(socket)?;
        let mem = Arc::new(GuestMemory::new(&[(0, 0xa0000), (0xc0000, 96 << 20)])?);
        mem.alloc(4096, 4096);
        let qs = opts.queue_size;
        let mut rxq = SplitQueue::new(mem.clone(), 0, qs)?;
        let mut txq = SplitQueue::new(mem.clone(), 1, qs)?;
        let rx_len = (HDR_LEN + opts.rx_buf.min(MAX_PKT)) as u32;
        let mut rx_gpa = vec![0u64; qs as usize];
        for _ in 0..opts.rx_chains.min(qs as usize) {
            let gpa = mem.alloc(rx_len as u64, 4096);
            let head = rxq
                .push(&[Buf {
                    gpa,
                    len: rx_len,
                    writable: true,
                }])
                .expect("rx descriptor");
            rx_gpa[head as usize] = gpa;
        }
        let block = (4096 + MAX_PKT) as u64;
        let tx_free = (0..opts.tx_blocks)
            .map(|_| mem.alloc(block, 4096))
            .collect();
        let setups = [rxq.setup(), txq.setup()];
        let negotiated = if opts.iotlb {
            crate::frontend::iotlb::handshake_translated(&mut client, &mem, &setups, None, true)?
        } else {
            client.handshake_qemu(&mem, &setups, &QemuOptions::default())?
        };
        let event_idx = negotiated.features & F_EVENT_IDX != 0;
        for q in [&mut rxq, &mut txq] {
            q.event_idx = event_idx;
            q.kick_policy = if event_idx {
                KickPolicy::EventIdx
            } else {
                KickPolicy::Always
            };
        }
        rxq.notify();
        txq.notify();
        Ok(Guest {
            client,
            mem,
            rxq,
            txq,
            negotiated,
            counters: Counters::default(),
            cid: opts.cid,
            rx_gpa,
            rx_len,
            tx_free,
            tx_block_of: vec![0; qs as usize],
            conns: HashMap::new(),
            listen_port: None,
            requests: VecDeque::new(),
            ctrl_out: VecDeque::new(),
            next_port: 40000,
            closing: 0,
            credit_due: Vec::new(),
            pace_start: None,
            opts,
        })
    }

    fn header(&self, key: Key, op: u16, len: u32, flags: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map(|c| (c.buf_alloc, c.fwd_cnt))
            .unwrap_or((self.opts.buf_alloc, 0));
        Header {
            src_cid: self.cid,
            dst_cid: self.opts.peer_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    // ------------------------------------------------------------------ rings

    fn reap_tx(&mut self) -> io::Result<()> {
        while let Some(u) = self.txq.pop_used()? {
            self.tx_free.push(self.tx_block_of[u.head as usize]);
        }
        Ok(())
    }

    /// Queues one packet on the tx ring without kicking; false when no tx slot is free.
    fn push_tx(&mut self, hdr: &Header, payload: &[u8]) -> io::Result<bool> {
        if self.tx_free.is_empty() || self.txq.num_free() < 1 + payload.len().div_ceil(4096) {
            self.reap_tx()?;
        }
        let shape = if payload.is_empty() {
            TxShape::Single
        } else {
            self.opts.tx_shape
        };
        let ndesc = match shape {
            TxShape::Single => 1,
            TxShape::Paged => 1 + payload.len().div_ceil(4096),
        };
        if self.tx_free.is_empty() || self.txq.num_free() < ndesc {
            return Ok(false);
        }
        let blk = self.tx_free.pop().unwrap();
        self.mem.write(blk, &hdr.to_bytes());
        let head = match shape {
            TxShape::Single => {
                if !payload.is_empty() {
                    self.mem.write(blk + HDR_LEN as u64, payload);
                }
                self.txq.push(&[Buf {
                    gpa: blk,
                    len: (HDR_LEN + payload.len()) as u32,
                    writable: false,
                }])
            }
            TxShape::Paged => {
                let data = blk + 4096;
                self.mem.write(data, payload);
                let mut bufs = vec![Buf {
                    gpa: blk,
                    len: HDR_LEN as u32,
                    writable: false,
                }];
                let mut off = 0usize;
                while off < payload.len() {
                    let n = (payload.len() - off).min(4096);
                    bufs.push(Buf {
                        gpa: data + off as u64,
                        len: n as u32,
                        writable: false,
                    });
                    off += n;
                }
                self.txq.push(&bufs)
            }
        }
        .expect("tx descriptors");
        self.tx_block_of[head as usize] = blk;
        self.counters.tx_packets += 1;
        Ok(true)
    }

    /// Sends queued control packets while tx slots last; returns whether any was queued.
    fn flush_ctrl(&mut self) -> io::Result<bool> {
        let mut any = false;
        while let Some(h) = self.ctrl_out.front().copied() {
            // The credit fields go out current.
            let mut h = h;
            if let Some(c) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
                h.fwd_cnt = c.fwd_cnt;
                h.buf_alloc = c.buf_alloc;
                c.last_adv = c.fwd_cnt;
            }
            if !self.push_tx(&h, &[])? {
                break;
            }
            self.ctrl_out.pop_front();
            any = true;
        }
        Ok(any)
    }

    /// Queues a control packet (sent at the next [`Self::poll`] or kick).
    pub fn ctrl(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.header(key, op, 0, flags);
        self.ctrl_out.push_back(h);
    }

    /// Pushes queued control packets and kicks the tx ring (per EVENT_IDX).
    pub fn kick_tx(&mut self) -> io::Result<()> {
        self.flush_ctrl()?;
        self.txq.kick();
        Ok(())
    }

    /// Processes every completed rx packet (re-posting the buffers, one rx kick), reaps tx and
    /// sends due control packets. Returns the number of packets received.
    pub fn poll(&mut self) -> io::Result<usize> {
        let mut n = 0;
        let mem = self.mem.clone();
        let linux = self.opts.driver == Driver::Linux;
        while let Some(u) = self.rxq.pop_used()? {
            let gpa = self.rx_gpa[u.head as usize];
            let mut hb = [0u8; HDR_LEN];
            mem.read(gpa, &mut hb);
            let hdr = Header::from_bytes(&hb);
            let avail = (u.len as usize).saturating_sub(HDR_LEN);
            let len = (hdr.len as usize).min(avail).min(self.opts.rx_buf);
            let ptr = mem
                .host_ptr(gpa + HDR_LEN as u64, len as u64)
                .expect("rx buffer in guest memory");
            // SAFETY: the buffer lies in our mapping and the device has finished with it (it is
            // in the used ring and not re-posted yet).
            let payload = unsafe { std::slice::from_raw_parts(ptr, len) };
            self.handle(&hdr, payload);
            let head = self
                .rxq
                .push(&[Buf {
                    gpa,
                    len: self.rx_len,
                    writable: true,
                }])
                .expect("rx descriptor");
            self.rx_gpa[head as usize] = gpa;
            n += 1;
            if linux && n >= LINUX_RX_BUDGET {
                break;
            }
        }
        if n > 0 {
            self.counters.rx_packets += n as u64;
            self.rxq.kick();
        }
        for key in std::mem::take(&mut self.credit_due) {
            self.counters.credit_updates_sent += 1;
            let h = self.header(key, OP_CREDIT_UPDATE, 0, 0);
            self.ctrl_out.push_back(h);
        }
        self.reap_tx()?;
        // Linux queues control packets for its tx worker: they go out with the next kick.
        if !self.ctrl_out.is_empty() && self.flush_ctrl()? && !linux {
            self.txq.kick();
        }
        Ok(n)
    }

    fn handle(&mut self, hdr: &Header, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op == OP_REQUEST && Some(hdr.dst_port) == self.listen_port {
                self.requests.push_back(*hdr);
            } else if hdr.op != OP_RST {
                // Unknown connection: answer with RST as Linux does.
                let mut h = self.header(key, OP_RST, 0, 0);
                h.buf_alloc = 0;
                self.ctrl_out.push_back(h);
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RESPONSE if c.state == State::Connecting => c.state = State::Established,
            OP_RW => {
                match &mut c.sink {
                    Sink::Checksum(h) => h.update(payload),
                    Sink::Buffer(b) => b.extend_from_slice(payload),
                }
                c.rx_total += payload.len() as u64;
                // Consumed at once; Linux's rule for a CREDIT_UPDATE (6.1: one per read, here
                // one per rx pass; newer kernels: when the free space drops below 64 KiB).
                c.fwd_cnt = c.fwd_cnt.wrapping_add(payload.len() as u32);
                let free = c
                    .buf_alloc
                    .saturating_sub(c.fwd_cnt.wrapping_sub(c.last_adv));
                if self.opts.driver == Driver::Linux {
                    if !self.credit_due.contains(&key) {
                        c.last_adv = c.fwd_cnt;
                        self.credit_due.push(key);
                    }
                } else if free < MAX_PKT as u32 {
                    c.last_adv = c.fwd_cnt;
                    self.counters.credit_updates_sent += 1;
                    let h = self.header(key, OP_CREDIT_UPDATE, 0, 0);
                    self.ctrl_out.push_back(h);
                }
            }
            OP_CREDIT_REQUEST => {
                let h = self.header(key, OP_CREDIT_UPDATE, 0, 0);
                self.ctrl_out.push_back(h);
            }
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN => c.peer_shutdown |= hdr.flags,
            OP_RST => {
                c.state = State::Reset;
                if c.closing {
                    self.conns.remove(&key);
                    self.closing -= 1;
                }
            }
            _ => {}
        }
    }

    /// Waits for an interrupt (either call eventfd) for at most `d` (µs resolution); drains
    /// them. Tx packets still unkicked go out first.
    pub fn wait(&mut self, d: Duration) {
        self.txq.kick();
        self.counters.waits += 1;
        let mut fds = [
            libc::pollfd {
                fd: self.rxq.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.txq.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // SAFETY: two valid pollfds and a valid timespec; no signal mask.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if r > 0 {
            self.drain_interrupts();
        }
    }

    /// Reads both call eventfds (non-blocking); the values are the backend's notification
    /// counts since the last read.
    pub fn drain_interrupts(&mut self) {
        self.counters.irq_rx += self.rxq.call.read().unwrap_or(0);
        self.counters.irq_tx += self.txq.call.read().unwrap_or(0);
    }

    /// A paced guest that has moved `done` bytes since its transfer started waits (taking
    /// interrupts as they come, handling rx only after the wait) until its rate allows more.
    fn pace(&mut self, done: u64) -> io::Result<()> {
        let Some(mbps) = self.opts.pace_mbps else {
            return Ok(());
        };
        let start = *self.pace_start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs_f64(done as f64 / (mbps * 1e6));
        loop {
            let now = Instant::now();
            if now >= due {
                return Ok(());
            }
            self.wait(due - now);
            if self.opts.driver == Driver::Linux {
                // Linux's tx-done work reclaims on the interrupt and re-enables callbacks: the
                // device is asked for an interrupt on the next completion again (0.97 per
                // packet measured).
                self.reap_tx()?;
            }
        }
    }

    /// (device notifications, driver kicks) so far.
    pub fn notifications(&mut self) -> (u64, u64) {
        self.drain_interrupts();
        (
            self.counters.irq_rx + self.counters.irq_tx,
            self.rxq.kicks_sent + self.txq.kicks_sent,
        )
    }

    /// Polls until `cond` holds, waiting for interrupts in between; `what` names the wait in the
    /// timeout error.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Guest) -> bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.poll()?;
            if cond(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(to(format!("timeout ({timeout:?}) waiting for {what}")));
            }
            if n == 0 {
                self.wait((deadline - now).min(Duration::from_millis(50)));
            }
        }
    }

    // ------------------------------------------------------------------ stream API

    /// Connects to host port `port`; returns once RESPONSE arrived.
    pub fn connect(&mut self, port: u32, sink: Sink, timeout: Duration) -> io::Result<Key> {
        let key = self.connect_start(port, sink)?;
        self.poll_until(timeout, "RESPONSE", |g| {
            g.conns[&key].state != State::Connecting
        })?;
        match self.conns[&key].state {
            State::Established => Ok(key),
            s => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connect to host port {port}: {s:?}"),
            )),
        }
    }

    /// Sends a REQUEST to host port `port` (kicked) and returns at once.
    pub fn connect_start(&mut self, port: u32, sink: Sink) -> io::Result<Key> {
        let key = (self.next_port, port);
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        self.conns.insert(key, Conn::new(self.opts.buf_alloc, sink));
        self.ctrl(key, OP_REQUEST, 0);
        self.kick_tx()?;
        Ok(key)
    }

    /// Waits for a REQUEST to `port` and accepts it.
    pub fn accept(&mut self, port: u32, sink: Sink, timeout: Duration) -> io::Result<Key> {
        self.listen_port = Some(port);
        self.poll_until(timeout, "REQUEST", |g| !g.requests.is_empty())?;
        let req = self.requests.pop_front().unwrap();
        let key = (req.dst_port, req.src_port);
        let mut c = Conn::new(self.opts.buf_alloc, sink);
        c.state = State::Established;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        self.conns.insert(key, c);
        self.ctrl(key, OP_RESPONSE, 0);
        self.kick_tx()?;
        Ok(key)
    }

    /// Resets the connection (RST) and forgets it at once.
    pub fn abort(&mut self, key: Key) -> io::Result<()> {
        self.ctrl(key, OP_RST, 0);
        self.conns.remove(&key);
        self.kick_tx()
    }

    /// Closes as Linux's close() does: SHUTDOWN(RCV|SEND), then waits for the peer's RST.
    pub fn close(&mut self, key: Key, timeout: Duration) -> io::Result<()> {
        self.ctrl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
        self.kick_tx()?;
        let r = self.poll_until(timeout, "RST after SHUTDOWN", |g| {
            g.conns[&key].state == State::Reset
        });
        self.conns.remove(&key);
        r
    }

    /// Closes as Linux's close() does without SO_LINGER: sends SHUTDOWN(RCV|SEND) and returns;
    /// the connection is forgotten when the device's RST arrives (see [`Self::closing`]).
    pub fn close_nowait(&mut self, key: Key) -> io::Result<()> {
        self.ctrl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
        self.kick_tx()?;
        let c = self.conn_mut(key);
        if c.state == State::Reset {
            self.conns.remove(&key);
        } else {
            c.closing = true;
            self.closing += 1;
        }
        Ok(())
    }

    /// Connections closed with [`Self::close_nowait`] whose RST has not arrived yet.
    pub fn closing(&self) -> usize {
        self.closing
    }

    pub fn conn(&self, key: Key) -> &Conn {
        &self.conns[&key]
    }

    pub fn conn_mut(&mut self, key: Key) -> &mut Conn {
        self.conns.get_mut(&key).unwrap()
    }

    /// Sends `total` bytes produced by `bytes(off, len)` in writes of `write` bytes (each write
    /// one packet when credit allows, else split at the credit, as Linux does). Fails after
    /// `stall` without progress.
    pub fn send_stream<'a>(
        &mut self,
        key: Key,
        total: u64,
        write: usize,
        stall: Duration,
        bytes: impl Fn(u64, usize) -> &'a [u8],
    ) -> io::Result<()> {
        let write = write.min(MAX_PKT);
        let linux = self.opts.driver == Driver::Linux;
        self.pace_start = None;
        let mut sent = 0u64;
        let mut in_write = 0usize; // bytes of the current write already sent
        let mut last_progress = Instant::now();
        let mut asked = false;
        while sent < total {
            let mut queued = false;
            loop {
                let c = &self.conns[&key];
                if c.state != State::Established {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("connection {:?} after {sent} bytes", c.state),
                    ));
                }
                let this_write = ((total - sent) as usize + in_write).min(write);
                let n = (this_write - in_write).min(c.peer_credit() as usize);
                if n == 0 {
                    break;
                }
                let hdr = {
                    let mut h = self.header(key, OP_RW, n as u32, 0);
                    h.fwd_cnt = c.fwd_cnt;
                    h
                };
                if !self.push_tx(&hdr, bytes(sent, n))? {
                    break;
                }
                let c = self.conns.get_mut(&key).unwrap();
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.last_adv = c.fwd_cnt;
                sent += n as u64;
                in_write += n;
                if in_write == this_write {
                    in_write = 0;
                }
                queued = true;
                if linux {
                    // One packet per kick, then the guest's own pace.
                    self.txq.kick();
                    self.pace(sent)?;
                }
                if sent == total {
                    break;
                }
            }
            if queued {
                self.txq.kick();
                last_progress = Instant::now();
                asked = false;
            }
            if sent == total {
                break;
            }
            let got = self.poll()?;
            if got > 0 || queued {
                continue;
            }
            let idle = last_progress.elapsed();
            if idle > stall {
                return Err(to(format!(
                    "guest→host stalled for {stall:?} after {sent} of {total} bytes (peer credit {}, {})",
                    self.conns[&key].peer_credit(),
                    self.txq.describe()
                )));
            }
            if !asked && idle > Duration::from_millis(10) && self.conns[&key].peer_credit() == 0 {
                self.ctrl(key, OP_CREDIT_REQUEST, 0);
                self.counters.credit_requests_sent += 1;
                self.kick_tx()?;
                asked = true;
            }
            self.wait(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until every tx packet was returned by the device.
    pub fn drain_tx(&mut self, timeout: Duration) -> io::Result<()> {
        self.poll_until(timeout, "tx completions", |g| g.txq.num_in_flight() == 0)
    }

    /// Receives until `key` has `total` bytes in all; fails after `stall` without progress.
    pub fn recv_stream(&mut self, key: Key, total: u64, stall: Duration) -> io::Result<()> {
        let mut last = (0u64, Instant::now());
        self.pace_start = None;
        loop {
            let n = self.poll()?;
            let c = &self.conns[&key];
            if c.rx_total >= total {
                self.txq.kick();
                return Ok(());
            }
            if n > 0 && self.opts.pace_mbps.is_some() {
                // The pass's CREDIT_UPDATE goes out, then the guest takes its time.
                let got = c.rx_total;
                self.txq.kick();
                self.pace(got)?;
                continue;
            }
            if c.state == State::Reset {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("RST after {} of {total} bytes", c.rx_total),
                ));
            }
            if c.rx_total != last.0 {
                last = (c.rx_total, Instant::now());
            } else if last.1.elapsed() > stall {
                return Err(to(format!(
                    "host→guest stalled for {stall:?} after {} of {total} bytes ({})",
                    c.rx_total,
                    self.rxq.describe()
                )));
            }
            if n == 0 {
                self.wait(Duration::from_millis(20));
            }
        }
    }

    /// Sends `data` (≤ 64 KiB, within credit) as one packet and kicks.
    pub fn send_small(&mut self, key: Key, data: &[u8], timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = &self.conns[&key];
            if c.peer_credit() as usize >= data.len() {
                let hdr = self.header(key, OP_RW, data.len() as u32, 0);
                if self.push_tx(&hdr, data)? {
                    let c = self.conns.get_mut(&key).unwrap();
                    c.tx_cnt = c.tx_cnt.wrapping_add(data.len() as u32);
                    c.last_adv = c.fwd_cnt;
                    self.txq.kick();
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(to("no credit or tx slot for a small send".into()));
            }
            if self.poll()? == 0 {
                self.wait(Duration::from_millis(5));
            }
        }
    }

    /// Waits until `key`'s buffer sink holds `n` bytes and takes them.
    pub fn recv_small(&mut self, key: Key, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        self.poll_until(timeout, "small receive", |g| match &g.conns[&key].sink {
            Sink::Buffer(b) => b.len() >= n,
            Sink::Checksum(_) => true,
        })?;
        match &mut self.conn_mut(key).sink {
            Sink::Buffer(b) => Ok(b.drain(..n).collect()),
            Sink::Checksum(_) => Err(io::Error::other("not a buffer sink")),
        }
    }
}
