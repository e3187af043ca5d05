//! Host backends: where guest connections go.
//!
//! - [`unix`] and [`connect_line`]: hybrid vsock over Unix sockets (Firecracker / Cuttlefish /
//!   vhost-device-vsock compatible): `<uds-path>_<port>` for guest → host, `connect <port>\n` on
//!   `<uds-path>` for host → guest.
//! - [`sibling`]: guest ↔ guest within one process, by group.
pub mod connect_line;
pub(crate) mod route;
pub mod sibling;
pub(crate) mod unix;
