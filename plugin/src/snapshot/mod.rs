//! Snapshot and restore through VHOST_USER_PROTOCOL_F_DEVICE_STATE (issue 14): what a saved
//! state is. The transfer over the frontend's pipe is `vhost_user::device_state`, the device's
//! part `vsock::device::snapshot`, and the worker moves it along (`worker::device_state`).
//!
//! - [`format`]: the saved bytes (protobuf `DeviceStateSnapshot` + seal) and the load checks.

pub mod format;

/// Test-only: extra ignored bytes in saved states (see `padding` in device_state.proto), so the
/// tests can move states larger than a pipe buffer. Unset in production.
pub const PADDING_ENV: &str = "VSOCK_PLUGIN_TEST_STATE_PADDING";

/// The padding a save adds ([`PADDING_ENV`], at most half the largest state).
pub(crate) fn padding() -> usize {
    std::env::var(PADDING_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |n| n.min(format::MAX_STATE_BYTES / 2))
}
