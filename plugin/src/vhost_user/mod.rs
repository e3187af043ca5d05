//! The vhost-user server: our own loop over `vhost`'s message types (released `vhost` rejects
//! IOTLB messages and `vhost-user-backend` has no IOMMU support, so the loop is ours).
//!
//! - [`listener`]: the socket a VMM connects to (a path, or an inherited fd).
//! - [`wire`]: message framing and fd passing.
//! - [`reader`]: non-blocking assembly of one frontend message at a time.
//! - [`slot`]: who holds the single frontend slot; per-message deadline; when a newer connection
//!   takes over.
//! - [`session`]: request handlers and the state of one frontend connection.
//! - [`session_error`]: its errors, typed by what the worker does next (go on, or drop the frontend).
//! - [`memory`]: the guest memory table and frontend-VA → guest-physical translation.
//! - [`features`]: what is offered and accepted.
//! - [`device_state`]: the pipe of a DEVICE_STATE transfer (snapshot/restore).
//! - [`fault_guard`]: SIGBUS containment for guest RAM whose fd can still shrink.
pub(crate) mod backend_channel;
pub(crate) mod device_state;
pub(crate) mod fault_guard;
pub(crate) mod features;
pub(crate) mod listener;
pub(crate) mod memory;
pub(crate) mod reader;
pub mod session;
pub mod session_error;
pub(crate) mod slot;
pub mod wire;
