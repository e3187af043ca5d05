//! Feature bits this device offers and accepts.
//!
//! Virtio (GET_FEATURES): VERSION_1, EVENT_IDX, the vhost-user PROTOCOL_FEATURES bit, and
//! SEQPACKET when configured. `VIRTIO_F_ACCESS_PLATFORM` (bit 33) is added only by the IOTLB
//! policy (`crate::iotlb::policy`): what it means to a guest ("use the DMA API") and to vhost
//! ("translate through an IOTLB") are separate decisions. A SET_FEATURES with any bit we did not offer is
//! refused whole: QEMU forwards bit 33 un-offered when a vIOMMU is present, and silently dropping
//! it would run the rings untranslated.
//!
//! Protocol (GET_PROTOCOL_FEATURES): MQ, REPLY_ACK, CONFIG (mandatory for QEMU), RESET_DEVICE,
//! CONFIGURE_MEM_SLOTS, DEVICE_STATE (snapshot/restore: `super::device_state`); BACKEND_REQ
//! only when the IOTLB policy may translate (MISS messages).

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;

pub use crate::virtio::{
    NUM_QUEUES, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_VSOCK_F_SEQPACKET,
};

/// The vhost-user bit in the virtio feature word (vhost-user spec, not virtio).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Virtio features offered to the frontend.
pub fn virtio_offer(seqpacket: bool) -> u64 {
    let base = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES;
    if seqpacket {
        base | VIRTIO_VSOCK_F_SEQPACKET
    } else {
        base
    }
}

/// Protocol features offered to the frontend.
pub fn protocol_offer() -> u64 {
    (P::MQ | P::REPLY_ACK | P::CONFIG | P::RESET_DEVICE | P::CONFIGURE_MEM_SLOTS | P::DEVICE_STATE)
        .bits()
}

pub const PROTOCOL_REPLY_ACK: u64 = P::REPLY_ACK.bits();
pub const PROTOCOL_BACKEND_REQ: u64 = P::BACKEND_REQ.bits();
pub const PROTOCOL_DEVICE_STATE: u64 = P::DEVICE_STATE.bits();

/// Names of the bits in `bits`, for error messages ("bit 33 (ACCESS_PLATFORM)").
pub fn describe(bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| match b {
            33 => "33 (ACCESS_PLATFORM)".to_string(),
            34 => "34 (RING_PACKED)".to_string(),
            28 => "28 (INDIRECT_DESC)".to_string(),
            _ => b.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
