//! Packets to sibling VMs whose inbox is full.
//!
//! A receiver that posts no rx buffers must not stop the sender's whole tx queue (that would let
//! one guest freeze another's host traffic). A packet that does not fit the receiver's inbox is
//! parked in the sender's device, per destination and in order (later packets to the same
//! destination queue behind it); the parked packets go out first when the receiver makes room.
//! When a destination's parking is full too, the packet is dropped and the sending guest gets an
//! RST for that connection: the stalled receiver costs the sender that connection, nothing else.

use std::collections::{HashMap, VecDeque};

use super::VsockDevice;
use crate::host::sibling::Delivery;
use crate::vsock::packet::{PacketHeader, HEADER_SIZE};

/// Packets parked per destination VM.
pub const MAX_PARKED_PACKETS: usize = 2048;
/// Payload bytes parked per destination VM.
pub const MAX_PARKED_BYTES: usize = 8 << 20;

#[derive(Default)]
pub(super) struct ParkedSiblings {
    by_dst: HashMap<u64, Parked>,
}

#[derive(Default)]
struct Parked {
    packets: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl ParkedSiblings {
    pub(super) fn clear(&mut self) {
        self.by_dst.clear();
    }
}

impl VsockDevice {
    /// Sends a guest packet to sibling `dst` (or parks it, or resets its connection).
    pub(super) fn send_to_sibling(&mut self, hdr: &PacketHeader, dst: u64, packet: Vec<u8>) {
        let packet = if self
            .parked
            .by_dst
            .get(&dst)
            .is_some_and(|p| !p.packets.is_empty())
        {
            packet
        } else {
            match self.router.deliver(&self.sibling, dst, packet) {
                Delivery::Delivered => return,
                Delivery::Full(packet) => packet,
                Delivery::Unreachable => {
                    crate::log_limited!(Debug, "no reachable sibling with CID {dst}");
                    self.forget_sibling(hdr);
                    self.reply_rst(hdr);
                    return;
                }
            }
        };
        let parked = self.parked.by_dst.entry(dst).or_default();
        if parked.packets.len() >= MAX_PARKED_PACKETS
            || parked.bytes + packet.len() > MAX_PARKED_BYTES
        {
            crate::log_limited!(
                Warn,
                "guest {} does not take packets from guest {}: connection {}:{} -> {dst}:{} reset",
                dst,
                self.cfg.guest_cid,
                self.cfg.guest_cid,
                hdr.src_port(),
                hdr.dst_port()
            );
            self.stats.dropped_packets += 1;
            self.forget_sibling(hdr);
            self.reply_rst(hdr);
            return;
        }
        parked.bytes += packet.len();
        parked.packets.push_back(packet);
    }

    /// Delivers parked packets while their receivers have room; packets for a receiver that went
    /// away are answered with RST.
    pub(super) fn drain_parked(&mut self) {
        if self.parked.by_dst.is_empty() {
            return;
        }
        let dsts: Vec<u64> = self.parked.by_dst.keys().copied().collect();
        for dst in dsts {
            let Some(mut parked) = self.parked.by_dst.remove(&dst) else {
                continue;
            };
            while let Some(packet) = parked.packets.pop_front() {
                let len = packet.len();
                // Parked packets were read whole from the guest: each starts with a header.
                let mut raw = [0u8; HEADER_SIZE];
                if let Some(h) = packet.get(..HEADER_SIZE) {
                    raw.copy_from_slice(h);
                }
                match self.router.deliver(&self.sibling, dst, packet) {
                    Delivery::Delivered => parked.bytes -= len,
                    Delivery::Full(packet) => {
                        parked.packets.push_front(packet);
                        break;
                    }
                    Delivery::Unreachable => {
                        // The receiver went away: tell our guest, as if it were sent now.
                        parked.bytes -= len;
                        let hdr = PacketHeader::from_bytes(&raw);
                        self.forget_sibling(&hdr);
                        self.reply_rst(&hdr);
                    }
                }
            }
            if !parked.packets.is_empty() {
                self.parked.by_dst.insert(dst, parked);
            }
        }
    }
}
