//! VM-to-VM ("sibling") vsock inside one plugin process.
//!
//! Guests that share a group reach each other by CID. The device keeps no connection state for
//! sibling traffic: packets are relayed whole from one guest's tx queue to the other's rx queue
//! and the two guest stacks run the protocol (and its credit flow control) end to end.
//!
//! Each VM has a bounded inbox. When it is full the packet goes back to the sender's device,
//! which parks it (per destination, bounded) and goes on with its other traffic; the sender is
//! woken when the receiver drains its inbox (see `vsock::device::sibling_out`).
//! A packet for a CID outside every shared group, or for a VM whose device is not running, gets
//! an RST from the sender's own device.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

/// Packets an inbox holds before senders are paused.
pub const INBOX_CAPACITY: usize = 256;

/// One VM's end of the router.
pub struct SiblingPort {
    pub cid: u64,
    groups: Vec<String>,
    inbox: Mutex<VecDeque<Vec<u8>>>,
    /// Wakes this VM's worker (inbox filled, or room appeared in a peer's inbox).
    wake: Arc<EventFd>,
    /// Workers waiting for room in this inbox.
    waiters: Mutex<Vec<Arc<EventFd>>>,
    running: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another worker panicked mid-update of a plain queue; the data
    // is still a valid queue, so keep going rather than spreading the failure.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub enum Delivery {
    Delivered,
    /// The receiver's inbox is full: the packet is handed back; the sender is woken when room
    /// appears.
    Full(Vec<u8>),
    /// No such VM in a shared group, or its device is not running.
    Unreachable,
}

impl SiblingPort {
    pub fn set_running(&self, on: bool) {
        self.running.store(on, Ordering::Release);
        if !on {
            lock(&self.inbox).clear();
            self.wake_waiters();
        }
    }

    /// Takes the oldest packet for this VM.
    pub fn pop(&self) -> Option<Vec<u8>> {
        let p = lock(&self.inbox).pop_front();
        if p.is_some() {
            self.wake_waiters();
        }
        p
    }

    /// Puts a packet back at the front (the rx buffer was too small to take it now).
    pub fn unpop(&self, packet: Vec<u8>) {
        lock(&self.inbox).push_front(packet);
    }

    pub fn has_packets(&self) -> bool {
        !lock(&self.inbox).is_empty()
    }

    fn wake_waiters(&self) {
        for w in lock(&self.waiters).drain(..) {
            let _ = w.write(1);
        }
    }
}

/// All VMs of this process, by CID.
#[derive(Default)]
pub struct SiblingRouter {
    vms: Mutex<HashMap<u64, Arc<SiblingPort>>>,
}

impl SiblingRouter {
    pub fn register(&self, cid: u64, groups: Vec<String>, wake: Arc<EventFd>) -> Arc<SiblingPort> {
        let port = Arc::new(SiblingPort {
            cid,
            groups,
            inbox: Mutex::new(VecDeque::new()),
            wake,
            waiters: Mutex::new(Vec::new()),
            running: AtomicBool::new(false),
        });
        lock(&self.vms).insert(cid, port.clone());
        port
    }

    /// Sends `packet` from `from` to the VM with `dst_cid`.
    pub fn deliver(&self, from: &SiblingPort, dst_cid: u64, packet: Vec<u8>) -> Delivery {
        let Some(dst) = lock(&self.vms).get(&dst_cid).cloned() else {
            return Delivery::Unreachable;
        };
        let shares_group = dst.groups.iter().any(|g| from.groups.contains(g));
        if dst.cid == from.cid || !shares_group || !dst.running.load(Ordering::Acquire) {
            return Delivery::Unreachable;
        }
        let mut inbox = lock(&dst.inbox);
        if inbox.len() >= INBOX_CAPACITY {
            // Once per sender: a sender retries its parked packets on every pass.
            let mut waiters = lock(&dst.waiters);
            if !waiters.iter().any(|w| Arc::ptr_eq(w, &from.wake)) {
                waiters.push(from.wake.clone());
            }
            return Delivery::Full(packet);
        }
        inbox.push_back(packet);
        drop(inbox);
        let _ = dst.wake.write(1);
        Delivery::Delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender retrying a full inbox is registered once, however often it retries.
    #[test]
    fn full_inbox_registers_each_sender_once() {
        let router = SiblingRouter::default();
        let wake = || Arc::new(EventFd::new(0).unwrap());
        let a = router.register(3, vec!["g".into()], wake());
        let b = router.register(4, vec!["g".into()], wake());
        b.set_running(true);
        for _ in 0..INBOX_CAPACITY {
            assert!(matches!(
                router.deliver(&a, 4, vec![0; 44]),
                Delivery::Delivered
            ));
        }
        for _ in 0..1000 {
            assert!(matches!(
                router.deliver(&a, 4, vec![1; 44]),
                Delivery::Full(p) if p == vec![1; 44]
            ));
        }
        assert_eq!(lock(&b.waiters).len(), 1);
        assert!(b.pop().is_some());
        assert_eq!(lock(&b.waiters).len(), 0);
        assert_eq!(a.wake.read().unwrap(), 1);
    }
}
