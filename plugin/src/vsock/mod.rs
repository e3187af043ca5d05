//! The virtio-vsock device proper.
//!
//! - [`packet`]: the 44-byte header and its constants.
//! - [`connection`]: one connection: host socket, buffers, readiness flags and credit, behind
//!   methods (with the protocol primer).
//! - [`csm`]: the connection state machine: phase and which directions are open.
//! - [`credit`]: credit flow control rules.
//! - [`conn_table`]: the connections of a VM.
//! - [`status`]: keys, phases, snapshots and counters others read (a leaf module).
//! - [`device`]: moving packets between virtqueues, host sockets and sibling VMs.
pub(crate) mod conn_table;
pub(crate) mod connection;
pub(crate) mod credit;
pub(crate) mod csm;
pub mod device;
pub(crate) mod packet;
pub(crate) mod status;
