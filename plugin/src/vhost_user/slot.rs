//! Who holds a VM's single frontend slot, and when a newer connection takes it over.
//!
//! QEMU and crosvm connect once and never retry, so a connection that holds the slot without
//! using it — a readiness probe that connects and stays silent, one that sent a little and went
//! quiet, a stale connection that waited in the backlog — must never keep the real VMM out:
//!
//! - A frontend **establishes** its session with SET_OWNER (QEMU and crosvm send it first or
//!   among their first requests), SET_FEATURES or SET_MEM_TABLE. An established frontend keeps
//!   the slot until it disconnects; newer connections wait in the listen backlog, unread. It is
//!   never timed out for being idle: a running VMM legitimately sends nothing for hours.
//! - A frontend that has not yet sent one whole message is **silent**: the next connection
//!   replaces it at once.
//! - A frontend that spoke but has not established its session, and has sent nothing whole for
//!   [`UNESTABLISHED_IDLE`], is **stale**: the next connection replaces it.
//! - Every frontend message must arrive whole within [`MESSAGE_DEADLINE`] of its first byte (per
//!   message, not per read); a frontend that misses it is dropped.
//!
//! The listening socket is watched exactly while the slot is free or replaceable
//! ([`Activity::replaceable`]), so a newcomer is accepted as soon as it may be served.

use std::time::{Duration, Instant};

use vhost::vhost_user::message::FrontendReq;

/// A frontend message must arrive whole within this time of its first byte.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(2);
/// A frontend that spoke but did not establish its session yields the slot to a newer connection
/// after this long without a whole message.
pub const UNESTABLISHED_IDLE: Duration = Duration::from_secs(5);

/// What the slot's holder has done so far.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    connected: Instant,
    /// When the last whole message arrived (`None`: silent so far).
    last_message: Option<Instant>,
    established: bool,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity {
            connected: now,
            last_message: None,
            established: false,
        }
    }

    /// Records a whole message with request id `request`.
    pub fn message(&mut self, request: u32, now: Instant) {
        self.last_message = Some(now);
        let establishes = [
            FrontendReq::SET_OWNER,
            FrontendReq::SET_FEATURES,
            FrontendReq::SET_MEM_TABLE,
        ]
        .iter()
        .any(|r| *r as u32 == request);
        self.established |= establishes;
    }

    pub fn established(&self) -> bool {
        self.established
    }

    /// Why a newer connection may take the slot now (`None`: the holder keeps it).
    pub fn replaceable(&self, now: Instant) -> Option<String> {
        if self.established {
            return None;
        }
        match self.last_message {
            None => Some(format!(
                "silent for {:.1} s since it connected",
                now.saturating_duration_since(self.connected).as_secs_f64()
            )),
            Some(t) if now.saturating_duration_since(t) >= UNESTABLISHED_IDLE => Some(format!(
                "idle for {:.1} s without establishing a session (no SET_OWNER)",
                now.saturating_duration_since(t).as_secs_f64()
            )),
            Some(_) => None,
        }
    }

    /// Whether time alone can still change [`Self::replaceable`] (the worker keeps its timer
    /// running while it can).
    pub fn pending_change(&self) -> bool {
        !self.established && self.last_message.is_some()
    }
}

/// Whether a message that started arriving at `started` has missed its deadline.
pub fn message_overdue(started: Option<Instant>, now: Instant) -> Option<Duration> {
    let started = started?;
    let took = now.saturating_duration_since(started);
    (took >= MESSAGE_DEADLINE).then_some(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_replaceable_at_once_established_never() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        assert!(a.replaceable(t0).is_some(), "silent");
        a.message(FrontendReq::GET_FEATURES as u32, t0);
        assert!(a.replaceable(t0 + Duration::from_secs(1)).is_none());
        assert!(a.pending_change());
        let later = t0 + UNESTABLISHED_IDLE + Duration::from_millis(1);
        assert!(a.replaceable(later).unwrap().contains("no SET_OWNER"));
        a.message(FrontendReq::SET_OWNER as u32, later);
        assert!(a.established());
        assert!(a.replaceable(later + Duration::from_secs(3600)).is_none());
        assert!(!a.pending_change());
    }

    #[test]
    fn deadline_counts_from_the_first_byte() {
        let t0 = Instant::now();
        assert_eq!(message_overdue(None, t0), None);
        assert_eq!(
            message_overdue(Some(t0), t0 + Duration::from_millis(1999)),
            None
        );
        assert!(message_overdue(Some(t0), t0 + MESSAGE_DEADLINE).is_some());
    }
}
