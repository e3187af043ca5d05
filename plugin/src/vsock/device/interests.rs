//! The device's event interests: which fds it watches (the hybrid listener, the host clients
//! waiting for their CONNECT line, every connected host socket) and what each event means. The
//! device registers them through an [`EventRegistry`] the worker implements on its epoll set, with
//! tokens only the device decodes: every device token has a non-zero kind in its top two bits
//! ([`is_device_token`]), so the worker hands such events to
//! [`super::VsockDevice::handle_event`] without knowing what they mean, and no epoll of the
//! worker's reaches the device. (A nested epoll set of the device's own, as Firecracker's muxer
//! has, costs one more `epoll_wait` per event-loop round: measured +1.5–2 µs of backend CPU per
//! host round trip.)
//!
//! Stale events: a connection slot (or a waiting-client index) is reused as soon as it is free,
//! and an event already taken from the kernel for the previous occupant may be handled after the
//! reuse (same batch). Every token therefore carries the occupant's *generation*, and an event
//! whose generation is not the slot's current one is dropped.

use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

/// Bits of a token: kind (2) | generation (30) | slot or client index (32).
const KIND_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 32;
/// Generations wrap at 2^30; a stale event would have to survive 2^30 reuses of its slot.
pub(super) const GEN_MASK: u32 = (1 << 30) - 1;
const KIND_CLIENT: u64 = 1;
const KIND_CONN: u64 = 2;
const KIND_LISTENER: u64 = 3;

/// Whether an epoll token is one the device registered (the worker's own are below 2^62).
pub fn is_device_token(token: u64) -> bool {
    token >> KIND_SHIFT != 0
}

/// Where the device registers its fds: `epoll_ctl` on the worker's epoll set.
pub trait EventRegistry: Send {
    fn ctl(&self, op: ControlOperation, fd: RawFd, event: EpollEvent) -> io::Result<()>;
}

/// What an event for the device is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    HybridListener,
    /// A waiting host client: index into the device's client list, and its generation.
    Client {
        id: u32,
        generation: u32,
    },
    /// A connection's host socket: its table slot, and the slot's generation.
    Conn {
        slot: u32,
        generation: u32,
    },
}

impl Source {
    pub(super) fn encode(self) -> u64 {
        let pack = |kind: u64, generation: u32, index: u32| {
            kind << KIND_SHIFT | ((generation & GEN_MASK) as u64) << GEN_SHIFT | index as u64
        };
        match self {
            Source::HybridListener => pack(KIND_LISTENER, 0, 0),
            Source::Client { id, generation } => pack(KIND_CLIENT, generation, id),
            Source::Conn { slot, generation } => pack(KIND_CONN, generation, slot),
        }
    }

    pub(super) fn decode(v: u64) -> Option<Source> {
        let index = v as u32;
        let generation = (v >> GEN_SHIFT) as u32 & GEN_MASK;
        match v >> KIND_SHIFT {
            KIND_LISTENER if v == Source::HybridListener.encode() => Some(Source::HybridListener),
            KIND_CLIENT => Some(Source::Client {
                id: index,
                generation,
            }),
            KIND_CONN => Some(Source::Conn {
                slot: index,
                generation,
            }),
            _ => None,
        }
    }
}

/// The device's registrations. Until the worker attaches its registry nothing is watched (and
/// a host socket that cannot be watched is reset by its caller).
#[derive(Default)]
pub(super) struct Interests {
    registry: Option<Box<dyn EventRegistry>>,
}

impl Interests {
    pub(super) fn attach(&mut self, registry: Box<dyn EventRegistry>) {
        self.registry = Some(registry);
    }

    fn ctl(&self, op: ControlOperation, fd: RawFd, event: EpollEvent) -> io::Result<()> {
        match &self.registry {
            Some(r) => r.ctl(op, fd, event),
            None => Err(io::Error::other("no event registry attached")),
        }
    }

    /// The hybrid listener, level-triggered (a flood is taken in batches, round by round).
    pub(super) fn watch_listener(&self, fd: RawFd) -> io::Result<()> {
        let ev = EpollEvent::new(EventSet::IN, Source::HybridListener.encode());
        self.ctl(ControlOperation::Add, fd, ev)
    }

    /// A waiting host client, level-triggered: readable, or gone.
    pub(super) fn watch_client(&self, fd: RawFd, id: u32, generation: u32) -> io::Result<()> {
        let ev = EventSet::IN | EventSet::READ_HANG_UP;
        let token = Source::Client { id, generation }.encode();
        self.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
    }

    /// A connection's host socket, edge-triggered: readable and read hang-up always, writable
    /// only when `out` (the device watches EPOLLOUT only while a write came up short: a
    /// writable Unix socket reports EPOLLOUT each time its reader frees space, one wake-up per
    /// guest packet under a steady stream). `op`: Add for a new socket, Modify for one already
    /// registered (a host client that sent its CONNECT line, or a change of `out`).
    pub(super) fn watch_conn(
        &self,
        op: ControlOperation,
        fd: RawFd,
        slot: u32,
        generation: u32,
        out: bool,
    ) -> io::Result<()> {
        let mut ev = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if out {
            ev |= EventSet::OUT;
        }
        let token = Source::Conn { slot, generation }.encode();
        self.ctl(op, fd, EpollEvent::new(ev, token))
    }

    /// Stops watching `fd` (closing an fd does that too).
    pub(super) fn unwatch(&self, fd: RawFd) {
        let _ = self.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_keep_generations_apart() {
        for s in [
            Source::HybridListener,
            Source::Client {
                id: 7,
                generation: 3,
            },
            Source::Conn {
                slot: u32::MAX,
                generation: GEN_MASK,
            },
            Source::Conn {
                slot: 0,
                generation: 0,
            },
        ] {
            assert_eq!(Source::decode(s.encode()), Some(s));
        }
        let a = Source::Conn {
            slot: 5,
            generation: 1,
        };
        let b = Source::Conn {
            slot: 5,
            generation: 2,
        };
        assert_ne!(a.encode(), b.encode());
        // Generations wrap inside their field, never into the kind bits.
        assert_eq!(
            Source::decode(
                Source::Conn {
                    slot: 1,
                    generation: GEN_MASK + 1
                }
                .encode()
            ),
            Some(Source::Conn {
                slot: 1,
                generation: 0
            })
        );
        assert_eq!(Source::decode(0), None);
        assert_eq!(Source::decode(3 << KIND_SHIFT | 1), None);
        // The worker's tokens are small constants: never the device's.
        assert!(!is_device_token(16 + 2));
        assert!(is_device_token(Source::HybridListener.encode()));
    }
}
