//! The connection state machine: where a connection is in its life ([`State`]) and which
//! directions are still open, changed only by the transitions below (the protocol primer is in
//! [`super::connection`]).
//!
//! The two directions close independently:
//!
//! ```text
//!  guest → host   Open ──guest SHUTDOWN(SEND)──► Draining ──buffer flushed, shutdown(SHUT_WR)──► Closed
//!                 Open/Draining ──host socket gone (HUP)──────────────────────────────────────► Closed
//!  host → guest   Open ──host EOF read──► Draining ──SHUTDOWN(SEND) queued to the guest────────► Closed
//!                 Open ──guest SHUTDOWN(RCV)──────────────────────────────────────────────────► Closed
//! ```
//!
//! Whole-connection rules: the guest shutting down both directions closes the connection once our
//! buffer is flushed (we answer RST); the host socket gone outright (HUP) is told to the guest as
//! SHUTDOWN(RCV|SEND) and we wait in [`State::Closing`] for its RST. RST from either side ends the
//! connection in any state (the device removes it).

use std::time::Instant;

use super::packet::shutdown;
use super::status::State;

/// One direction of a connection, as the state machine's tests read it ([`ConnState::directions`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Bytes may move.
    Open,
    /// The sender is done; what was already accepted still goes out, then the receiver is told.
    Draining,
    /// Nothing more moves.
    Closed,
}

/// What is open in which direction.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directions {
    pub to_host: Flow,
    pub to_guest: Flow,
}

/// The protocol state of one connection. Fields are private: only the transitions change them.
#[derive(Debug, Clone)]
pub struct ConnState {
    state: State,
    /// SHUTDOWN flags received from the guest.
    guest_shut: u32,
    /// SHUTDOWN flags sent to the guest.
    told_guest: u32,
    /// A read of the host socket returned EOF.
    host_eof: bool,
    /// The host socket is gone in both directions (HUP).
    host_hup: bool,
    /// The host shut its writing side (RDHUP): an EOF waits behind its data.
    host_rdhup: bool,
    /// `shutdown(SHUT_WR)` was applied to the host socket (the guest's SHUTDOWN(SEND) passed on).
    host_write_shut: bool,
    /// Guest-initiated, waiting for the control plane to say where it goes.
    awaiting_route: bool,
}

impl ConnState {
    fn new(state: State) -> ConnState {
        ConnState {
            state,
            guest_shut: 0,
            told_guest: 0,
            host_eof: false,
            host_hup: false,
            host_rdhup: false,
            host_write_shut: false,
            awaiting_route: false,
        }
    }

    /// A host client asked for a guest port: REQUEST sent, waiting for RESPONSE.
    pub fn local_init(now: Instant) -> ConnState {
        Self::new(State::LocalInit { since: now })
    }

    /// The guest sent REQUEST: connecting to the host end, after the control plane's route
    /// when `awaiting_route`.
    pub fn peer_init(now: Instant, awaiting_route: bool) -> ConnState {
        let mut s = Self::new(State::PeerInit { since: now });
        s.awaiting_route = awaiting_route;
        s
    }

    /// Still waiting for the control plane's route (no connect attempt meanwhile).
    pub fn awaiting_route(&self) -> bool {
        self.awaiting_route
    }

    /// The control plane's route arrived: true if this connection was waiting for one (a late
    /// or repeated answer is ignored).
    pub fn route_answered(&mut self) -> bool {
        std::mem::replace(&mut self.awaiting_route, false)
    }

    /// The phase, for status reports and timeouts.
    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_local_init(&self) -> bool {
        matches!(self.state, State::LocalInit { .. })
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// What is open in which direction, derived from the flags (the tests' summary of a state).
    #[cfg(test)]
    pub fn directions(&self) -> Directions {
        let to_host = if self.host_write_shut || self.host_hup {
            Flow::Closed
        } else if self.guest_shut & shutdown::SEND != 0 {
            Flow::Draining
        } else {
            Flow::Open
        };
        let to_guest = if self.told_guest & shutdown::SEND != 0 || !self.guest_reads() {
            Flow::Closed
        } else if self.host_eof {
            Flow::Draining
        } else {
            Flow::Open
        };
        Directions { to_host, to_guest }
    }

    // ----- transitions ------------------------------------------------------------------------

    /// Both ends agreed (RESPONSE sent or received).
    pub fn establish(&mut self) {
        self.state = State::Established;
    }

    /// Waiting for our buffer to drain or for the guest's RST, bounded by the shutdown timeout.
    pub fn start_closing(&mut self, now: Instant) {
        self.state = State::Closing { since: now };
    }

    /// The guest sent SHUTDOWN with `flags` (they accumulate). Returns whether the guest has now
    /// shut down both directions (the connection closes once our buffer is flushed).
    pub fn guest_shutdown(&mut self, flags: u32) -> bool {
        self.guest_shut |= flags & shutdown::BOTH;
        self.guest_closed_both()
    }

    pub fn guest_closed_both(&self) -> bool {
        self.guest_shut == shutdown::BOTH
    }

    /// The guest may still send data: it did not shut down sending, and the host end can still
    /// take it. Data otherwise is a guest error (reset).
    pub fn guest_may_send(&self) -> bool {
        self.guest_shut & shutdown::SEND == 0 && !self.host_hup
    }

    /// The guest still reads (no SHUTDOWN(RCV)).
    pub fn guest_reads(&self) -> bool {
        self.guest_shut & shutdown::RCV == 0
    }

    /// Whether `shutdown(SHUT_WR)` is due on the host socket now (the guest shut down sending and
    /// `tx_empty`: everything it sent was written). True once; the caller applies it.
    pub fn take_write_shutdown(&mut self, tx_empty: bool) -> bool {
        let due = self.guest_shut & shutdown::SEND != 0 && tx_empty && !self.host_write_shut;
        if due {
            self.host_write_shut = true;
        }
        due
    }

    /// Readiness flags of the host socket: `hup` (gone both ways), `rdhup` (its writing side
    /// shut). Returns the SHUTDOWN flags to send the guest now, if any: a host that closed outright
    /// after an earlier half-close must let the guest learn RCV too.
    pub fn host_hung_up(&mut self, hup: bool, rdhup: bool) -> Option<u32> {
        self.host_hup |= hup;
        self.host_rdhup |= rdhup;
        if self.host_hup
            && self.host_eof
            && self.told_guest & shutdown::RCV == 0
            && self.is_established()
        {
            self.start_closing(Instant::now());
            self.told_guest = shutdown::BOTH;
            return Some(shutdown::BOTH);
        }
        None
    }

    /// A read of the host socket returned EOF.
    pub fn host_read_eof(&mut self) {
        self.host_eof = true;
    }

    pub fn host_eof(&self) -> bool {
        self.host_eof
    }

    /// A hang-up was signalled: the EOF behind the data raises no event of its own.
    pub fn host_hang_up_seen(&self) -> bool {
        self.host_rdhup || self.host_hup
    }

    /// The host socket had nothing more to read. Returns the SHUTDOWN flags to tell the guest, if
    /// not told yet: SEND after a half-close (EOF), RCV|SEND when the host end is gone (then we
    /// wait for the guest's RST in `Closing`).
    pub fn eof_to_tell(&mut self, now: Instant) -> Option<u32> {
        if !self.host_eof {
            return None;
        }
        let flags = if self.host_hup {
            shutdown::BOTH
        } else {
            shutdown::SEND
        };
        if self.told_guest & flags == flags {
            return None;
        }
        self.told_guest |= flags;
        if flags == shutdown::BOTH {
            self.start_closing(now);
        }
        Some(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shutdown::{BOTH, RCV, SEND};

    fn established() -> ConnState {
        let mut s = ConnState::peer_init(Instant::now(), false);
        s.establish();
        s
    }

    fn dirs(to_host: Flow, to_guest: Flow) -> Directions {
        Directions { to_host, to_guest }
    }

    #[test]
    fn connects_both_ways_then_both_directions_are_open() {
        let now = Instant::now();
        let mut a = ConnState::local_init(now);
        assert!(a.is_local_init() && !a.is_established());
        a.establish();
        assert!(a.is_established());
        let mut b = ConnState::peer_init(now, false);
        assert_eq!(b.state(), State::PeerInit { since: now });
        b.establish();
        assert_eq!(b.directions(), dirs(Flow::Open, Flow::Open));
        assert!(b.guest_may_send() && b.guest_reads());
    }

    #[test]
    fn guest_half_close_then_host_half_close() {
        let now = Instant::now();
        let mut s = established();
        assert!(!s.guest_shutdown(SEND));
        assert!(!s.guest_may_send());
        assert_eq!(s.directions(), dirs(Flow::Draining, Flow::Open));
        // SHUT_WR waits for the buffer, and happens once.
        assert!(!s.take_write_shutdown(false));
        assert!(s.take_write_shutdown(true));
        assert!(!s.take_write_shutdown(true));
        assert_eq!(s.directions(), dirs(Flow::Closed, Flow::Open));
        // Host EOF: SHUTDOWN(SEND) to the guest, once.
        assert_eq!(s.eof_to_tell(now), None, "no EOF read yet");
        s.host_read_eof();
        assert_eq!(s.directions(), dirs(Flow::Closed, Flow::Draining));
        assert_eq!(s.eof_to_tell(now), Some(SEND));
        assert_eq!(s.eof_to_tell(now), None);
        assert_eq!(s.directions(), dirs(Flow::Closed, Flow::Closed));
        assert!(
            s.is_established(),
            "a half-closed pair stays established until RST/RCV"
        );
        // The guest's RCV completes its close.
        assert!(s.guest_shutdown(RCV));
    }

    #[test]
    fn host_half_close_then_guest_half_close() {
        let now = Instant::now();
        let mut s = established();
        s.host_hung_up(false, true);
        assert!(s.host_hang_up_seen());
        s.host_read_eof();
        assert_eq!(s.eof_to_tell(now), Some(SEND));
        assert_eq!(s.directions(), dirs(Flow::Open, Flow::Closed));
        assert!(
            s.guest_may_send(),
            "the guest may still send after the host's EOF"
        );
        assert!(!s.guest_shutdown(SEND));
        assert!(s.take_write_shutdown(true));
        assert_eq!(s.directions(), dirs(Flow::Closed, Flow::Closed));
        assert!(s.is_established());
    }

    #[test]
    fn guest_shuts_both_at_once_or_in_two_steps() {
        let mut s = established();
        assert!(s.guest_shutdown(BOTH));
        assert!(!s.guest_may_send() && !s.guest_reads());
        let mut t = established();
        assert!(!t.guest_shutdown(RCV));
        assert_eq!(t.directions(), dirs(Flow::Open, Flow::Closed));
        assert!(t.guest_may_send());
        assert!(t.guest_shutdown(SEND));
        // Unknown flag bits are ignored.
        let mut u = established();
        assert!(!u.guest_shutdown(0xfc));
        assert_eq!(u.directions(), dirs(Flow::Open, Flow::Open));
    }

    #[test]
    fn host_gone_outright_is_shutdown_both_then_closing() {
        let now = Instant::now();
        let mut s = established();
        assert_eq!(
            s.host_hung_up(true, true),
            None,
            "the data before the EOF first"
        );
        assert!(!s.guest_may_send(), "nothing can reach a host that is gone");
        assert_eq!(s.directions().to_host, Flow::Closed);
        s.host_read_eof();
        assert_eq!(s.eof_to_tell(now), Some(BOTH));
        assert!(s.is_closing());
        assert_eq!(s.eof_to_tell(now), None);
    }

    #[test]
    fn host_closes_after_its_half_close_was_told_then_rcv_follows() {
        let now = Instant::now();
        let mut s = established();
        s.host_read_eof();
        assert_eq!(s.eof_to_tell(now), Some(SEND));
        assert_eq!(s.host_hung_up(true, false), Some(BOTH));
        assert!(s.is_closing());
        // Told once only.
        assert_eq!(s.host_hung_up(true, false), None);
        assert_eq!(s.eof_to_tell(now), None);
    }

    #[test]
    fn a_hang_up_before_the_connection_is_established_tells_nothing() {
        let now = Instant::now();
        let mut s = ConnState::local_init(now);
        s.host_read_eof();
        assert_eq!(s.host_hung_up(true, false), None);
        assert!(s.is_local_init());
    }

    #[test]
    fn a_route_is_awaited_once() {
        let mut s = ConnState::peer_init(Instant::now(), true);
        assert!(s.awaiting_route());
        assert!(s.route_answered());
        assert!(!s.awaiting_route());
        assert!(!s.route_answered(), "a repeated answer is ignored");
        let mut t = ConnState::peer_init(Instant::now(), false);
        assert!(!t.route_answered(), "no control plane: nothing to answer");
    }

    #[test]
    fn closing_is_entered_by_either_side() {
        let now = Instant::now();
        let mut s = established();
        s.guest_shutdown(BOTH);
        s.start_closing(now);
        assert_eq!(s.state(), State::Closing { since: now });
        assert!(s.is_closing() && !s.is_established());
    }
}
