//! vsock-plugin: a vhost-user virtio-vsock device.
pub mod config;
