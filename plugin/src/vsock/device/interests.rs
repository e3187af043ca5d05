//! The device's own event interests: a nested epoll set holding the hybrid listener, the host
//! clients waiting for their CONNECT line and every connected host socket (as Firecracker's
//! vsock muxer does). The worker watches only this set's fd and calls
//! [`super::VsockDevice::process_host_events`] when it is readable; no epoll of the worker's
//! reaches the device.
//!
//! Stale events: a connection slot (or a waiting-client index) is reused as soon as it is free,
//! and an event already taken from the kernel for the previous occupant may be handled after the
//! reuse (same batch). Every token therefore carries the occupant's *generation*, and an event
//! whose generation is not the slot's current one is dropped.

use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Bits of a token: kind (2) | generation (30) | slot or client index (32).
const KIND_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 32;
/// Generations wrap at 2^30; a stale event would have to survive 2^30 reuses of its slot.
pub(super) const GEN_MASK: u32 = (1 << 30) - 1;
const KIND_LISTENER: u64 = 0;
const KIND_CLIENT: u64 = 1;
const KIND_CONN: u64 = 2;

/// What an event of the device's epoll set is about.
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
            KIND_LISTENER if v == 0 => Some(Source::HybridListener),
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

/// The nested epoll set.
pub(super) struct Interests {
    epoll: Epoll,
}

impl Interests {
    pub(super) fn new() -> io::Result<Interests> {
        Ok(Interests {
            epoll: Epoll::new()?,
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.epoll.as_raw_fd()
    }

    /// The hybrid listener, level-triggered (a flood is taken in batches, round by round).
    pub(super) fn watch_listener(&self, fd: RawFd) -> io::Result<()> {
        let ev = EpollEvent::new(EventSet::IN, Source::HybridListener.encode());
        self.epoll.ctl(ControlOperation::Add, fd, ev)
    }

    /// A waiting host client, level-triggered: readable, or gone.
    pub(super) fn watch_client(&self, fd: RawFd, id: u32, generation: u32) -> io::Result<()> {
        let ev = EventSet::IN | EventSet::READ_HANG_UP;
        let token = Source::Client { id, generation }.encode();
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
    }

    /// A connection's host socket, edge-triggered both ways. `was_client`: the socket is
    /// already in the set as a waiting client (its registration is replaced).
    pub(super) fn watch_conn(
        &self,
        fd: RawFd,
        slot: u32,
        generation: u32,
        was_client: bool,
    ) -> io::Result<()> {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        let op = if was_client {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        let token = Source::Conn { slot, generation }.encode();
        self.epoll.ctl(op, fd, EpollEvent::new(ev, token))
    }

    /// Takes `fd` out of the set (closing an fd does that too).
    pub(super) fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// The events ready now (never waits).
    pub(super) fn ready(&self, events: &mut [EpollEvent]) -> usize {
        loop {
            match self.epoll.wait(0, events) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log_limited!(Warn, "device epoll wait failed: {e}");
                    return 0;
                }
            }
        }
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
        assert_eq!(Source::decode(3 << KIND_SHIFT), None);
    }
}
