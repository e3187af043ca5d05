//! Test support for vsock-plugin.
//!
//! [`frontend`] plays both the VMM (a vhost-user frontend) and the guest's virtio-vsock driver in
//! userspace, so integration tests in `tests/tests/` can drive the `vsock-plugin` binary byte for
//! byte.
pub mod bench;
pub mod frontend;
pub mod real_guest;
