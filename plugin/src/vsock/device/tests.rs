//! Unit tests of the device without a frontend process: host sockets are real Unix sockets in a
//! temporary directory, events are taken from the device's own epoll set.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interests::Source;
use super::{DeviceConfig, VsockDevice};
use crate::config::OkReply;
use crate::host::sibling::SiblingRouter;
use crate::vsock::status::ConnKey;

/// A scratch directory removed when dropped.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vsock-dev-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn config(dir: &TempDir) -> DeviceConfig {
    DeviceConfig {
        guest_cid: 3,
        uds_path: dir.0.join("v"),
        buf_alloc: 64 * 1024,
        max_connections: 16,
        connect_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(2),
        connect_line_timeout: Duration::from_secs(5),
        ok_reply: OkReply::GuestPort,
    }
}

/// A device for guest CID 3 with its hybrid listener at `<dir>/v`.
pub(super) fn device(dir: &TempDir) -> VsockDevice {
    let cfg = config(dir);
    let hybrid = UnixListener::bind(&cfg.uds_path).unwrap();
    hybrid.set_nonblocking(true).unwrap();
    let router = Arc::new(SiblingRouter::default());
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let sibling = router.register(cfg.guest_cid, Vec::new(), wake);
    let mut dev = VsockDevice::new(cfg, hybrid, router, sibling).unwrap();
    dev.set_running(true);
    dev
}

/// Handles host events until `done` holds (bounded).
pub(super) fn poll_until(dev: &mut VsockDevice, mut done: impl FnMut(&VsockDevice) -> bool) {
    for _ in 0..200 {
        dev.process_host_events(true);
        if done(dev) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the device did not get there");
}

/// A host client that asked for `guest_port` and is now a (connecting) connection.
pub(super) fn host_client(dev: &mut VsockDevice, dir: &TempDir, guest_port: u32) -> UnixStream {
    let mut c = UnixStream::connect(dir.0.join("v")).unwrap();
    c.write_all(format!("connect {guest_port}\n").as_bytes())
        .unwrap();
    poll_until(dev, |d| d.conns.iter().any(|c| c.key.guest_port == guest_port));
    c
}

fn key_of(dev: &VsockDevice, guest_port: u32) -> ConnKey {
    dev.conns
        .iter()
        .find(|c| c.key.guest_port == guest_port)
        .unwrap()
        .key
}

/// Regression: an event taken from the kernel for a connection that was closed, handled after
/// its slot went to a new connection (same batch), must not touch the new connection. Before
/// tokens carried a generation, the hang-up of the old host socket marked the new one hung up
/// (its guest would have been told SHUTDOWN for a host peer that is still there).
#[test]
fn a_stale_event_does_not_reach_the_connection_that_reuses_its_slot() {
    let dir = TempDir::new("stale");
    let mut dev = device(&dir);
    let _first = host_client(&mut dev, &dir, 5000);
    let old_key = key_of(&dev, 5000);
    let slot = dev.conns.slot_of(&old_key).unwrap();
    let stale = Source::Conn {
        slot,
        generation: dev.conns.generation(slot),
    };
    assert!(dev.reset_connection(old_key));
    let _second = host_client(&mut dev, &dir, 5001);
    let new_key = key_of(&dev, 5001);
    assert_eq!(dev.conns.slot_of(&new_key), Some(slot), "the slot is reused");

    // The old socket's hang-up, delivered late in the same batch.
    dev.dispatch(stale, EventSet::IN | EventSet::HANG_UP, true);
    let conn = dev.conns.get(slot).unwrap();
    assert_eq!(conn.key, new_key);
    assert!(!conn.host_hup, "the new connection was marked hung up");
    assert!(!conn.host_readable, "the new connection was marked readable");

    // An event with the slot's current generation does reach it.
    let current = Source::Conn {
        slot,
        generation: dev.conns.generation(slot),
    };
    dev.dispatch(current, EventSet::IN | EventSet::HANG_UP, true);
    assert!(dev.conns.get(slot).unwrap().host_hup);
}

/// The same for waiting host clients: an event for a client that was dropped does not reach
/// the client that took its index.
#[test]
fn a_stale_event_does_not_reach_the_client_that_reuses_its_index() {
    let dir = TempDir::new("stale-client");
    let mut dev = device(&dir);
    let first = UnixStream::connect(dir.0.join("v")).unwrap();
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 1);
    let old_generation = dev.clients[0].as_ref().unwrap().generation;
    drop(first);
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 0);
    let mut second = UnixStream::connect(dir.0.join("v")).unwrap();
    poll_until(&mut dev, |d| d.clients.iter().flatten().count() == 1);
    assert!(dev.clients[0].is_some(), "index 0 is reused");
    // The old client's event must not make the device read the new one.
    second.write_all(b"connect 5000\n").unwrap();
    let stale = Source::Client {
        id: 0,
        generation: old_generation,
    };
    dev.dispatch(stale, EventSet::IN, true);
    assert!(dev.clients[0].is_some() && dev.conns.is_empty());
    // Its own event does.
    let current = Source::Client {
        id: 0,
        generation: dev.clients[0].as_ref().unwrap().generation,
    };
    dev.dispatch(current, EventSet::IN, true);
    assert_eq!(dev.conns.len(), 1);
}
