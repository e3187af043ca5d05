//! A guest driver for the device's unit tests: guest RAM, the three split virtqueues, and helpers
//! that post packets on tx, rx buffers, and read what the device put in the used rings. No
//! process, no frontend.
//!
//! (Not virtio-queue's `MockSplitQueue` (feature `test-utils`): AOSP's libvirtio_queue is built
//! without that feature and Soong compiles these tests too; its constructor zeroes the ring
//! indices, so it cannot be re-created per operation; `add_desc_chains` writes avail entries at
//! `avail_idx + n` without wrapping at the queue size, so a ring cannot wrap; its avail ring
//! `end()` counts elements as bytes, which places the used ring over the avail ring's upper half;
//! and its `create_queue`/`build_desc_chain` produce virtio-queue's `Queue`/`DescriptorChain`,
//! while the device runs on its own `Vring`.)

use std::collections::HashMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Rings, VsockDevice};
use crate::iotlb::{DeviceMemory, VhostIommu};
use crate::virtio::{EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use crate::virtqueue::vring::Vring;
use crate::vsock::packet::{kind, Endpoints, Op, PacketHeader, HEADER_SIZE, HOST_CID};

const QUEUE_SIZE: u16 = 16;
const RAM: usize = 16 << 20;
/// Where each queue's rings start (rx, tx, event): descriptor table, then the avail ring at
/// +`AVAIL`, the used ring at +`USED`. Buffers live from `BUFFERS` up.
const RING_AT: [u64; NUM_QUEUES] = [0x0000, 0x1000, 0x2000];
const AVAIL: u64 = 0x200;
const USED: u64 = 0x400;
const BUFFERS: u64 = 0x10000;
const VRING_DESC_F_WRITE: u16 = 2;
/// Payload room of the rx buffers the test guest posts (Linux posts 4 KiB).
pub(super) const RX_PAYLOAD: usize = 4096;

pub(super) struct TestGuest {
    pub(super) mem: DeviceMemory,
    vrings: Vec<Vring>,
    next_buf: u64,
    next_desc: [u16; NUM_QUEUES],
    used_seen: [u16; NUM_QUEUES],
    /// Buffer address of each outstanding chain, by (queue, head).
    bufs: HashMap<(usize, u16), u64>,
    pub(super) cid: u64,
}

impl TestGuest {
    pub(super) fn new() -> TestGuest {
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let mem = DeviceMemory::new(ram, VhostIommu::new(16), false, ());
        let mut vrings = Vec::new();
        for at in RING_AT {
            let mut v = Vring::new(256).unwrap();
            v.set_num(QUEUE_SIZE as u32).unwrap();
            v.set_addresses(at, at + AVAIL, at + USED).unwrap();
            v.set_enabled(true);
            v.start(&mem).unwrap();
            vrings.push(v);
        }
        TestGuest {
            mem,
            vrings,
            next_buf: BUFFERS,
            next_desc: [0; NUM_QUEUES],
            used_seen: [0; NUM_QUEUES],
            bufs: HashMap::new(),
            cid: 3,
        }
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(0x1000);
        assert!(
            self.next_buf < RAM as u64,
            "test guest out of buffer memory"
        );
        at
    }

    /// Makes one single-descriptor chain available on `queue`.
    fn add_chain(&mut self, queue: usize, addr: u64, len: usize, writable: bool) {
        let ring = RING_AT[queue];
        let head = self.next_desc[queue];
        self.next_desc[queue] = (head + 1) % QUEUE_SIZE;
        let flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        let m = &self.mem;
        m.write_slice(&desc, GuestAddress(ring + 16 * head as u64))
            .unwrap();
        let idx: u16 = m.read_obj(GuestAddress(ring + AVAIL + 2)).unwrap();
        let slot = ring + AVAIL + 4 + 2 * (idx % QUEUE_SIZE) as u64;
        m.write_obj(head, GuestAddress(slot)).unwrap();
        m.write_obj(idx.wrapping_add(1), GuestAddress(ring + AVAIL + 2))
            .unwrap();
        self.bufs.insert((queue, head), addr);
    }

    /// The (head, len) entries the device added to `queue`'s used ring since the last call.
    fn take_used(&mut self, queue: usize) -> Vec<(u16, u32)> {
        let used = RING_AT[queue] + USED;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[queue] != idx {
            // struct virtq_used_elem { le32 id; le32 len; }
            let at = used + 4 + 8 * (self.used_seen[queue] % QUEUE_SIZE) as u64;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[queue] = self.used_seen[queue].wrapping_add(1);
        }
        out
    }

    pub(super) fn rings(&mut self) -> Rings<'_> {
        Rings {
            mem: &self.mem,
            vrings: &mut self.vrings,
        }
    }

    /// One round of the worker's data pump.
    pub(super) fn pump(&mut self, dev: &mut VsockDevice) {
        let mut rings = self.rings();
        dev.process_tx(&mut rings);
        dev.process_rx(&mut rings);
        dev.process_event(&mut rings);
    }

    /// The guest sends one packet (header + payload in one descriptor), and the device runs.
    pub(super) fn send(&mut self, dev: &mut VsockDevice, hdr: PacketHeader, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.set_len(payload.len() as u32);
        let at = self.alloc(HEADER_SIZE + payload.len());
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + HEADER_SIZE as u64))
            .unwrap();
        self.add_chain(TX_QUEUE, at, HEADER_SIZE + payload.len(), false);
        self.pump(dev);
        let used = self.take_used(TX_QUEUE);
        assert!(
            used.iter().all(|&(_, len)| len == 0),
            "tx chains come back with length 0: {used:?}"
        );
    }

    /// Posts `n` rx buffers of [`RX_PAYLOAD`] bytes of payload room.
    pub(super) fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let len = HEADER_SIZE + RX_PAYLOAD;
            let at = self.alloc(len);
            self.add_chain(RX_QUEUE, at, len, true);
        }
    }

    /// Packets the device delivered on rx since the last call.
    pub(super) fn received(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len) in self.take_used(RX_QUEUE) {
            let at = self.bufs.remove(&(RX_QUEUE, head)).unwrap();
            let mut raw = [0u8; HEADER_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(at)).unwrap();
            let hdr = PacketHeader::from_bytes(&raw);
            assert_eq!(
                len as usize,
                HEADER_SIZE + hdr.len() as usize,
                "used length"
            );
            let mut payload = vec![0u8; hdr.len() as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(at + HEADER_SIZE as u64))
                .unwrap();
            out.push((hdr, payload));
        }
        out
    }

    /// Event ids the device posted (after [`Self::post_event`]).
    pub(super) fn events(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        for (head, len) in self.take_used(EVENT_QUEUE) {
            let at = self.bufs.remove(&(EVENT_QUEUE, head)).unwrap();
            assert_eq!(len, 4);
            out.push(self.mem.read_obj::<u32>(GuestAddress(at)).unwrap());
        }
        out
    }

    pub(super) fn post_event(&mut self) {
        let at = self.alloc(8);
        self.add_chain(EVENT_QUEUE, at, 8, true);
    }

    /// A header from this guest's `guest_port` to host port `host_port`, advertising
    /// `buf_alloc` with `fwd_cnt`.
    pub(super) fn hdr(
        &self,
        guest_port: u32,
        host_port: u32,
        op: Op,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> PacketHeader {
        let ends = Endpoints {
            src_cid: self.cid,
            src_port: guest_port,
            dst_cid: HOST_CID,
            dst_port: host_port,
        };
        let mut h = PacketHeader::new(ends, kind::STREAM, op);
        h.set_buf_alloc(buf_alloc).set_fwd_cnt(fwd_cnt);
        h
    }
}
