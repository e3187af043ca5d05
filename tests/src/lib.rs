//! Test support for vsock-plugin.
//!
//! [`frontend`] plays both the VMM (a vhost-user frontend) and the guest's virtio-vsock driver in
//! userspace, so integration tests in `tests/tests/` can drive the `vsock-plugin` binary byte for
//! byte.
//!
//! This crate is test equipment: its VMM, guest driver, benchmark and real-guest harness run only
//! inside tests and developer tools, against a plugin under test. There a panic (an `unwrap` or
//! `expect` on a harness invariant) *is* the test failure, with its message as the report; the
//! plugin's own code (`plugin/`, `ipc/`, `proto/`) returns errors instead.
pub mod bench;
pub mod frontend;
pub mod real_guest;
pub mod sandbox;
