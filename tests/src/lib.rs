//! Test support for vsock-plugin.
