//! What the plugin implements and calls: [`DeviceControl`] (read and steer the device),
//! [`PortResolver`] / [`Route`] (where a guest connection to a host port goes), [`ControlError`].
//!
//! Status, connection and metrics values are the protobuf messages of `control.proto`
//! (re-exported as [`crate::proto`]); build them with struct literals and `..Default::default()`.

use std::os::unix::net::UnixStream;

use crate::proto::control::{ConnectionInfo, Metrics, PolicyRule, Status};

/// Implemented by the plugin; the control services read and steer the device through it.
/// Called from binder threads: keep each call short and never block on the guest.
pub trait DeviceControl: Send + Sync {
    /// VMs, negotiated features, IOTLB mode, uptime.
    fn status(&self) -> Status;
    /// Live connections of every VM.
    fn connections(&self) -> Vec<ConnectionInfo>;
    /// Counter snapshot.
    fn metrics(&self) -> Metrics;
    /// The complete policy table after a change (allow/deny is enforced by the resolver already;
    /// the device enforces `limits` if [`enforces_policy_limits`](Self::enforces_policy_limits)).
    fn apply_policy(&self, rules: &[PolicyRule]) -> Result<(), ControlError>;
    /// Reset (RST) one connection. `Err(NotFound)` if there is none.
    fn reset_connection(
        &self,
        cid: u64,
        guest_port: u32,
        host_port: u32,
    ) -> Result<(), ControlError>;
    /// Whether [`apply_policy`](Self::apply_policy) enforces `PolicyRule::limits`; only then is
    /// `FEATURE_POLICY_LIMITS` advertised and accepted.
    fn enforces_policy_limits(&self) -> bool {
        false
    }
}

/// Asked by the plugin's device when guest `cid` connects from `guest_port` to host port
/// `host_port` (CID 2).
/// May block for up to the callback timeout while a registered service answers: call it off
/// the virtqueue hot path (or accept that latency for the connect).
pub trait PortResolver: Send + Sync {
    /// Where guest `cid`'s connection from `guest_port` to host port `host_port` goes.
    fn route(&self, cid: u64, guest_port: u32, host_port: u32) -> Route;
}

/// Where a guest connection goes.
#[derive(Debug)]
pub enum Route {
    /// The default hybrid mapping: connect to `<uds-path>_<port>`.
    Unix,
    /// A connected stream socket handed over by a registered host service.
    Fd(UnixStream),
    /// Refuse (reset) the connection, with the reason to log.
    Deny(String),
}

impl Route {
    /// The protobuf [`RouteKind`](crate::proto::control::RouteKind) of this route.
    pub fn kind(&self) -> crate::proto::control::RouteKind {
        use crate::proto::control::RouteKind;
        match self {
            Route::Unix => RouteKind::ROUTE_KIND_UNIX,
            Route::Fd(_) => RouteKind::ROUTE_KIND_BINDER_SERVICE,
            Route::Deny(_) => RouteKind::ROUTE_KIND_DENIED,
        }
    }
}

/// Errors of [`DeviceControl`] operations, mapped to `ErrorCode` service-specific errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No such connection / VM (`ErrorCode::NOT_FOUND`).
    NotFound(String),
    /// A value the device cannot accept (`ErrorCode::INVALID_ARGUMENT`).
    InvalidArgument(String),
    /// The device refused (`ErrorCode::REFUSED`).
    Refused(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotFound(m) => write!(f, "not found: {m}"),
            ControlError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ControlError::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

impl std::error::Error for ControlError {}
