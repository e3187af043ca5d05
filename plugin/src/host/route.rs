//! Where a guest → host connection goes when a control plane is attached.
//!
//! Without one, guest port P on the host maps to `<uds-path>_P` directly. With one, the device
//! asks through [`RouteRequests`] (answered asynchronously: a registered host service may take
//! seconds, and the virtqueues must not wait), then applies the [`HostRoute`] it gets back.

use std::os::unix::net::UnixStream;

use crate::vsock::status::ConnKey;

/// The answer for one guest connection.
#[derive(Debug)]
pub enum HostRoute {
    /// The hybrid mapping: connect to `<uds-path>_<port>`.
    Unix,
    /// A connected socket handed over by a registered host service.
    Stream(UnixStream),
    /// Refused (policy, or the service said no), with the reason.
    Deny(String),
}

/// Asks where a guest connection goes; the answer comes back through the VM's worker.
pub trait RouteRequests: Send {
    fn request(&self, key: ConnKey);
}

/// Observes connections opening and closing (the control plane's event stream).
pub trait ConnectionEvents: Send {
    fn opened(&self, key: ConnKey, host_initiated: bool, via_service: bool);
    fn closed(&self, key: ConnKey, reason: &str);
}

/// Per-port limits set by the control plane's policy, for guest connections to host `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortLimits {
    /// Most concurrent guest connections to the port (0 = no per-port limit).
    pub max_connections: u32,
    /// `buf_alloc` advertised for these connections (0 = the VM's tx-buffer-size).
    pub buf_alloc: u32,
}

/// Looks up the limits that apply to a guest connection to host `port`.
pub trait ConnectionLimits: Send {
    fn limits(&self, port: u32) -> PortLimits;
}
