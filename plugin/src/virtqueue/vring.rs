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

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{ChainBuffers, ChainError};

#[derive(Debug, thiserror::Error)]
pub enum VringError {
    #[error("queue size {0} is not a power of two in 1..={1}")]
    BadSize(u32, u16),
    #[error("ring address not aligned or not in guest memory: {0}")]
    BadAddress(String),
    #[error("ring layout is not inside guest memory")]
    NotInMemory,
    #[error("ring is broken: {0}")]
    Broken(String),
}

/// A popped chain, or the reason the ring broke while popping.
pub type Popped = Result<ChainBuffers, ChainError>;

pub struct Vring {
    queue: Queue,
    max_size: u16,
    kick: Option<EventFd>,
    call: Option<EventFd>,
    err: Option<EventFd>,
    started: bool,
    enabled: bool,
    broken: bool,
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

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Started, enabled and not broken: the device may use it.
    pub fn is_ready(&self) -> bool {
        self.started && self.enabled && !self.broken
    }

    /// Starts the ring after checking that its whole layout lies in guest memory.
    pub fn start<M: GuestMemory>(&mut self, mem: &M) -> Result<(), VringError> {
        self.queue.set_ready(true);
        if !self.queue.is_valid(mem) {
            self.queue.set_ready(false);
            return Err(VringError::NotInMemory);
        }
        self.started = true;
        self.broken = false;
        Ok(())
    }

    /// Stops the ring (GET_VRING_BASE) and returns the index of the next available entry.
    pub fn stop(&mut self) -> u16 {
        self.started = false;
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

    /// Takes the next available chain. `None` when the ring is empty (or not ready). A chain
    /// with descriptors outside guest memory, or an avail index the guest corrupted, breaks the
    /// ring.
    pub fn pop<M: GuestMemory>(&mut self, mem: &M) -> Option<ChainBuffers> {
        if !self.is_ready() {
            return None;
        }
        let popped = match self.queue.iter(mem) {
            Ok(mut iter) => iter.next().map(|chain| ChainBuffers::collect(chain, mem)),
            Err(e) => {
                self.mark_broken(&e.to_string());
                return None;
            }
        };
        match popped {
            Some(Ok(chain)) => Some(chain),
            Some(Err(e)) => {
                self.mark_broken(&e.to_string());
                None
            }
            None => None,
        }
    }

    /// Undoes the last `pop` (the chain will be offered again).
    pub fn unpop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used<M: GuestMemory>(&mut self, mem: &M, head: u16, len: u32) {
        if let Err(e) = self.queue.add_used(mem, head, len) {
            self.mark_broken(&format!("cannot write the used ring: {e}"));
        }
    }

    /// Signals the call eventfd if the driver wants an interrupt (EVENT_IDX aware).
    pub fn notify<M: GuestMemory>(&mut self, mem: &M) {
        match self.queue.needs_notification(mem) {
            Ok(true) => {
                if let Some(call) = &self.call {
                    let _ = call.write(1);
                }
            }
            Ok(false) => {}
            Err(e) => self.mark_broken(&format!("cannot read the used event: {e}")),
        }
    }

    /// Re-enables driver notifications; true if more chains arrived meanwhile (EVENT_IDX race).
    pub fn enable_notification<M: GuestMemory>(&mut self, mem: &M) -> bool {
        match self.queue.enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                self.mark_broken(&e.to_string());
                false
            }
        }
    }

    pub fn disable_notification<M: GuestMemory>(&mut self, mem: &M) {
        if let Err(e) = self.queue.disable_notification(mem) {
            self.mark_broken(&e.to_string());
        }
    }
}
