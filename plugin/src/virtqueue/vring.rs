//! One virtqueue as vhost-user hands it over: the split ring (`virtio_queue::Queue`, driven with
//! guest-physical addresses) plus its kick, call and error eventfds.
//!
//! Lifecycle (vhost-user spec "Ring states"): a ring starts *stopped*; the kick fd (SET_VRING_KICK)
//! starts it, GET_VRING_BASE stops it. Independently it is *enabled* or *disabled*
//! (SET_VRING_ENABLE, or all enabled at SET_FEATURES when PROTOCOL_FEATURES was not negotiated).
//! The device touches a ring only while it is started, enabled and not broken. A ring the guest
//! corrupted (bad avail index, descriptor outside guest memory) becomes *broken*: it is not
//! processed again until the frontend sets it up anew, and its error eventfd is signalled.

use std::fs::File;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::chain::ChainBuffers;
use crate::iotlb::DeviceMemory;
use crate::iotlb::TranslationFail;

/// A queue waiting for an IOTLB mapping (translated mode only). While parked nothing is popped;
/// the chain that missed stays available in the ring.
#[derive(Debug, Clone, Copy)]
pub struct Parked {
    pub fail: TranslationFail,
    pub since: Instant,
    /// The MISS went out on the backend channel.
    pub miss_sent: bool,
    /// The frontend answered the MISS: a repeat of the same failure is final.
    pub answered: bool,
    /// Something changed (UPDATE or answer): try again.
    pub retry: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VringError {
    #[error("queue size {0} is not a power of two in 1..={1}")]
    BadSize(u32, u16),
    #[error("ring address not aligned or not in guest memory: {0}")]
    BadAddress(String),
    #[error("ring layout is not inside guest memory")]
    NotInMemory,
}

pub struct Vring {
    queue: Queue,
    max_size: u16,
    kick: Option<EventFd>,
    call: Option<EventFd>,
    err: Option<EventFd>,
    started: bool,
    enabled: bool,
    broken: bool,
    parked: Option<Parked>,
    /// IOTLB generation at which the whole ring layout was last found accessible.
    layout_ok_at: Option<u64>,
}

/// Wraps an fd received from the frontend as an EventFd.
pub fn eventfd_from(file: File) -> EventFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: we own `file`'s fd and hand ownership to the EventFd.
    unsafe { EventFd::from_raw_fd(file.into_raw_fd()) }
}

impl Vring {
    pub fn new(max_size: u16) -> Result<Vring, VringError> {
        let queue =
            Queue::new(max_size).map_err(|_| VringError::BadSize(max_size as u32, max_size))?;
        Ok(Vring {
            queue,
            max_size,
            kick: None,
            call: None,
            err: None,
            started: false,
            enabled: false,
            broken: false,
            parked: None,
            layout_ok_at: None,
        })
    }

    /// Back to the initial state (RESET_DEVICE, frontend gone). Drops the eventfds.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.kick = None;
        self.call = None;
        self.err = None;
        self.started = false;
        self.enabled = false;
        self.broken = false;
        self.parked = None;
    }

    pub fn set_num(&mut self, num: u32) -> Result<(), VringError> {
        let size = u16::try_from(num).map_err(|_| VringError::BadSize(num, self.max_size))?;
        self.queue
            .try_set_size(size)
            .map_err(|_| VringError::BadSize(num, self.max_size))
    }

    pub fn set_addresses(&mut self, desc: u64, avail: u64, used: u64) -> Result<(), VringError> {
        let err = |e: virtio_queue::Error| VringError::BadAddress(e.to_string());
        self.queue
            .try_set_desc_table_address(GuestAddress(desc))
            .map_err(err)?;
        self.queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .map_err(err)?;
        self.queue
            .try_set_used_ring_address(GuestAddress(used))
            .map_err(err)
    }

    pub fn set_base(&mut self, base: u16) {
        self.queue.set_next_avail(base);
        self.queue.set_next_used(base);
    }

    pub fn set_event_idx(&mut self, on: bool) {
        self.queue.set_event_idx(on);
    }

    pub fn set_kick(&mut self, kick: Option<EventFd>) {
        self.kick = kick;
    }

    pub fn kick_fd(&self) -> Option<&EventFd> {
        self.kick.as_ref()
    }

    pub fn set_call(&mut self, call: Option<EventFd>) {
        self.call = call;
    }

    pub fn set_err(&mut self, err: Option<EventFd>) {
        self.err = err;
    }

    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Started, enabled and not broken: the device may use it.
    pub fn is_ready(&self) -> bool {
        self.started && self.enabled && !self.broken
    }

    /// Starts the ring. Untranslated, its whole layout must lie in guest memory now; translated,
    /// the IOTLB is filled on demand, so the layout is checked before every use instead.
    pub fn start(&mut self, mem: &DeviceMemory) -> Result<(), VringError> {
        self.queue.set_ready(true);
        let ok = if mem.get_iommu_enabled() {
            self.layout_fits_address_space()
        } else {
            self.queue.is_valid(mem)
        };
        if !ok {
            self.queue.set_ready(false);
            return Err(VringError::NotInMemory);
        }
        self.started = true;
        self.broken = false;
        self.parked = None;
        Ok(())
    }

    /// (descriptor table, avail ring, used ring) byte sizes for the current queue size.
    fn layout(&self) -> [(u64, usize, Permissions); 3] {
        let n = self.queue.size() as usize;
        [
            (self.queue.desc_table(), 16 * n, Permissions::Read),
            (self.queue.avail_ring(), 6 + 2 * n, Permissions::Read),
            (self.queue.used_ring(), 6 + 8 * n, Permissions::Write),
        ]
    }

    fn layout_fits_address_space(&self) -> bool {
        self.layout()
            .iter()
            .all(|&(addr, len, _)| addr.checked_add(len as u64).is_some())
    }

    /// Translated mode: every ring part must be mapped with its access before a chain is taken,
    /// so that nothing can fail half-way (after a packet was acted on).
    fn layout_accessible(&self, mem: &DeviceMemory) -> bool {
        self.layout()
            .iter()
            .all(|&(addr, len, access)| mem.check_range(GuestAddress(addr), len, access))
    }

    pub fn parked(&self) -> Option<&Parked> {
        self.parked.as_ref()
    }

    /// A MISS for the parked failure went out.
    pub fn miss_sent(&mut self) {
        if let Some(p) = &mut self.parked {
            p.miss_sent = true;
        }
    }

    /// The frontend answered this queue's MISS for `iova` (`status` 0 = handled). An answer to
    /// an earlier MISS, already resolved by an UPDATE, is not an answer to the current one.
    pub fn miss_answered(&mut self, iova: u64, status: u64) {
        if let Some(p) = self
            .parked
            .as_mut()
            .filter(|p| p.miss_sent && p.fail.iova == iova)
        {
            if status != 0 {
                let why = format!(
                    "the frontend refused to map IOVA {:#x} (MISS answered {status})",
                    p.fail.iova
                );
                self.parked = None;
                self.mark_broken(&why);
                return;
            }
            p.answered = true;
            p.retry = true;
        }
    }

    /// The IOTLB gained mappings: a parked queue tries again.
    pub fn iotlb_updated(&mut self) {
        if let Some(p) = &mut self.parked {
            p.retry = true;
        }
    }

    /// Stops a queue whose MISS is older than `timeout`.
    pub fn check_miss_timeout(&mut self, now: Instant, timeout: std::time::Duration) {
        if let Some(p) = self.parked {
            if now.duration_since(p.since) >= timeout {
                self.parked = None;
                self.mark_broken(&format!(
                    "no IOTLB mapping for IOVA {:#x} within {timeout:?}",
                    p.fail.iova
                ));
            }
        }
    }

    /// A translation failed while taking a chain: park (and have a MISS sent), wait for the
    /// answer, or give up when the answered address still fails.
    fn translation_failed(&mut self, mem: &DeviceMemory) {
        let Some(fail) = mem.iommu().take_fail() else {
            self.mark_broken("guest memory access failed outside the IOTLB");
            return;
        };
        match &mut self.parked {
            Some(p) if p.fail.iova == fail.iova && p.fail.access == fail.access => {
                if p.answered {
                    let kind = if fail.miss {
                        "still unmapped"
                    } else {
                        "still lacks the needed permission"
                    };
                    let why = format!(
                        "IOVA {:#x} {kind} after the frontend answered the MISS",
                        fail.iova
                    );
                    self.parked = None;
                    self.mark_broken(&why);
                } else {
                    p.retry = false;
                }
            }
            _ => {
                self.parked = Some(Parked {
                    fail,
                    since: Instant::now(),
                    miss_sent: false,
                    answered: false,
                    retry: false,
                });
            }
        }
    }

    /// Stops the ring (GET_VRING_BASE) and returns the index of the next available entry.
    pub fn stop(&mut self) -> u16 {
        self.started = false;
        // A stopped ring abandons its pending MISS: a suspended device sends nothing.
        self.parked = None;
        self.queue.set_ready(false);
        self.kick = None;
        self.queue.next_avail()
    }

    /// Marks the ring broken and signals the frontend's error eventfd, if it gave one.
    pub fn mark_broken(&mut self, why: &str) {
        if !self.broken {
            log::error!("virtqueue stopped: {why}");
            self.broken = true;
            if let Some(err) = &self.err {
                let _ = err.write(1);
            }
        }
    }

    /// Takes the next available chain. `None` when the ring is empty, not ready, or parked on
    /// an IOTLB miss. Untranslated, a chain with descriptors outside guest memory or an avail
    /// index the guest corrupted breaks the ring; translated, such a failure parks it first.
    pub fn pop(&mut self, mem: &DeviceMemory) -> Option<ChainBuffers> {
        if !self.is_ready() {
            return None;
        }
        let translated = mem.get_iommu_enabled();
        if let Some(p) = &self.parked {
            if !p.retry {
                return None;
            }
        }
        if translated {
            // Re-checked only when the IOTLB changed since the last successful check: nothing
            // else can revoke access (the IOTLB changes only between passes, on this thread).
            let generation = mem.iommu().generation();
            if self.layout_ok_at != Some(generation) {
                if !self.layout_accessible(mem) {
                    self.translation_failed(mem);
                    return None;
                }
                self.layout_ok_at = Some(generation);
            }
        }
        let popped = match self.queue.iter(mem) {
            Ok(mut iter) => iter.next().map(|chain| ChainBuffers::collect(chain, mem)),
            Err(e) => {
                self.fail(mem, translated, &e.to_string(), false);
                return None;
            }
        };
        match popped {
            Some(Ok(chain)) => {
                self.parked = None;
                Some(chain)
            }
            Some(Err(e)) => {
                self.fail(mem, translated, &e.to_string(), true);
                None
            }
            None => {
                if translated && self.parked.is_some() {
                    // Retried and nothing was pending after all: the mapping question is moot.
                    self.parked = None;
                }
                None
            }
        }
    }

    fn fail(&mut self, mem: &DeviceMemory, translated: bool, why: &str, popped: bool) {
        if translated {
            if popped {
                // The chain was not consumed: offer it again once the mapping exists.
                self.queue.go_to_previous_position();
            }
            self.translation_failed(mem);
        } else {
            self.mark_broken(why);
        }
    }

    /// Undoes the last `pop` (the chain will be offered again).
    pub fn unpop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &DeviceMemory, head: u16, len: u32) {
        if let Err(e) = self.queue.add_used(mem, head, len) {
            // Translated, the used ring was checked accessible before the chain was taken, so
            // this is a real fault either way.
            self.mark_broken(&format!("cannot write the used ring: {e}"));
        }
    }

    /// Signals the call eventfd if the driver wants an interrupt (EVENT_IDX aware); returns
    /// whether it did.
    pub fn notify(&mut self, mem: &DeviceMemory) -> bool {
        match self.queue.needs_notification(mem) {
            Ok(true) => {
                if let Some(call) = &self.call {
                    let _ = call.write(1);
                    return true;
                }
                false
            }
            Ok(false) => false,
            Err(e) => {
                self.fail(
                    mem,
                    mem.get_iommu_enabled(),
                    &format!("cannot read the used event: {e}"),
                    false,
                );
                false
            }
        }
    }

    /// Re-enables driver notifications; true if more chains arrived meanwhile (EVENT_IDX race).
    pub fn enable_notification(&mut self, mem: &DeviceMemory) -> bool {
        if !self.is_ready() || self.parked.is_some_and(|p| !p.retry) {
            return false;
        }
        match self.queue.enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                self.fail(mem, mem.get_iommu_enabled(), &e.to_string(), false);
                false
            }
        }
    }

    pub fn disable_notification(&mut self, mem: &DeviceMemory) {
        if !self.is_ready() || self.parked.is_some_and(|p| !p.retry) {
            return;
        }
        if let Err(e) = self.queue.disable_notification(mem) {
            self.fail(mem, mem.get_iommu_enabled(), &e.to_string(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked_at(v: &mut Vring, iova: u64) {
        v.started = true;
        v.enabled = true;
        v.parked = Some(Parked {
            fail: TranslationFail {
                iova,
                access: Permissions::Read,
                miss: true,
            },
            since: Instant::now(),
            miss_sent: true,
            answered: false,
            retry: false,
        });
    }

    /// Regression (seen with QEMU and a real vIOMMU): an UPDATE resolves a miss before the
    /// frontend's reply to that MISS arrives; the queue then parks on another address. The late
    /// reply must not count as the answer to the new MISS (it used to, and the retry that followed
    /// stopped the queue with "still unmapped after the frontend answered").
    #[test]
    fn a_late_answer_to_an_older_miss_is_not_the_answer_to_the_current_one() {
        let mut v = Vring::new(256).unwrap();
        parked_at(&mut v, 0x2000);
        v.miss_answered(0x1000, 0);
        let p = v.parked().unwrap();
        assert!(!p.answered && !p.retry, "{p:?}");
        assert!(v.is_ready());
        v.miss_answered(0x2000, 0);
        let p = v.parked().unwrap();
        assert!(p.answered && p.retry, "{p:?}");
        // A refusal for the current miss stops the queue; one for an old miss does not.
        parked_at(&mut v, 0x3000);
        v.miss_answered(0x2000, 1);
        assert!(v.is_ready());
        v.miss_answered(0x3000, 1);
        assert!(!v.is_ready());
    }
}
