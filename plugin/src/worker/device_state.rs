//! The worker's side of snapshot and restore (VHOST_USER_PROTOCOL_F_DEVICE_STATE, issue 14): the
//! glue between the session's state transfer (`crate::vhost_user::device_state`), the device
//! (`crate::vsock::device::snapshot`) and the worker's epoll set.
//!
//! The saved bytes and their load checks are `crate::snapshot::format`.
//!
//! crosvm's order, which the worker follows without ever blocking on the pipe:
//! sleep (`SET_VRING_ENABLE 0` + `GET_VRING_BASE` per queue: rings stop, connections and their
//! buffered bytes stay) → `SET_DEVICE_STATE_FD(Save)` (the state is encoded at once from the
//! device, written as the pipe drains, our end closed at the last byte) → `CHECK_DEVICE_STATE` →
//! wake (memory table and rings again: the same connections go on). A restore into a fresh
//! process: `SET_FEATURES(saved)` → `SET_DEVICE_STATE_FD(Load)` → `CHECK_DEVICE_STATE` (decoded,
//! checked, then applied: TRANSPORT_RESET owed, generation + 1) → activation.

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::control::VmControl;
use crate::snapshot::format::{self, SavedState};
use crate::snapshot::padding;
use crate::vhost_user::device_state::Direction;
use crate::vhost_user::session::FrontendSession;
use crate::vsock::device::VsockDevice;

/// After a message, a pipe event or a tick: provides a pending save's state, applies a checked
/// load, and keeps the epoll set in step with the transfer's pipe (registered under the worker's
/// `pipe_token`).
pub fn sync(
    name: &str,
    session: &mut FrontendSession,
    device: &mut VsockDevice,
    epoll: &Epoll,
    pipe_token: u64,
    control: Option<&VmControl>,
) {
    if session.device_state().save_wanted() {
        let state = SavedState {
            guest_cid: session.guest_cid(),
            virtio_features: session.acked_features(),
            protocol_features: session.acked_protocol_features(),
            device: device.export_state(),
        };
        let bytes = format::encode(&state, padding());
        log::info!(
            "[{name}] saving device state: {} bytes, {} connection(s), generation {}",
            bytes.len(),
            state.device.connections.len(),
            state.device.generation
        );
        session.device_state().provide(bytes);
    }
    if let Some(state) = session.take_loaded_state() {
        device.restore_state(&state.device);
        log::info!("[{name}] restored, generation {}", device.generation());
        if let Some(c) = control {
            c.restored(device.generation());
        }
    }
    for pipe in session.device_state().take_retired() {
        let _ = epoll.ctl(
            ControlOperation::Delete,
            pipe.as_raw_fd(),
            EpollEvent::default(),
        );
    }
    if let Some((fd, direction)) = session.device_state().take_to_watch() {
        let events = match direction {
            Direction::Save => EventSet::OUT,
            Direction::Load => EventSet::IN,
        };
        let ev = EpollEvent::new(events, pipe_token);
        if let Err(e) = epoll.ctl(ControlOperation::Add, fd, ev) {
            log::error!("[{name}] cannot watch the device-state pipe: {e}");
            session
                .device_state()
                .fail(format!("cannot watch the pipe: {e}"));
        }
    }
}

/// The session is going away: its pipe leaves the epoll set (the frontend may still hold the
/// same pipe end, which would keep a closed fd's registration alive).
pub fn forget(session: &mut FrontendSession, epoll: &Epoll) {
    let retired = session.device_state().take_retired();
    let fds = session.device_state().pipe_fd().into_iter();
    for fd in fds.chain(retired.iter().map(|p| p.as_raw_fd())) {
        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}
