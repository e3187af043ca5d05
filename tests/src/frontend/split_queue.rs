//! The driver side of a split virtqueue in guest memory.
//!
//! Layout (virtio 1.x §2.7): descriptor table (16 bytes per entry: `le64 addr, le32 len,
//! le16 flags, le16 next`), avail ring (`le16 flags, le16 idx, le16 ring[size], le16 used_event`),
//! used ring (`le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest_memory::GuestMemory;
use super::vhost_user_client::VringSetup;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// When the driver notifies the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickPolicy {
    /// On every [`SplitQueue::kick`].
    Always,
    /// Only when the device's `avail_event` asks for it (EVENT_IDX), as Linux does.
    EventIdx,
}

/// `vring_need_event` from the virtio spec.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub gpa: u64,
    pub len: u32,
    /// Device-writable (rx) rather than device-readable (tx).
    pub writable: bool,
}

/// A completed chain from the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// The driver's view of one split virtqueue.
pub struct SplitQueue {
    mem: Arc<GuestMemory>,
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    next_avail: u16,
    last_used: u16,
    /// Descriptors of each chain in flight, by head.
    in_flight: HashMap<u16, Vec<u16>>,
    /// Write `used_event` so the device interrupts on every completion (EVENT_IDX).
    pub event_idx: bool,
    pub kick: EventFd,
    pub call: EventFd,
    pub err: EventFd,
    completed: VecDeque<Used>,
    pub kick_policy: KickPolicy,
    last_kick_avail: u16,
    /// Notifications sent / left out by [`Self::kick`].
    pub kicks_sent: u64,
    pub kicks_suppressed: u64,
}

impl SplitQueue {
    /// Allocates the rings of a queue with `size` entries in `mem`.
    pub fn new(mem: Arc<GuestMemory>, index: u32, size: u16) -> io::Result<Self> {
        assert!(size.is_power_of_two());
        let n = size as u64;
        let desc = mem.alloc(16 * n, 16);
        let avail = mem.alloc(6 + 2 * n, 2);
        let used = mem.alloc(6 + 8 * n, 4);
        mem.fill(desc, 16 * n as usize, 0);
        mem.fill(avail, (6 + 2 * n) as usize, 0);
        mem.fill(used, (6 + 8 * n) as usize, 0);
        Ok(SplitQueue {
            mem,
            index,
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            next_avail: 0,
            last_used: 0,
            in_flight: HashMap::new(),
            event_idx: true,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            err: EventFd::new(EFD_NONBLOCK)?,
            completed: VecDeque::new(),
            kick_policy: KickPolicy::Always,
            last_kick_avail: 0,
            kicks_sent: 0,
            kicks_suppressed: 0,
        })
    }

    /// The frontend's description of this ring (frontend VAs, eventfds).
    pub fn setup(&self) -> VringSetup {
        VringSetup {
            index: self.index,
            size: self.size,
            desc_va: self.mem.frontend_va(self.desc).unwrap(),
            avail_va: self.mem.frontend_va(self.avail).unwrap(),
            used_va: self.mem.frontend_va(self.used).unwrap(),
            kick: self.kick.as_raw_fd(),
            call: self.call.as_raw_fd(),
            err: Some(self.err.as_raw_fd()),
        }
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Free descriptor count.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Number of chains published and not yet returned by the device.
    pub fn num_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Writes a raw descriptor table entry.
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(self.desc + 16 * i as u64, &b);
    }

    /// Builds a chain of `bufs` in the descriptor table; returns its head (not yet published).
    /// Returns None when there are not enough free descriptors.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Option<u16> {
        assert!(!bufs.is_empty());
        if self.free.len() < bufs.len() {
            return None;
        }
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, b) in bufs.iter().enumerate() {
            let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = if k + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
                ids[k + 1]
            } else {
                0
            };
            self.write_desc(ids[k], b.gpa, b.len, flags, next);
        }
        let head = ids[0];
        self.in_flight.insert(head, ids);
        Some(head)
    }

    /// Puts `head` in the avail ring and publishes the new avail index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.next_avail % self.size;
        self.mem
            .store_u16(self.avail + 4 + 2 * slot as u64, head, Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::Release);
        self.mem
            .store_u16(self.avail + 2, self.next_avail, Ordering::Release);
    }

    /// Publishes an arbitrary head index (may be bogus), for malformed-ring tests.
    pub fn publish_raw(&mut self, head: u16) {
        self.publish(head)
    }

    /// `add_chain` + `publish`.
    pub fn push(&mut self, bufs: &[Buf]) -> Option<u16> {
        let head = self.add_chain(bufs)?;
        self.publish(head);
        Some(head)
    }

    /// Notifies the device unconditionally.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        self.kick.write(1).expect("kick eventfd");
    }

    /// Notifies the device if the kick policy says so (EVENT_IDX: only when the avail index
    /// crossed the device's `avail_event` since the last kick).
    pub fn kick(&mut self) {
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = self.last_kick_avail;
        self.last_kick_avail = new;
        let needed = match self.kick_policy {
            KickPolicy::Always => true,
            KickPolicy::EventIdx => need_event(self.avail_event(), new, old),
        };
        if needed {
            self.kicks_sent += 1;
            self.kick.write(1).expect("kick eventfd");
        } else {
            self.kicks_suppressed += 1;
        }
    }

    /// The avail index the driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.load_u16(self.used + 2, Ordering::Acquire)
    }

    /// One line describing the ring indices (for failure messages).
    pub fn describe(&self) -> String {
        format!(
            "q{}: avail_idx {} used_idx {} last_used {} avail_event {} used_event {} in_flight {} kicks {}/{} suppressed",
            self.index,
            self.next_avail,
            self.used_idx(),
            self.last_used,
            self.avail_event(),
            self.mem
                .load_u16(self.avail + 4 + 2 * self.size as u64, Ordering::Acquire),
            self.in_flight.len(),
            self.kicks_sent,
            self.kicks_suppressed
        )
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        self.mem
            .load_u16(self.used + 4 + 8 * self.size as u64, Ordering::Acquire)
    }

    fn set_used_event(&self, v: u16) {
        self.mem
            .store_u16(self.avail + 4 + 2 * self.size as u64, v, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Collects all completions now in the used ring; with EVENT_IDX, re-arms `used_event` and
    /// re-checks the ring afterwards (so a completion racing the re-arm is not missed).
    fn reap(&mut self) -> io::Result<()> {
        loop {
            self.reap_once()?;
            if !self.event_idx || self.used_idx() == self.last_used {
                return Ok(());
            }
        }
    }

    fn reap_once(&mut self) -> io::Result<()> {
        let used_idx = self.used_idx();
        while self.last_used != used_idx {
            let slot = (self.last_used % self.size) as u64;
            let e = self.used + 4 + 8 * slot;
            let id = self.mem.load_u32(e, Ordering::Acquire);
            let len = self.mem.load_u32(e + 4, Ordering::Acquire);
            self.last_used = self.last_used.wrapping_add(1);
            let head = u16::try_from(id).map_err(|_| {
                io::Error::other(format!("queue {}: used id {id} out of range", self.index))
            })?;
            if !self.in_flight.contains_key(&head) || self.completed.iter().any(|u| u.head == head)
            {
                return Err(io::Error::other(format!(
                    "queue {}: used id {head} is not a chain in flight",
                    self.index
                )));
            }
            // Descriptors are freed when the completion is handed out (`pop_used`), so a chain
            // built in between cannot reuse the head of a completion not yet processed.
            self.completed.push_back(Used { head, len });
        }
        if self.event_idx {
            self.set_used_event(self.last_used);
        }
        Ok(())
    }

    /// The next completed chain, if any (no waiting).
    pub fn pop_used(&mut self) -> io::Result<Option<Used>> {
        if self.completed.is_empty() {
            self.reap()?;
        }
        let u = self.completed.pop_front();
        if let Some(u) = u {
            let ids = self
                .in_flight
                .remove(&u.head)
                .expect("completed chain in flight");
            self.free.extend(ids);
        }
        Ok(u)
    }

    /// Waits up to `timeout` for the call eventfd (returns whether it fired); drains it.
    pub fn wait_call(&self, timeout: Duration) -> bool {
        wait_fd(self.call.as_raw_fd(), timeout) && self.call.read().is_ok()
    }

    /// True when the error eventfd was signalled within `timeout`.
    pub fn wait_err(&self, timeout: Duration) -> bool {
        wait_fd(self.err.as_raw_fd(), timeout) && self.err.read().is_ok()
    }

    /// Waits up to `timeout` for the next completed chain. Polls the used ring every few
    /// milliseconds in addition to waiting on the call eventfd, so a missing interrupt costs time
    /// but never a hang.
    pub fn wait_used(&mut self, timeout: Duration) -> io::Result<Option<Used>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used()? {
                return Ok(Some(u));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_call(left.min(Duration::from_millis(5)));
        }
    }
}

/// poll(2) one fd for readability.
pub fn wait_fd(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

    /// A `vm_memory` view of the same mappings, for the device side.
    fn device_view(mem: &GuestMemory) -> GuestMemoryMmap {
        let regions = mem
            .regions()
            .iter()
            .map(|r| {
                // SAFETY: the mapping outlives the view within the test; not owned, so not unmapped.
                let m = unsafe {
                    MmapRegion::build_raw(
                        r.frontend_va() as *mut u8,
                        r.size as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                    )
                }
                .unwrap();
                GuestRegionMmap::new(m, GuestAddress(r.gpa)).unwrap()
            })
            .collect();
        GuestMemoryMmap::from_regions(regions).unwrap()
    }

    fn device_queue(q: &SplitQueue, vm: &GuestMemoryMmap) -> Queue {
        let mut dq = Queue::new(q.size).unwrap();
        dq.set_size(q.size);
        dq.try_set_desc_table_address(GuestAddress(q.desc)).unwrap();
        dq.try_set_avail_ring_address(GuestAddress(q.avail))
            .unwrap();
        dq.try_set_used_ring_address(GuestAddress(q.used)).unwrap();
        dq.set_event_idx(true);
        dq.set_ready(true);
        assert!(dq.is_valid(vm));
        dq
    }

    #[test]
    fn ring_layout_matches_virtio_queue() {
        let mem =
            Arc::new(GuestMemory::new(&[(0x1000, 0x10_0000), (0x4000_0000, 0x10_0000)]).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 1, 16).unwrap();
        let vm = device_view(&mem);
        let mut dq = device_queue(&q, &vm);

        // A chain: 2 readable buffers (one in each region) and 1 writable.
        let a = 0x8000;
        let b = 0x4000_0100;
        let c = mem.alloc(64, 8);
        mem.write(a, b"hello ");
        mem.write(b, b"world");
        let head = q
            .push(&[
                Buf {
                    gpa: a,
                    len: 6,
                    writable: false,
                },
                Buf {
                    gpa: b,
                    len: 5,
                    writable: false,
                },
                Buf {
                    gpa: c,
                    len: 64,
                    writable: true,
                },
            ])
            .unwrap();
        q.notify();
        assert_eq!(q.kick.read().unwrap(), 1);

        let chain = dq.pop_descriptor_chain(&vm).expect("device sees the chain");
        assert_eq!(chain.head_index(), head);
        let descs: Vec<_> = chain.clone().collect();
        assert_eq!(descs.len(), 3);
        assert_eq!(descs[0].addr().0, a);
        assert_eq!(descs[0].len(), 6);
        assert!(!descs[0].is_write_only());
        assert_eq!(descs[1].addr().0, b);
        assert!(!descs[1].is_write_only());
        assert_eq!(descs[2].addr().0, c);
        assert_eq!(descs[2].len(), 64);
        assert!(descs[2].is_write_only());
        let mut reader = chain.clone().reader(&vm).unwrap();
        let mut got = vec![0u8; 11];
        std::io::Read::read_exact(&mut reader, &mut got).unwrap();
        assert_eq!(&got, b"hello world");
        let mut writer = chain.writer(&vm).unwrap();
        std::io::Write::write_all(&mut writer, b"reply").unwrap();

        assert!(q.pop_used().unwrap().is_none());
        dq.add_used(&vm, head, 5).unwrap();
        assert!(
            dq.needs_notification(&vm).unwrap(),
            "used_event asks for an interrupt"
        );
        let u = q.pop_used().unwrap().unwrap();
        assert_eq!(u, Used { head, len: 5 });
        assert_eq!(mem.read_vec(c, 5), b"reply");
        assert_eq!(q.num_free(), 16);
    }

    #[test]
    fn wraps_around_many_times() {
        let mem = Arc::new(GuestMemory::single(0x10_0000).unwrap());
        let mut q = SplitQueue::new(mem.clone(), 0, 4).unwrap();
        let vm = device_view(&mem);
        let mut dq = device_queue(&q, &vm);
        let buf = mem.alloc(4096, 8);
        for round in 0..100u32 {
            let heads: Vec<u16> = (0..2)
                .map(|k| {
                    q.push(&[
                        Buf {
                            gpa: buf + 100 * k,
                            len: 10,
                            writable: true,
                        },
                        Buf {
                            gpa: buf + 100 * k + 10,
                            len: 20,
                            writable: true,
                        },
                    ])
                    .unwrap()
                })
                .collect();
            for &h in &heads {
                let chain = dq.pop_descriptor_chain(&vm).unwrap();
                assert_eq!(chain.head_index(), h);
                assert_eq!(chain.clone().count(), 2);
                dq.add_used(&vm, h, round).unwrap();
            }
            for &h in &heads {
                assert_eq!(
                    q.pop_used().unwrap(),
                    Some(Used {
                        head: h,
                        len: round
                    })
                );
            }
            // avail_event: the device publishes where it wants the next kick.
            dq.enable_notification(&vm).unwrap();
            assert_eq!(q.avail_event(), q.avail_idx());
        }
        assert!(dq.pop_descriptor_chain(&vm).is_none());
    }

    #[test]
    fn wait_used_times_out_without_completion() {
        let mem = Arc::new(GuestMemory::single(0x10_0000).unwrap());
        let mut q = SplitQueue::new(mem, 0, 8).unwrap();
        let t = Instant::now();
        assert!(q.wait_used(Duration::from_millis(50)).unwrap().is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
