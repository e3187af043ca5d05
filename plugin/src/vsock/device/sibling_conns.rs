//! Sibling connections across a DEVICE_STATE load into a running process.
//!
//! The device keeps no protocol state for sibling traffic (see `host::sibling`), but a restore
//! needs two facts about it (issue 14):
//! - Which sibling connections this guest had when the load came: the load rolls the guest back
//!   and TRANSPORT_RESET resets its sockets, so the sibling ends of those connections are reset
//!   too, right away (an RST to each peer: a reset connection is reported to both ends).
//! - After a restore, which sibling connections are new: only those may reach the guest. A packet
//!   from a sibling for any other connection (the peer still holds a pre-restore socket, or a
//!   packet was already in flight) is dropped and answered with RST to the peer; one the restored
//!   guest sends for such a connection (a socket from the snapshot it has not reset yet) is
//!   dropped without reply, as for host connections (`snapshot`).
//!
//! A connection is known from its REQUEST (either direction) until an RST (either direction, or
//! the device's own RST when the peer is unreachable or its parking is full). Connections ending
//! with no RST seen here (both ends went quiet for good) stay known until the set is cleared by
//! a restore; the set is bounded by [`MAX_TRACKED`].

use std::collections::HashMap;

use super::VsockDevice;
use crate::host::sibling::Delivery;
use crate::vsock::packet::{Op, PacketHeader, HEADER_SIZE};

/// Sibling connections tracked per VM. Beyond it a new connection is relayed but not tracked:
/// a later load does not reset its peer, and after a restore its packets are dropped.
pub const MAX_TRACKED: usize = 65536;

/// One sibling connection, from this guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SiblingKey {
    peer_cid: u64,
    peer_port: u32,
    local_port: u32,
}

#[derive(Default)]
pub(super) struct SiblingConns {
    /// Known connections and their socket type (an RST must carry it: Linux drops one whose
    /// type differs from the socket's).
    live: HashMap<SiblingKey, u16>,
    /// A restore happened: only connections in `live` pass.
    filtering: bool,
}

impl SiblingConns {
    /// Updates the set for a packet of `key`; false: the packet belongs to no known connection
    /// after a restore and must not pass.
    fn note(&mut self, key: SiblingKey, kind: u16, op: Option<Op>) -> bool {
        match op {
            Some(Op::Request) => {
                if self.live.len() < MAX_TRACKED {
                    self.live.insert(key, kind);
                } else {
                    crate::log_limited!(
                        Warn,
                        "{MAX_TRACKED} sibling connections tracked; {key:?} is not"
                    );
                }
                true
            }
            Some(Op::Rst) => self.live.remove(&key).is_some() || !self.filtering,
            _ => !self.filtering || self.live.contains_key(&key),
        }
    }
}

fn header_of(packet: &[u8]) -> Option<PacketHeader> {
    let raw: &[u8; HEADER_SIZE] = packet.get(..HEADER_SIZE)?.try_into().ok()?;
    Some(PacketHeader::from_bytes(raw))
}

impl VsockDevice {
    /// Whether a guest packet for sibling `hdr.dst_cid()` may go out (see the module rules).
    pub(super) fn sibling_out_allowed(&mut self, hdr: &PacketHeader) -> bool {
        let key = SiblingKey {
            peer_cid: hdr.dst_cid(),
            peer_port: hdr.dst_port(),
            local_port: hdr.src_port(),
        };
        let ok = self.sibling_conns.note(key, hdr.kind(), hdr.op());
        if !ok {
            crate::log_limited!(
                Debug,
                "guest {}: {:?} for pre-restore sibling connection {key:?}; dropped",
                self.cfg.guest_cid,
                hdr.op()
            );
        }
        ok
    }

    /// The device answered the guest's packet `hdr` to a sibling with RST (unreachable, or its
    /// parking full): that connection is over.
    pub(super) fn forget_sibling(&mut self, hdr: &PacketHeader) {
        self.sibling_conns.live.remove(&SiblingKey {
            peer_cid: hdr.dst_cid(),
            peer_port: hdr.dst_port(),
            local_port: hdr.src_port(),
        });
    }

    /// The next sibling packet for the guest, skipping (and answering with RST) those of
    /// connections from before a restore.
    pub(super) fn pop_sibling(&mut self) -> Option<Vec<u8>> {
        loop {
            let packet = self.sibling.pop()?;
            let Some(hdr) = header_of(&packet) else {
                // The router only carries packets read whole from a guest: never shorter.
                continue;
            };
            let key = SiblingKey {
                peer_cid: hdr.src_cid(),
                peer_port: hdr.src_port(),
                local_port: hdr.dst_port(),
            };
            if self.sibling_conns.note(key, hdr.kind(), hdr.op()) {
                return Some(packet);
            }
            crate::log_limited!(
                Debug,
                "guest {}: {:?} from sibling for pre-restore connection {key:?}; dropped, peer reset",
                self.cfg.guest_cid,
                hdr.op()
            );
            self.stats.dropped_packets += 1;
            if hdr.op() != Some(Op::Rst) {
                self.rst_to_sibling(&PacketHeader::new(
                    hdr.endpoints().reversed(),
                    hdr.kind(),
                    Op::Rst,
                ));
            }
        }
    }

    /// A load rolled the guest back: every sibling connection it had is reset at the peer, and
    /// from now on only connections opened after this point reach the guest.
    pub(super) fn reset_sibling_conns(&mut self) {
        let live: Vec<(SiblingKey, u16)> = self.sibling_conns.live.drain().collect();
        self.sibling_conns.filtering = true;
        let guest_cid = self.cfg.guest_cid;
        for (key, kind) in live {
            let ends = crate::vsock::packet::Endpoints {
                src_cid: guest_cid,
                src_port: key.local_port,
                dst_cid: key.peer_cid,
                dst_port: key.peer_port,
            };
            self.rst_to_sibling(&PacketHeader::new(ends, kind, Op::Rst));
        }
    }

    /// Sends an RST straight to a sibling. A peer whose inbox is full or that is gone gets none:
    /// its next packet for the connection is answered by [`Self::pop_sibling`].
    fn rst_to_sibling(&mut self, rst: &PacketHeader) {
        let to = rst.dst_cid();
        match self
            .router
            .deliver(&self.sibling, to, rst.to_bytes().to_vec())
        {
            Delivery::Delivered => self.stats.rst_sent += 1,
            Delivery::Full(_) | Delivery::Unreachable => {
                crate::log_limited!(Debug, "RST for sibling {to} not delivered now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_guest::TestGuest;
    use super::super::tests::{device, TempDir};
    use super::*;
    use crate::vsock::packet::{kind, Endpoints};

    /// A connect to a sibling that is not there is answered with RST and not remembered: a guest
    /// retrying it cannot fill the set.
    #[test]
    fn an_unreachable_sibling_connect_is_not_tracked() {
        let dir = TempDir::new("sibling-unreachable");
        let mut dev = device(&dir);
        let mut g = TestGuest::new();
        g.post_rx(4);
        let ends = Endpoints {
            src_cid: 3,
            src_port: 1024,
            dst_cid: 9,
            dst_port: 5000,
        };
        g.send(
            &mut dev,
            PacketHeader::new(ends, kind::STREAM, Op::Request),
            &[],
        );
        g.pump(&mut dev);
        let got: Vec<Option<Op>> = g.received().iter().map(|(h, _)| h.op()).collect();
        assert_eq!(got, vec![Some(Op::Rst)]);
        assert!(dev.sibling_conns.live.is_empty());
    }

    fn key(p: u32) -> SiblingKey {
        SiblingKey {
            peer_cid: 4,
            peer_port: p,
            local_port: 1024,
        }
    }

    /// Before any restore everything passes; after one, only connections whose REQUEST came
    /// since, until their RST.
    #[test]
    fn after_a_restore_only_new_connections_pass() {
        let mut s = SiblingConns::default();
        assert!(s.note(key(1), 1, Some(Op::Rw)));
        assert!(s.note(key(1), 1, Some(Op::Request)));
        s.live.clear();
        s.filtering = true;
        assert!(!s.note(key(1), 1, Some(Op::Rw)));
        assert!(!s.note(key(1), 1, Some(Op::Rst)));
        assert!(s.note(key(1), 1, Some(Op::Request)));
        assert!(s.note(key(1), 1, Some(Op::Response)));
        assert!(s.note(key(1), 1, Some(Op::Rw)));
        assert!(s.note(key(1), 1, Some(Op::Rst)));
        assert!(!s.note(key(1), 1, Some(Op::Rw)));
    }
}
