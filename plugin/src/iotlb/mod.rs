//! IOTLB translation: an explicit operator opt-in, independent of `VIRTIO_F_ACCESS_PLATFORM`.
//!
//! Bit 33 tells a *guest* to use the DMA API; to vhost it has meant "translate through an IOTLB".
//! The 2022 crosvm/Android breakage came from letting one imply the other. Here the operator
//! decides ([`policy`]), and every mismatch fails loudly:
//!
//! | SET_FEATURES   | `iotlb=off`                          | `iotlb=required`                      |
//! |----------------|--------------------------------------|---------------------------------------|
//! | bit 33 absent  | (A) untranslated                     | (C) refused: non-zero ack, no rings   |
//! | bit 33 present | (B) untranslated, bit only recorded  | (D) translated: IOVAs everywhere      |
//!
//! (`iotlb=auto` translates exactly when bit 33 is negotiated, as the spec reads; it trusts the
//! frontend.) Bit 33 arriving un-offered is refused like any other un-offered bit. In (A)/(B) an
//! IOTLB message means the frontend thinks we translate: non-zero reply, connection closed.
//!
//! Translated mode ([`table`], [`message`]; MISS requests go out through
//! `vhost_user::backend_channel`):
//! - deny-all start; the IOTLB is flushed on SET_FEATURES, RESET_DEVICE/RESET_OWNER, any memory
//!   table change, when every ring is stopped, and on disconnect. No persistence across reset is
//!   promised (the vhost-vdpa IOTLB_PERSIST lesson): entries kept across a stop could grant
//!   memory the guest IOMMU has since unmapped, because QEMU forwards no unmaps while stopped.
//! - UPDATEs are validated (size, overflow, permission, type, payload size, target inside the
//!   memory table) and capped in number; a refused one changes nothing.
//! - A translation hole parks the queue (the descriptor is not consumed) and sends one MISS with
//!   NEED_REPLY on the backend channel. An UPDATE or the reply retries; still missing after the
//!   reply, or no answer within the miss timeout, stops that queue with VRING_ERR.
//! - No deadlock: the worker never blocks on a MISS, so the main channel keeps answering the
//!   UPDATE that QEMU sends (and waits for) before it replies to the MISS.
//! - INVALIDATE quiescence holds by construction: guest pointers (iovecs, slices) live only within
//!   one call on the worker thread that also handles the INVALIDATE, so when it is acked nothing
//!   built from the old mapping is alive.

//!
//! Builds: translation needs vm-memory's `iommu` feature (cargo feature `iotlb`, on by default).
//! Without it ([`untranslated`]; AOSP's `libvm_memory_android` does not enable `iommu` yet), the
//! plugin still works untranslated and `--access-platform` still offers bit 33, but
//! `iotlb=required|auto` is refused when the configuration is read, and [`policy`] refuses to
//! translate: an operator who asks for translation gets an error, never a silently untranslated
//! device.

pub mod message;
pub mod policy;
#[cfg(feature = "iotlb")]
pub mod table;
#[cfg(not(feature = "iotlb"))]
pub(crate) mod untranslated;

use vm_memory::{GuestMemoryMmap, Permissions};

#[cfg(feature = "iotlb")]
pub use table::VhostIommu;
#[cfg(not(feature = "iotlb"))]
pub use untranslated::{DeviceMemory, VhostIommu};

/// Whether this build can translate through an IOTLB (vm-memory `iommu`).
pub const TRANSLATION_BUILT: bool = cfg!(feature = "iotlb");

/// Why `iotlb=required|auto` is refused by a build without translation.
pub const NOT_BUILT: &str = "this vsock-plugin build has no IOTLB translation (built without the \
     `iotlb` cargo feature, i.e. vm-memory without `iommu`, as in AOSP's libvm_memory_android); \
     use iotlb=off, with access-platform if the guest needs VIRTIO_F_ACCESS_PLATFORM";

/// The memory the device works on: guest RAM behind an IOMMU that is bypassed unless the
/// session translates.
#[cfg(feature = "iotlb")]
pub type DeviceMemory = vm_memory::IommuMemory<GuestMemoryMmap, VhostIommu>;

/// Empty device memory (no table yet), IOMMU bypassed, at most `max_entries` IOTLB entries.
pub fn new_device_memory(max_entries: usize) -> DeviceMemory {
    DeviceMemory::new(
        GuestMemoryMmap::default(),
        VhostIommu::new(max_entries),
        false,
        (),
    )
}

/// The first address an access could not translate, and the access it needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslationFail {
    pub iova: u64,
    pub access: Permissions,
    /// true: nothing mapped there; false: mapped without the needed permission.
    pub miss: bool,
}
