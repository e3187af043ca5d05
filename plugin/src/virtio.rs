//! Virtio constants of a vsock device (virtio spec 5.10): feature bits, queue indices and event
//! ids. A leaf module: the vhost-user session, the IOTLB policy, the device and the worker all
//! name these without depending on one another.

pub const VIRTIO_VSOCK_F_SEQPACKET: u64 = 1 << 1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Queues of a vsock device: rx (device → guest), tx (guest → device), event.
pub const NUM_QUEUES: usize = 3;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// Event id of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (the only event a vsock device posts).
pub const EVENT_TRANSPORT_RESET: u32 = 0;
