//! Snapshot and restore through VHOST_USER_PROTOCOL_F_DEVICE_STATE (issue 14): the glue between
//! the session's state transfer (`crate::vhost_user::device_state`), the device
//! (`crate::vsock::device::snapshot`) and the worker's epoll set.
//!
//! - [`format`]: the saved bytes (protobuf `DeviceStateSnapshot` + seal) and the load checks.
//!
//! crosvm's order, which the worker follows without ever blocking on the pipe:
//! sleep (`SET_VRING_ENABLE 0` + `GET_VRING_BASE` per queue: rings stop, connections and their
//! buffered bytes stay) → `SET_DEVICE_STATE_FD(Save)` (the state is encoded at once from the
//! device, written as the pipe drains, our end closed at the last byte) → `CHECK_DEVICE_STATE` →
//! wake (memory table and rings again: the same connections go on). A restore into a fresh
//! process: `SET_FEATURES(saved)` → `SET_DEVICE_STATE_FD(Load)` → `CHECK_DEVICE_STATE` (decoded,
//! checked, then applied: TRANSPORT_RESET owed, generation + 1) → activation.

pub mod format;

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::control::VmControl;
use crate::vhost_user::device_state::Direction;
use crate::vhost_user::session::FrontendSession;
use crate::vsock::device::VsockDevice;
use format::SavedState;

/// Test-only: extra ignored bytes in saved states (see `padding` in device_state.proto), so the
/// tests can move states larger than a pipe buffer. Unset in production.
pub const PADDING_ENV: &str = "VSOCK_PLUGIN_TEST_STATE_PADDING";

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

fn padding() -> usize {
    std::env::var(PADDING_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |n| n.min(format::MAX_STATE_BYTES / 2))
}
