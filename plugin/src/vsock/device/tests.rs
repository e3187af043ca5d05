//! Unit tests of the device without a frontend process: host sockets are real Unix sockets in a
//! temporary directory; the device registers them in a test epoll set, whose events the tests
//! hand to the device as the worker does.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interests::{EventRegistry, Source};
use super::{DeviceConfig, VsockDevice};
use crate::config::OkReply;
use crate::host::sibling::SiblingRouter;
use crate::vsock::status::ConnKey;

/// A scratch directory removed when dropped.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vsock-dev-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn config(dir: &TempDir) -> DeviceConfig {
    DeviceConfig {
        guest_cid: 3,
        uds_path: dir.0.join("v"),
        buf_alloc: 64 * 1024,
        max_connections: 16,
        connect_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(2),
        connect_line_timeout: Duration::from_secs(5),
        ok_reply: OkReply::GuestPort,
    }
}

/// The worker's part: an epoll set the device registers its fds in.
struct TestEpoll(Arc<Epoll>);

impl EventRegistry for TestEpoll {
    fn ctl(&self, op: ControlOperation, fd: i32, event: EpollEvent) -> std::io::Result<()> {
        self.0.ctl(op, fd, event)
    }
}

thread_local! {
    /// The epoll set of this test's device (each test runs on its own thread).
    static EPOLL: std::cell::RefCell<Option<Arc<Epoll>>> = const { std::cell::RefCell::new(None) };
}

/// Hands the ready events of this test's epoll set to the device, as the worker does.
pub(super) fn handle_ready(dev: &mut VsockDevice, running: bool) {
    let Some(epoll) = EPOLL.with(|e| e.borrow().clone()) else {
        return;
    };
    let mut events = vec![EpollEvent::default(); 64];
    let n = epoll.wait(0, &mut events).unwrap();
    for ev in &events[..n] {
        dev.handle_event(ev.data(), ev.event_set(), running);
    }
}

/// A device for guest CID 3 with its hybrid listener at `<dir>/v`.
pub(super) fn device(dir: &TempDir) -> VsockDevice {
    let cfg = config(dir);
    let hybrid = UnixListener::bind(&cfg.uds_path).unwrap();
    hybrid.set_nonblocking(true).unwrap();
    let router = Arc::new(SiblingRouter::default());
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let sibling = router.register(cfg.guest_cid, Vec::new(), wake);
    let mut dev = VsockDevice::new(cfg, hybrid, router, sibling);
    let epoll = Arc::new(Epoll::new().unwrap());
    dev.attach_events(Box::new(TestEpoll(epoll.clone())))
        .unwrap();
    EPOLL.with(|e| *e.borrow_mut() = Some(epoll));
    dev.set_running(true);
    dev
}

/// Handles host events until `done` holds (bounded).
pub(super) fn poll_until(dev: &mut VsockDevice, mut done: impl FnMut(&VsockDevice) -> bool) {
    for _ in 0..200 {
        handle_ready(dev, true);
        if done(dev) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the device did not get there");
}

/// A host client that asked for `guest_port` and is now a (connecting) connection.
pub(super) fn host_client(dev: &mut VsockDevice, dir: &TempDir, guest_port: u32) -> UnixStream {
    let mut c = UnixStream::connect(dir.0.join("v")).unwrap();
    c.write_all(format!("connect {guest_port}\n").as_bytes())
        .unwrap();
    poll_until(dev, |d| {
        d.conns.iter().any(|c| c.key.guest_port == guest_port)
    });
    c
}

fn key_of(dev: &VsockDevice, guest_port: u32) -> ConnKey {
    dev.conns
        .iter()
        .find(|c| c.key.guest_port == guest_port)
        .unwrap()
        .key
}

/// Regression: an event taken from the kernel for a connection that was closed, handled after
/// its slot went to a new connection (same batch), must not touch the new connection. Before
/// tokens carried a generation, the hang-up of the old host socket marked the new one hung up
/// (its guest would have been told SHUTDOWN for a host peer that is still there).
#[test]
fn a_stale_event_does_not_reach_the_connection_that_reuses_its_slot() {
    let dir = TempDir::new("stale");
    let mut dev = device(&dir);
    let _first = host_client(&mut dev, &dir, 5000);
    let old_key = key_of(&dev, 5000);
    let slot = dev.conns.slot_of(&old_key).unwrap();
    let stale = Source::Conn {
        slot,
        generation: dev.conns.generation(slot),
    };
    assert!(dev.reset_connection(old_key));
    let _second = host_client(&mut dev, &dir, 5001);
    let new_key = key_of(&dev, 5001);
    assert_eq!(
        dev.conns.slot_of(&new_key),
        Some(slot),
        "the slot is reused"
    );

    // The old socket's hang-up, delivered late in the same batch.
    dev.dispatch(stale, EventSet::IN | EventSet::HANG_UP, true);
    let conn = dev.conns.get(slot).unwrap();
    assert_eq!(conn.key, new_key);
    assert!(
        !conn.state.host_hang_up_seen(),
        "the new connection was marked hung up"
    );
    assert!(
        !conn.is_host_readable(),
        "the new connection was marked readable"
    );

    // An event with the slot's current generation does reach it.
    let current = Source::Conn {
        slot,
        generation: dev.conns.generation(slot),
    };
    dev.dispatch(current, EventSet::IN | EventSet::HANG_UP, true);
    assert!(dev.conns.get(slot).unwrap().state.host_hang_up_seen());
}

/// The same for waiting host clients: an event for a client that was dropped does not reach
/// the client that took its index.
#[test]
fn a_stale_event_does_not_reach_the_client_that_reuses_its_index() {
    let dir = TempDir::new("stale-client");
    let mut dev = device(&dir);
    let first = UnixStream::connect(dir.0.join("v")).unwrap();
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 1);
    let old_generation = dev.clients[0].as_ref().unwrap().generation;
    drop(first);
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 0);
    let mut second = UnixStream::connect(dir.0.join("v")).unwrap();
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 1);
    assert!(dev.clients[0].is_some(), "index 0 is reused");
    // The old client's event must not make the device read the new one.
    second.write_all(b"connect 5000\n").unwrap();
    let stale = Source::Client {
        id: 0,
        generation: old_generation,
    };
    dev.dispatch(stale, EventSet::IN, true);
    assert!(dev.clients[0].is_some() && dev.conns.is_empty());
    // Its own event does.
    let current = Source::Client {
        id: 0,
        generation: dev.clients[0].as_ref().unwrap().generation,
    };
    dev.dispatch(current, EventSet::IN, true);
    assert_eq!(dev.conns.len(), 1);
}

// ----- the device against a mock guest driver ---------------------------------------------------

use std::io::Read;

use super::test_guest::{TestGuest, RX_PAYLOAD};
use crate::host::route::{
    ConnectionEvents, ConnectionLimits, HostRoute, PortLimits, RouteRequests,
};
use crate::virtio::EVENT_TRANSPORT_RESET;
use crate::vsock::packet::{shutdown, Op, PacketHeader};

const GUEST_PORT: u32 = 49152;
const HOST_PORT: u32 = 1234;
const GUEST_BUF: u32 = 64 * 1024;

/// A host service listening at `<uds>_<port>`.
fn listen(dir: &TempDir, port: u32) -> UnixListener {
    UnixListener::bind(dir.0.join(format!("v_{port}"))).unwrap()
}

/// A device, its scratch directory and a test guest.
fn fixture(tag: &str) -> (TempDir, VsockDevice, TestGuest) {
    let dir = TempDir::new(tag);
    let dev = device(&dir);
    (dir, dev, TestGuest::new())
}

/// The guest sends a header-only packet on the test connection (GUEST_PORT → HOST_PORT).
fn send_op(g: &mut TestGuest, dev: &mut VsockDevice, op: Op) {
    let h = g.hdr(GUEST_PORT, HOST_PORT, op, GUEST_BUF, 0);
    g.send(dev, h, &[]);
}

fn ops(packets: &[(PacketHeader, Vec<u8>)]) -> Vec<Op> {
    packets.iter().map(|(h, _)| h.op().unwrap()).collect()
}

/// A control plane that records route requests (answered by the test with `apply_route`).
#[derive(Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl RouteRequests for Recorder {
    fn request(&self, key: ConnKey) {
        self.0
            .lock()
            .unwrap()
            .push(format!("route {}", key.host_port));
    }
}

impl ConnectionEvents for Recorder {
    fn opened(&self, key: ConnKey, host_initiated: bool, _via_service: bool) {
        let who = if host_initiated { "host" } else { "guest" };
        self.0
            .lock()
            .unwrap()
            .push(format!("opened {} by {who}", key.host_port));
    }
    fn closed(&self, key: ConnKey, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("closed {}: {reason}", key.host_port));
    }
}

impl ConnectionLimits for Recorder {
    fn limits(&self, _port: u32) -> PortLimits {
        PortLimits::default()
    }
}

fn with_control(dev: &mut VsockDevice) -> Recorder {
    let r = Recorder::default();
    dev.attach_control(
        Box::new(r.clone()),
        Box::new(r.clone()),
        Box::new(r.clone()),
    );
    r
}

/// Guest REQUEST, routed by the control plane to a host socket: RESPONSE on rx. (A listener
/// at `<uds>_<port>` in this very process would be refused: the device never connects a guest
/// to its own process, see the test below.) Returns the host peer.
fn connected(dev: &mut VsockDevice, g: &mut TestGuest, dir: &TempDir) -> UnixStream {
    let control = with_control(dev);
    g.post_rx(4);
    g.send(
        dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Request, GUEST_BUF, 0),
        &[],
    );
    assert_eq!(control.take(), vec![format!("route {HOST_PORT}")]);
    assert!(
        g.received().is_empty(),
        "no RESPONSE before the route is known"
    );
    let (ours, host) = UnixStream::pair().unwrap();
    let key = ConnKey {
        host_port: HOST_PORT,
        guest_port: GUEST_PORT,
    };
    dev.apply_route(key, HostRoute::Stream(ours));
    g.pump(dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Response]);
    let (h, _) = &got[0];
    let ends = h.endpoints();
    assert_eq!(
        (ends.src_cid, ends.src_port, ends.dst_cid, ends.dst_port),
        (2, HOST_PORT, 3, GUEST_PORT)
    );
    assert_eq!(h.buf_alloc(), config(dir).buf_alloc);
    assert_eq!(control.take(), vec![format!("opened {HOST_PORT} by guest")]);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host
}

#[test]
fn guest_request_to_a_socket_of_the_plugin_process_itself_is_refused() {
    let (dir, mut dev, mut g) = fixture("ownproc");
    let listener = listen(&dir, HOST_PORT);
    listener.set_nonblocking(true).unwrap();
    g.post_rx(1);
    send_op(&mut g, &mut dev, Op::Request);
    assert_eq!(ops(&g.received()), vec![Op::Rst]);
    assert!(dev.conns.is_empty());
}

#[test]
fn guest_request_to_a_listening_host_socket_gets_a_response() {
    let (dir, mut dev, mut g) = fixture("request");
    let _host = connected(&mut dev, &mut g, &dir);
    assert_eq!(dev.stats.connections_opened, 1);
    assert!(dev.conns.iter().all(|c| c.is_established()));
}

#[test]
fn guest_request_without_a_listener_gets_rst() {
    let (_dir, mut dev, mut g) = fixture("norequest");
    g.post_rx(1);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, 999, Op::Request, GUEST_BUF, 0),
        &[],
    );
    assert_eq!(ops(&g.received()), vec![Op::Rst]);
    assert!(dev.conns.is_empty());
}

#[test]
fn data_goes_both_ways_and_credit_is_accounted() {
    let (dir, mut dev, mut g) = fixture("data");
    let mut host = connected(&mut dev, &mut g, &dir);

    // guest → host
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        b"hello host",
    );
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");

    // host → guest: the host socket's event, then the rx pass.
    host.write_all(b"hello guest").unwrap();
    poll_until(&mut dev, |d| d.conns.iter().any(|c| c.is_host_readable()));
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Rw]);
    let (h, payload) = &got[0];
    assert_eq!(payload, b"hello guest");
    // The header tells the guest what the host has consumed of its 10 bytes.
    assert_eq!(h.fwd_cnt(), 10);
    assert_eq!(h.buf_alloc(), config(&dir).buf_alloc);
}

#[test]
fn host_data_stops_at_the_guest_credit_and_resumes_on_credit_update() {
    let (dir, mut dev, mut g) = fixture("credit");
    let mut host = connected(&mut dev, &mut g, &dir);
    // The guest shrinks its buffer to 8 bytes.
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::CreditUpdate, 8, 0),
        &[],
    );
    host.write_all(b"0123456789abcdefghij").unwrap();
    poll_until(&mut dev, |d| d.conns.iter().any(|c| c.is_host_readable()));
    g.pump(&mut dev);
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Rw, Op::CreditRequest]);
    assert_eq!(got[0].1, b"01234567");
    // Nothing more until the guest says it consumed them.
    g.pump(&mut dev);
    assert!(g.received().is_empty());
    g.post_rx(2);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::CreditUpdate, 8, 8),
        &[],
    );
    let got = g.received();
    // Eight more, and a new request: "ghij" is still waiting.
    assert_eq!(ops(&got), vec![Op::Rw, Op::CreditRequest]);
    assert_eq!(got[0].1, b"89abcdef");
}

#[test]
fn credit_request_is_answered_with_the_bytes_forwarded() {
    let (dir, mut dev, mut g) = fixture("creditreq");
    let mut host = connected(&mut dev, &mut g, &dir);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        &[7u8; 100],
    );
    let mut sink = [0u8; 100];
    host.read_exact(&mut sink).unwrap();
    send_op(&mut g, &mut dev, Op::CreditRequest);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::CreditUpdate]);
    assert_eq!(got[0].0.fwd_cnt(), 100);
    assert_eq!(got[0].0.buf_alloc(), config(&dir).buf_alloc);
}

#[test]
fn guest_overrunning_its_credit_is_reset_on_both_sides() {
    let (dir, mut dev, mut g) = fixture("overrun");
    let mut host = connected(&mut dev, &mut g, &dir);
    // The host reads nothing and its socket is small: most of 64 KiB stays in our buffer.
    shrink_host_send_buffer(&dev);
    let buf_alloc = config(&dir).buf_alloc;
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        &vec![1u8; buf_alloc as usize],
    );
    let taken = dev.conns.iter().next().unwrap().credit().fwd_cnt;
    assert!(taken < buf_alloc, "the host socket took only part: {taken}");
    let _ = g.received();
    // Exactly our free space is fine; one byte more is an overrun.
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        &vec![2u8; taken as usize],
    );
    assert!(ops(&g.received()).iter().all(|&op| op == Op::CreditUpdate));
    assert_eq!(dev.conns.len(), 1);
    let taken2 = dev.conns.iter().next().unwrap().credit().fwd_cnt - taken;
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        &vec![3u8; taken2 as usize + 1],
    );
    assert_eq!(ops(&g.received()), vec![Op::Rst]);
    assert!(dev.conns.is_empty());
    // What the host socket took arrives, then EOF (the rest of our buffer is dropped with the RST).
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all.len() as u32, taken + taken2);
}

#[test]
fn guest_rst_closes_the_host_socket_without_an_answer() {
    let (dir, mut dev, mut g) = fixture("rst");
    let mut host = connected(&mut dev, &mut g, &dir);
    let control = with_control(&mut dev);
    send_op(&mut g, &mut dev, Op::Rst);
    assert_eq!(
        control.take(),
        vec![format!("closed {HOST_PORT}: reset by the guest")]
    );
    assert!(g.received().is_empty(), "an RST is never answered");
    assert!(dev.conns.is_empty());
    let mut buf = [0u8; 1];
    assert_eq!(
        host.read(&mut buf).unwrap(),
        0,
        "the host peer sees the close"
    );
}

/// Makes the (only) connection's host socket small, so that most guest bytes stay in our buffer
/// while the host reads nothing.
fn shrink_host_send_buffer(dev: &VsockDevice) {
    let conn = dev.conns.iter().next().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(conn.host().unwrap());
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt reads one c_int from `small`, which lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

fn shutdown_hdr(g: &TestGuest, flags: u32) -> PacketHeader {
    let mut h = g.hdr(GUEST_PORT, HOST_PORT, Op::Shutdown, GUEST_BUF, 0);
    h.set_flags(flags);
    h
}

#[test]
fn guest_half_close_reaches_the_host_which_may_still_write() {
    let (dir, mut dev, mut g) = fixture("guesthalf");
    let mut host = connected(&mut dev, &mut g, &dir);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        b"last",
    );
    g.send(&mut dev, shutdown_hdr(&g, shutdown::SEND), &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last", "the data, then EOF");
    host.write_all(b"reply").unwrap();
    poll_until(&mut dev, |d| d.conns.iter().any(|c| c.is_host_readable()));
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Rw]);
    assert_eq!(got[0].1, b"reply");
    // Data after its own SHUTDOWN(SEND) is a guest error: reset.
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        b"more",
    );
    assert_eq!(ops(&g.received()), vec![Op::Rst]);
    assert!(dev.conns.is_empty());
}

#[test]
fn host_half_close_reaches_the_guest_which_may_still_send_then_closes_with_rst() {
    let (dir, mut dev, mut g) = fixture("hosthalf");
    let mut host = connected(&mut dev, &mut g, &dir);
    host.write_all(b"bye").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    poll_until(&mut dev, |d| d.conns.iter().any(|c| c.is_host_readable()));
    g.pump(&mut dev);
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Rw, Op::Shutdown]);
    assert_eq!(got[0].1, b"bye");
    assert_eq!(got[1].0.flags(), shutdown::SEND);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        b"still here",
    );
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    // Guest SHUTDOWN(RCV|SEND) with nothing buffered: RST at once, the host sees EOF.
    g.send(&mut dev, shutdown_hdr(&g, shutdown::BOTH), &[]);
    assert_eq!(ops(&g.received()), vec![Op::Rst]);
    assert!(dev.conns.is_empty());
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn host_close_becomes_shutdown_both_and_the_guest_rst_ends_it() {
    let (dir, mut dev, mut g) = fixture("hostclose");
    let host = connected(&mut dev, &mut g, &dir);
    drop(host);
    poll_until(&mut dev, |d| d.conns.iter().any(|c| c.is_host_readable()));
    g.pump(&mut dev);
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Shutdown]);
    assert_eq!(got[0].0.flags(), shutdown::BOTH);
    assert!(dev.conns.iter().next().unwrap().state.is_closing());
    send_op(&mut g, &mut dev, Op::Rst);
    assert!(dev.conns.is_empty() && g.received().is_empty());
}

#[test]
fn host_initiated_connection_gets_ok_after_the_guest_response() {
    let (dir, mut dev, mut g) = fixture("hostinit");
    let mut client = host_client(&mut dev, &dir, 5000);
    g.post_rx(2);
    g.pump(&mut dev);
    let got = g.received();
    assert_eq!(ops(&got), vec![Op::Request]);
    let ends = got[0].0.endpoints();
    assert_eq!((ends.dst_cid, ends.dst_port), (3, 5000));
    let mut h = g.hdr(5000, ends.src_port, Op::Response, GUEST_BUF, 0);
    h.set_flags(0);
    g.send(&mut dev, h, &[]);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = [0u8; 8];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 5000\n");
    assert!(dev.conns.iter().all(|c| c.is_established()));
}

#[test]
fn transport_reset_is_posted_after_a_device_reset() {
    let (dir, mut dev, mut g) = fixture("reset");
    let mut host = connected(&mut dev, &mut g, &dir);
    dev.reset();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "host peers see the close");
    g.post_event();
    g.pump(&mut dev);
    assert_eq!(g.events(), vec![EVENT_TRANSPORT_RESET]);
    // Once only.
    g.post_event();
    g.pump(&mut dev);
    assert!(g.events().is_empty());
    let _ = RX_PAYLOAD;
}

/// RST from the guest ends a connection in every state, and is never answered.
#[test]
fn guest_rst_ends_a_connection_in_every_state() {
    let (dir, mut dev, mut g) = fixture("rstall");
    let _control = with_control(&mut dev);
    g.post_rx(8);

    // LocalInit: a host client's REQUEST, reset instead of answered.
    let mut client = host_client(&mut dev, &dir, 5000);
    g.pump(&mut dev);
    let req = g.received();
    assert_eq!(ops(&req), vec![Op::Request]);
    let local_port = req[0].0.src_port();
    g.send(
        &mut dev,
        g.hdr(5000, local_port, Op::Rst, GUEST_BUF, 0),
        &[],
    );
    assert!(dev.conns.is_empty());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "no OK line: the client is closed"
    );

    // PeerInit: the route is still pending; a late answer finds nothing.
    send_op(&mut g, &mut dev, Op::Request);
    assert!(matches!(
        dev.conns.iter().next().unwrap().state.state(),
        crate::vsock::status::State::PeerInit { .. }
    ));
    send_op(&mut g, &mut dev, Op::Rst);
    assert!(dev.conns.is_empty());
    let (ours, _host) = UnixStream::pair().unwrap();
    let key = ConnKey {
        host_port: HOST_PORT,
        guest_port: GUEST_PORT,
    };
    dev.apply_route(key, HostRoute::Stream(ours));
    g.pump(&mut dev);
    assert!(
        g.received().is_empty(),
        "no RESPONSE for a connection the guest reset"
    );
    assert!(dev.conns.is_empty());

    // Closing, after the guest shut down both ways while our buffer still held its bytes.
    let mut host = connected(&mut dev, &mut g, &dir);
    shrink_host_send_buffer(&dev);
    g.send(
        &mut dev,
        g.hdr(GUEST_PORT, HOST_PORT, Op::Rw, GUEST_BUF, 0),
        &[9u8; 60_000],
    );
    g.send(&mut dev, shutdown_hdr(&g, shutdown::BOTH), &[]);
    assert!(dev.conns.iter().next().unwrap().state.is_closing());
    let _ = g.received();
    send_op(&mut g, &mut dev, Op::Rst);
    assert!(g.received().is_empty());
    assert!(dev.conns.is_empty());
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert!(
        all.len() < 60_000,
        "an RST drops what the host had not taken"
    );
}
