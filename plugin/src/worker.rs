//! One VM's event loop: a single thread owning the frontend session, the device and every host
//! socket of that VM, so the data path needs no locks. It waits on one epoll set; events are
//! identified by [`token::Token`].
//!
//! The loop never blocks on a peer: host sockets are non-blocking; a vhost-user message is read
//! whole under a receive timeout (a frontend that stalls mid-message is dropped).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{Request, VmControl, VmReport};
use crate::vhost_user::features::{NUM_QUEUES, RX_QUEUE, VIRTIO_VSOCK_F_SEQPACKET};
use crate::vhost_user::listener::FrontendListener;
use crate::vhost_user::session::{FrontendSession, SessionConfig};
use crate::vsock::device::{Rings, VsockDevice};
use vsock_plugin_ipc::proto::control::DeviceState;

/// Epoll tokens: small constants for the fixed fds; host sockets carry their slot in the low
/// 32 bits with the kind above.
pub mod token {
    const FRONTEND_LISTENER: u64 = 1;
    const FRONTEND: u64 = 2;
    const HYBRID_LISTENER: u64 = 3;
    const WAKE: u64 = 4;
    const BACKEND_CHANNEL: u64 = 5;
    const KICK_BASE: u64 = 16;
    const HOST_CLIENT: u64 = 1 << 32;
    const HOST_CONN: u64 = 2 << 32;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Token {
        FrontendListener,
        Frontend,
        HybridListener,
        Wake,
        BackendChannel,
        Kick(usize),
        HostClient(u32),
        HostConn(u32),
    }

    impl Token {
        pub fn encode(self) -> u64 {
            match self {
                Token::FrontendListener => FRONTEND_LISTENER,
                Token::Frontend => FRONTEND,
                Token::HybridListener => HYBRID_LISTENER,
                Token::Wake => WAKE,
                Token::BackendChannel => BACKEND_CHANNEL,
                Token::Kick(q) => KICK_BASE + q as u64,
                Token::HostClient(id) => HOST_CLIENT | id as u64,
                Token::HostConn(slot) => HOST_CONN | slot as u64,
            }
        }

        pub fn decode(v: u64) -> Option<Token> {
            Some(match v {
                FRONTEND_LISTENER => Token::FrontendListener,
                FRONTEND => Token::Frontend,
                HYBRID_LISTENER => Token::HybridListener,
                WAKE => Token::Wake,
                BACKEND_CHANNEL => Token::BackendChannel,
                k if (KICK_BASE..KICK_BASE + 8).contains(&k) => {
                    Token::Kick((k - KICK_BASE) as usize)
                }
                v if v >> 32 == 1 => Token::HostClient(v as u32),
                v if v >> 32 == 2 => Token::HostConn(v as u32),
                _ => return None,
            })
        }
    }

    pub fn host_client(id: u32) -> u64 {
        Token::HostClient(id).encode()
    }

    pub fn host_conn(slot: u32) -> u64 {
        Token::HostConn(slot).encode()
    }
}

use token::Token;

/// How often timeouts are checked while any are pending.
const TICK: Duration = Duration::from_millis(20);
/// A frontend must deliver a whole message within this time once it started sending one.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct VmWorker {
    name: String,
    epoll: Epoll,
    listener: FrontendListener,
    session: Option<FrontendSession>,
    session_config: SessionConfig,
    device: VsockDevice,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    kicks: [Option<RawFd>; NUM_QUEUES],
    /// The control plane's mailbox for this VM, when one is attached.
    control: Option<Arc<VmControl>>,
    last_state: DeviceState,
}

impl VmWorker {
    pub fn new(
        name: String,
        listener: FrontendListener,
        session_config: SessionConfig,
        device: VsockDevice,
        wake: Arc<EventFd>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<VmWorker> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, t: Token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, t.encode()),
            )
        };
        add(wake.as_raw_fd(), Token::Wake)?;
        add(device.hybrid_listener().as_raw_fd(), Token::HybridListener)?;
        if let Some(fd) = listener.listen_fd() {
            add(fd, Token::FrontendListener)?;
        }
        let mut w = VmWorker {
            name,
            epoll,
            listener,
            session: None,
            session_config,
            device,
            wake,
            stop,
            kicks: [None; NUM_QUEUES],
            control: None,
            last_state: DeviceState::DEVICE_STATE_UNSPECIFIED,
        };
        if !w.listener.can_accept() {
            w.accept_frontend();
        }
        Ok(w)
    }

    /// Attaches the control plane: its mailbox (requests arrive with a wake-up) and the device's
    /// routing and event hooks.
    pub fn attach_control(&mut self, control: Arc<VmControl>, hooks: crate::control::Hooks) {
        self.device
            .attach_control(hooks.router, hooks.events, hooks.limits);
        self.control = Some(control);
    }

    /// Emits a device-state event when the state changed.
    fn report_state(&mut self) {
        let state = self.device_state();
        let Some(control) = &self.control else { return };
        if state != self.last_state {
            self.last_state = state;
            control.state_changed(state);
        }
    }

    fn device_state(&self) -> DeviceState {
        match &self.session {
            None => DeviceState::DEVICE_STATE_WAITING_FRONTEND,
            Some(_) if self.running() => DeviceState::DEVICE_STATE_RUNNING,
            Some(_) => DeviceState::DEVICE_STATE_NEGOTIATING,
        }
    }

    /// Answers the control plane's requests (between two event-loop rounds).
    fn serve_control(&mut self) {
        let Some(control) = self.control.clone() else {
            return;
        };
        for req in control.take() {
            match req {
                Request::Report(reply) => {
                    let report = VmReport {
                        state: self.device_state(),
                        features: self.session.as_ref().map_or(0, |s| s.acked_features()),
                        protocol_features: self
                            .session
                            .as_ref()
                            .map_or(0, |s| s.acked_protocol_features()),
                        translated: self.session.as_ref().is_some_and(|s| s.translated()),
                        connections: self.device.snapshot(),
                        stats: self.device.stats,
                    };
                    let _ = reply.try_send(report);
                }
                Request::Reset { key, reply } => {
                    let _ = reply.try_send(self.device.reset_connection(key));
                }
                Request::Routed { key, route } => self.device.apply_route(key, route, &self.epoll),
            }
        }
    }

    /// Runs until stopped, or until an inherited connected frontend goes away.
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 256];
        // Timeouts are checked every TICK while any may be pending; an idle VM sleeps.
        let mut check_timers = false;
        let mut next_tick = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if check_timers {
                next_tick
                    .saturating_duration_since(Instant::now())
                    .as_millis() as i32
            } else {
                -1
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    log::error!("[{}] epoll failed: {e}", self.name);
                    return;
                }
            };
            for ev in &events[..n] {
                if let Some(t) = Token::decode(ev.data()) {
                    self.handle(t, ev.event_set());
                }
            }
            self.pump();
            self.report_state();
            check_timers |= n > 0;
            if check_timers && Instant::now() >= next_tick {
                check_timers = self.device.on_tick(&self.epoll);
                if let Some(session) = self.session.as_mut() {
                    check_timers |= session.check_miss_timeouts();
                }
                next_tick = Instant::now() + TICK;
                self.pump();
            }
            if self.session.is_none() && !self.listener.can_accept() {
                log::info!(
                    "[{}] inherited frontend connection ended; VM worker exits",
                    self.name
                );
                return;
            }
        }
    }

    fn handle(&mut self, t: Token, events: EventSet) {
        match t {
            Token::Wake => {
                let _ = self.wake.read();
                self.serve_control();
            }
            Token::FrontendListener => self.accept_frontend(),
            Token::BackendChannel => {
                if let Some(session) = self.session.as_mut() {
                    if let Err(e) = session.backend_readable() {
                        log::warn!("[{}] {e}", self.name);
                    }
                }
            }
            Token::Frontend => self.serve_frontend(),
            Token::Kick(q) => {
                if let Some(fd) = self
                    .session
                    .as_ref()
                    .and_then(|s| s.vring(q))
                    .and_then(|v| v.kick_fd())
                {
                    let _ = fd.read();
                }
            }
            Token::HybridListener => self.device.accept_clients(&self.epoll),
            Token::HostClient(id) => {
                let running = self.running();
                self.device.client_readable(id, &self.epoll, running);
            }
            Token::HostConn(slot) => self.device.host_event(slot, events),
        }
    }

    fn running(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.vring(RX_QUEUE))
            .is_some_and(|v| v.is_ready())
    }

    /// Moves data: tx, then rx, then tx again if rx made room, then the event queue.
    fn pump(&mut self) {
        let running = self.running();
        self.device.set_running(running);
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let (Some(mem), vrings) = session.rings_mut() else {
            return;
        };
        let mem = mem.clone();
        let mut rings = Rings { mem: &mem, vrings };
        self.device.process_tx(&mut rings, &self.epoll);
        self.device.process_rx(&mut rings);
        if self.device.tx_paused() {
            self.device.process_tx(&mut rings, &self.epoll);
            self.device.process_rx(&mut rings);
        }
        self.device.process_event(&mut rings);
        session.send_pending_misses();
        if let Some(why) = session.memory_fault() {
            log::error!("[{}] dropping the frontend: {why}", self.name);
            self.drop_frontend();
        }
    }

    fn accept_frontend(&mut self) {
        if self.session.is_some() {
            return;
        }
        let stream = match self.listener.next_frontend() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                log::warn!("[{}] accepting a frontend failed: {e}", self.name);
                return;
            }
        };
        if let Err(e) = stream.set_read_timeout(Some(MESSAGE_TIMEOUT)) {
            log::warn!("[{}] frontend socket setup failed: {e}", self.name);
            return;
        }
        let fd = stream.as_raw_fd();
        match FrontendSession::new(stream, self.session_config) {
            Ok(session) => {
                if let Err(e) = self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, Token::Frontend.encode()),
                ) {
                    log::warn!("[{}] cannot watch the frontend: {e}", self.name);
                    return;
                }
                // One frontend at a time; later ones wait in the backlog.
                if let Some(lfd) = self.listener.listen_fd() {
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, lfd, EpollEvent::default());
                }
                log::info!("[{}] frontend connected", self.name);
                self.session = Some(session);
            }
            Err(e) => log::error!("[{}] {e}", self.name),
        }
    }

    fn serve_frontend(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.serve_one() {
            Ok(()) => {
                let changes = session.take_changes();
                let seqpacket = session.acked_features() & VIRTIO_VSOCK_F_SEQPACKET != 0;
                self.device.set_seqpacket(seqpacket);
                if changes.reset {
                    self.device.reset();
                }
                if changes.kicks {
                    self.sync_kicks();
                }
                if changes.backend_channel {
                    self.watch_backend_channel();
                }
            }
            Err(e) => {
                match &e {
                    crate::vhost_user::session::SessionError::Fatal(m)
                        if m.contains("peer closed") =>
                    {
                        log::info!("[{}] frontend disconnected", self.name)
                    }
                    _ => log::error!("[{}] dropping the frontend: {e}", self.name),
                }
                self.drop_frontend();
            }
        }
    }

    /// The frontend is gone: reset the device, keep the listening socket, accept the next one.
    fn drop_frontend(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                session.socket().as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.kicks = [None; NUM_QUEUES];
        self.device.reset();
        self.device.set_running(false);
        if let Some(lfd) = self.listener.listen_fd() {
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                lfd,
                EpollEvent::new(EventSet::IN, Token::FrontendListener.encode()),
            );
            // A frontend may already be waiting in the backlog.
            self.accept_frontend();
        }
    }

    fn watch_backend_channel(&mut self) {
        let Some(fd) = self
            .session
            .as_ref()
            .and_then(|s| s.backend_channel())
            .map(|c| c.socket().as_raw_fd())
        else {
            return;
        };
        let ev = EpollEvent::new(EventSet::IN, Token::BackendChannel.encode());
        if self.epoll.ctl(ControlOperation::Add, fd, ev).is_err() {
            let _ = self.epoll.ctl(ControlOperation::Modify, fd, ev);
        }
    }

    /// Watches exactly the kick fds the session currently holds.
    fn sync_kicks(&mut self) {
        for q in 0..NUM_QUEUES {
            if let Some(old) = self.kicks[q].take() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, old, EpollEvent::default());
            }
            let fd = self
                .session
                .as_ref()
                .and_then(|s| s.vring(q))
                .and_then(|v| v.kick_fd())
                .map(|k| k.as_raw_fd());
            if let Some(fd) = fd {
                match self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, Token::Kick(q).encode()),
                ) {
                    Ok(()) => self.kicks[q] = Some(fd),
                    Err(e) => log::warn!("[{}] cannot watch kick fd of queue {q}: {e}", self.name),
                }
            }
        }
    }
}
