//! One VM's event loop: a single thread owning the frontend session, the device and every host
//! socket of that VM, so the data path needs no locks. It waits on one epoll set; events are
//! identified by `token::Token`.
//!
//! The loop never blocks on a peer: host sockets are non-blocking; a vhost-user message is
//! assembled as its bytes arrive and must be whole within a deadline from its first byte; who holds
//! the frontend slot, and when a newer connection takes it over, is [`crate::vhost_user::slot`].

mod device_state;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{Request, VmControl, VmReport};
use crate::vhost_user::listener::FrontendListener;
use crate::vhost_user::session::{FrontendSession, Outcome, SessionConfig};
use crate::vhost_user::slot;
use crate::virtio::{NUM_QUEUES, RX_QUEUE, VIRTIO_VSOCK_F_SEQPACKET};
use crate::vsock::device::interests::{is_device_token, EventRegistry};
use crate::vsock::device::{Rings, VsockDevice, DATAPATH_LOG};
use vsock_plugin_ipc::proto::control::DeviceState;

/// Epoll tokens of the worker's own fds: small constants. The device registers its fds (hybrid
/// listener, waiting clients, host sockets) in the same set through [`EpollRegistry`], with
/// tokens only it decodes (all at or above 2^62, see `vsock::device::interests`).
mod token {
    const FRONTEND_LISTENER: u64 = 1;
    const FRONTEND: u64 = 2;
    const WAKE: u64 = 4;
    const BACKEND_CHANNEL: u64 = 5;
    const DEVICE_STATE: u64 = 6;
    const KICK_BASE: u64 = 16;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Token {
        FrontendListener,
        Frontend,
        Wake,
        BackendChannel,
        /// The pipe of a DEVICE_STATE transfer (`device_state`).
        DeviceState,
        Kick(usize),
    }

    impl Token {
        pub(super) fn encode(self) -> u64 {
            match self {
                Token::FrontendListener => FRONTEND_LISTENER,
                Token::Frontend => FRONTEND,
                Token::Wake => WAKE,
                Token::BackendChannel => BACKEND_CHANNEL,
                Token::DeviceState => DEVICE_STATE,
                Token::Kick(q) => KICK_BASE + q as u64,
            }
        }

        pub(super) fn decode(v: u64) -> Option<Token> {
            Some(match v {
                FRONTEND_LISTENER => Token::FrontendListener,
                FRONTEND => Token::Frontend,
                WAKE => Token::Wake,
                BACKEND_CHANNEL => Token::BackendChannel,
                DEVICE_STATE => Token::DeviceState,
                k if (KICK_BASE..KICK_BASE + 8).contains(&k) => {
                    Token::Kick((k - KICK_BASE) as usize)
                }
                _ => return None,
            })
        }
    }
}

use token::Token;

/// How the plugin asks its workers to end: `stop` ends the loop at once; `drain` first stops
/// accepting and writes out what the device buffered (see `vsock::device::drain`).
#[derive(Debug, Default)]
pub struct Shutdown {
    pub stop: AtomicBool,
    pub drain: AtomicBool,
}

/// The device's fds go into the worker's epoll set (one `epoll_wait` per round for everything).
struct EpollRegistry(Arc<Epoll>);

impl EventRegistry for EpollRegistry {
    fn ctl(&self, op: ControlOperation, fd: RawFd, event: EpollEvent) -> std::io::Result<()> {
        self.0.ctl(op, fd, event)
    }
}

/// How often a draining worker retries writing buffered bytes to host sockets.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often timeouts are checked while any are pending.
const TICK: Duration = Duration::from_millis(20);

/// The epoll timeout for a wait of `left`: whole milliseconds rounded *up*, so that a wait of
/// less than a millisecond sleeps instead of returning at once (rounding down made the loop spin
/// through the last millisecond before every tick).
fn wait_ms(left: Duration) -> i32 {
    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

pub struct VmWorker {
    name: String,
    /// Shared with the device's registrations ([`EpollRegistry`]).
    epoll: Arc<Epoll>,
    listener: FrontendListener,
    session: Option<FrontendSession>,
    session_config: SessionConfig,
    device: VsockDevice,
    wake: Arc<EventFd>,
    stop: Arc<Shutdown>,
    kicks: [Option<RawFd>; NUM_QUEUES],
    /// The control plane's mailbox for this VM, when one is attached.
    control: Option<Arc<VmControl>>,
    last_state: DeviceState,
    /// Whether the frontend listener is in the epoll set (see [`Self::sync_listener`]).
    listener_watched: bool,
}

impl VmWorker {
    pub fn new(
        name: String,
        listener: FrontendListener,
        session_config: SessionConfig,
        device: VsockDevice,
        wake: Arc<EventFd>,
        stop: Arc<Shutdown>,
    ) -> std::io::Result<VmWorker> {
        let epoll = Arc::new(Epoll::new()?);
        let add = |fd: RawFd, t: Token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, t.encode()),
            )
        };
        add(wake.as_raw_fd(), Token::Wake)?;
        if let Some(fd) = listener.listen_fd() {
            add(fd, Token::FrontendListener)?;
        }
        let mut device = device;
        device.attach_events(Box::new(EpollRegistry(epoll.clone())))?;
        let listener_watched = listener.listen_fd().is_some();
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
            listener_watched,
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
                        generation: self.device.generation(),
                    };
                    let _ = reply.try_send(report);
                }
                Request::Reset { key, reply } => {
                    let _ = reply.try_send(self.device.reset_connection(key));
                }
                Request::Routed { key, route } => self.device.apply_route(key, route),
            }
        }
    }

    /// Runs until stopped, or until an inherited connected frontend goes away.
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 256];
        // Timeouts are checked every TICK while any may be pending; an idle VM sleeps.
        let mut check_timers = false;
        let mut next_tick = Instant::now();
        while !self.stop.stop.load(Ordering::Acquire) {
            if self.stop.drain.load(Ordering::Acquire) {
                self.drain();
                return;
            }
            let timeout = if check_timers {
                wait_ms(next_tick.saturating_duration_since(Instant::now()))
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
            // With the µs log timestamps: wake → "tx pass" / "rx pass" is the plugin's own time
            // for what the guest or a host socket asked (README, Performance).
            log::trace!(target: DATAPATH_LOG, "wake n={n}");
            for ev in &events[..n] {
                if is_device_token(ev.data()) {
                    let running = self.running();
                    self.device.handle_event(ev.data(), ev.event_set(), running);
                } else if let Some(t) = Token::decode(ev.data()) {
                    self.handle(t);
                }
            }
            self.pump();
            self.report_state();
            check_timers |= n > 0;
            if check_timers && Instant::now() >= next_tick {
                check_timers = self.device.on_tick();
                if let Some(session) = self.session.as_mut() {
                    check_timers |= session.check_miss_timeouts();
                    check_timers |= session.device_state().check_deadline(Instant::now());
                }
                self.sync_snapshot();
                check_timers |= self.check_frontend_deadlines();
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

    /// The process is stopping: no new frontends or host clients; guest bytes the device holds
    /// go to their host sockets within the VM's shutdown timeout; then every connection closes.
    fn drain(&mut self) {
        self.device.stop_accepting();
        if let Some(lfd) = self.listener.listen_fd() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, lfd, EpollEvent::default());
        }
        let deadline = Instant::now() + self.device.drain_timeout();
        let mut left = self.device.flush_for_exit();
        while left > 0 && Instant::now() < deadline {
            std::thread::sleep(DRAIN_POLL);
            left = self.device.flush_for_exit();
        }
        let (closed, lost) = self.device.close_for_exit();
        log::info!(
            "[{}] stopped: {closed} connection(s) closed, {lost} buffered guest byte(s) undelivered",
            self.name
        );
    }

    fn handle(&mut self, t: Token) {
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
            Token::DeviceState => {
                if let Some(session) = self.session.as_mut() {
                    session.device_state().pump();
                }
                self.sync_snapshot();
            }
            Token::Kick(q) => {
                // Kick fds are edge-triggered: every guest kick (eventfd write) is a new edge, so
                // the counter need not be read (vhost does not read it either); one read per
                // kick was a syscall per guest packet. Read only to trace how many kicks came.
                if !log::log_enabled!(target: DATAPATH_LOG, log::Level::Trace) {
                    return;
                }
                if let Some(fd) = self
                    .session
                    .as_ref()
                    .and_then(|s| s.vring(q))
                    .and_then(|v| v.kick_fd())
                {
                    // The counter is the number of guest kicks since the last read.
                    let kicks = fd.read().unwrap_or(0);
                    log::trace!(target: DATAPATH_LOG, "kick q={q} n={kicks}");
                }
            }
        }
    }

    fn running(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.vring(RX_QUEUE))
            .is_some_and(|v| v.is_ready())
    }

    /// Moves data, then watches for writability exactly the host sockets that now need it.
    fn pump(&mut self) {
        self.move_data();
        self.device.sync_host_interest();
    }

    /// The event queue first (a TRANSPORT_RESET the guest is owed goes before any rx packet),
    /// then tx, then rx, then tx again if rx made room.
    fn move_data(&mut self) {
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
        self.device.process_event(&mut rings);
        self.device.process_tx(&mut rings);
        self.device.process_rx(&mut rings);
        if self.device.tx_paused() {
            self.device.process_tx(&mut rings);
            self.device.process_rx(&mut rings);
        }
        session.send_pending_misses();
        if let Some(why) = session.memory_fault() {
            log::error!("[{}] dropping the frontend: {why}", self.name);
            self.drop_frontend();
        }
    }

    /// A connection waits on the frontend socket: serve it if the slot is free, or replace a
    /// holder that may be replaced (silent, or stale before establishing its session); otherwise
    /// leave it in the backlog and stop watching until that changes.
    fn accept_frontend(&mut self) {
        if let Some(session) = &self.session {
            match session.activity().replaceable(Instant::now()) {
                Some(why) => {
                    log::warn!(
                        "[{}] a new frontend connection replaces the current one ({why})",
                        self.name
                    );
                    // Accepts the newcomer once the slot is free.
                    self.drop_frontend();
                }
                None => self.sync_listener(),
            }
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
                log::info!("[{}] frontend connected", self.name);
                self.session = Some(session);
                // Still watched while the newcomer is silent: a probe cannot keep the VMM out.
                self.sync_listener();
            }
            Err(e) => log::error!("[{}] {e}", self.name),
        }
    }

    fn serve_frontend(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.serve_ready() {
            Ok(false) => {}
            Ok(true) => {
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
                self.sync_snapshot();
                // An established frontend keeps the slot: newcomers wait in the backlog.
                self.sync_listener();
            }
            Err(e) => match e.outcome() {
                Outcome::Continue => log::warn!("[{}] {e}", self.name),
                Outcome::Disconnected => {
                    log::info!("[{}] frontend disconnected", self.name);
                    self.drop_frontend();
                }
                Outcome::Dropped => {
                    log::error!("[{}] dropping the frontend: {e}", self.name);
                    self.drop_frontend();
                }
            },
        }
    }

    /// The frontend is gone: reset the device, keep the listening socket, accept the next one.
    fn drop_frontend(&mut self) {
        if let Some(mut session) = self.session.take() {
            device_state::forget(&mut session, &self.epoll);
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                session.socket().as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.kicks = [None; NUM_QUEUES];
        self.device.reset();
        self.device.set_running(false);
        self.sync_listener();
        if self.listener.can_accept() {
            // A frontend may already be waiting in the backlog.
            self.accept_frontend();
        }
    }

    /// Watches the frontend listener exactly while a newcomer could be served: the slot is free
    /// or its holder is replaceable (see [`slot`]).
    fn sync_listener(&mut self) {
        let Some(lfd) = self.listener.listen_fd() else {
            return;
        };
        let want = self
            .session
            .as_ref()
            .is_none_or(|s| s.activity().replaceable(Instant::now()).is_some());
        if want == self.listener_watched {
            return;
        }
        let res = if want {
            self.epoll.ctl(
                ControlOperation::Add,
                lfd,
                EpollEvent::new(EventSet::IN, Token::FrontendListener.encode()),
            )
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, lfd, EpollEvent::default())
        };
        match res {
            Ok(()) => self.listener_watched = want,
            Err(e) => log::warn!("[{}] frontend listener watch: {e}", self.name),
        }
    }

    /// Enforces the per-message deadline and lets a stale holder become replaceable. Returns
    /// whether the frontend still needs the timer.
    fn check_frontend_deadlines(&mut self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let now = Instant::now();
        if let Some(took) = slot::message_overdue(session.message_started(), now) {
            log::error!(
                "[{}] dropping the frontend: a message still incomplete {:.1} s after its first \
                 byte (deadline {} s)",
                self.name,
                took.as_secs_f64(),
                slot::MESSAGE_DEADLINE.as_secs()
            );
            self.drop_frontend();
            return false;
        }
        let pending = session.message_started().is_some() || session.activity().pending_change();
        self.sync_listener();
        pending
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

    /// Keeps a DEVICE_STATE transfer moving (see [`device_state::sync`]).
    fn sync_snapshot(&mut self) {
        if let Some(session) = self.session.as_mut() {
            device_state::sync(
                &self.name,
                session,
                &mut self.device,
                &self.epoll,
                Token::DeviceState.encode(),
                self.control.as_deref(),
            );
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
                let ev = EventSet::IN | EventSet::EDGE_TRIGGERED;
                match self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(ev, Token::Kick(q).encode()),
                ) {
                    Ok(()) => self.kicks[q] = Some(fd),
                    Err(e) => log::warn!("[{}] cannot watch kick fd of queue {q}: {e}", self.name),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_wait_rounds_up_to_whole_milliseconds() {
        assert_eq!(wait_ms(Duration::ZERO), 0);
        assert_eq!(wait_ms(Duration::from_micros(1)), 1);
        assert_eq!(wait_ms(Duration::from_micros(500)), 1);
        assert_eq!(wait_ms(Duration::from_millis(20)), 20);
        assert_eq!(wait_ms(Duration::from_micros(19_001)), 20);
        assert_eq!(wait_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
