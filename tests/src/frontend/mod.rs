//! A userspace VMM + guest driver for driving the plugin binary byte for byte.
//!
//! - [`crosvm_snapshot`]: crosvm's sleep/snapshot/wake/restore sequences (DEVICE_STATE).
//! - [`guest_memory`]: guest RAM as memfds, GPA read/write, a bump allocator.
//! - [`vhost_user_client`]: the vhost-user frontend (messages, fds, QEMU/crosvm handshakes).
//! - [`split_queue`]: the driver side of a split virtqueue.
//! - [`vsock_packet`]: the 44-byte virtio-vsock header and constants.
//! - [`vsock_driver`]: a guest vsock driver (raw packets and a stream API with credit).
//! - [`iotlb`]: IOTLB messages and a translated (ACCESS_PLATFORM + IOVA) session.
//! - [`host_side`]: host services and hybrid-vsock clients, all with timeouts.
//! - [`plugin_process`]: runs the `vsock-plugin` binary in a temporary directory.
//! - [`vm`]: ties them together: one VM = frontend connection + guest memory + driver.

pub mod crosvm_snapshot;
pub mod guest_memory;
pub mod host_side;
pub mod iotlb;
pub mod plugin_process;
pub mod split_queue;
pub mod vhost_user_client;
pub mod vm;
pub mod vsock_driver;
pub mod vsock_packet;

pub use guest_memory::GuestMemory;
pub use plugin_process::{PluginProcess, TempDir, VmPaths};
pub use split_queue::{Buf, KickPolicy, SplitQueue, Used};
pub use vhost_user_client::{VhostUserClient, VringSetup};
pub use vm::{Vm, VmOptions, Vmm};
pub use vsock_driver::{ConnId, ConnState, DriverConfig, TxLayout, VsockDriver};
pub use vsock_packet::*;
