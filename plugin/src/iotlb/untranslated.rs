//! Builds without IOTLB translation (no `iotlb` feature: vm-memory without `iommu`, as AOSP ships
//! it today). The session and rings keep the one memory API they use in every build
//! (`IommuMemory`'s `new`, `with_replaced_backend`, `set_iommu_enabled`, `get_iommu_enabled`,
//! `iommu()`), but there
//! is no IOTLB behind it: [`VhostIommu`] never holds an entry.
//!
//! Translation is refused before it could matter: configuration refuses `iotlb=required|auto`
//! and `IotlbPolicy::translate` refuses to translate in this build, so a session never switches
//! it on. Should it ever be switched on anyway, this memory fails closed: every access is denied,
//! as through an IOTLB with no entries, never silently untranslated.

use std::sync::Arc;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::{GuestMemorySliceIterator, Result as MemResult};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

use super::TranslationFail;

/// An IOTLB that cannot hold entries (see the module doc).
#[derive(Debug, Default)]
pub struct VhostIommu;

impl VhostIommu {
    pub fn new(_max_entries: usize) -> VhostIommu {
        VhostIommu
    }

    /// Never changes: there are no mappings to change.
    pub fn generation(&self) -> u64 {
        0
    }

    /// Unreachable in practice (IOTLB_MSG is refused while untranslated); installs nothing.
    pub fn map(&self, _pieces: &[(u64, u64, u64)], _perm: Permissions) {
        log::error!("IOTLB UPDATE ignored: {}", super::NOT_BUILT);
    }

    pub fn invalidate(&self, _iova: u64, _size: u64) {}

    pub fn flush(&self) {}

    pub fn entries(&self) -> usize {
        0
    }

    /// Accesses are never translated, so none fails translation.
    pub fn take_fail(&self) -> Option<TranslationFail> {
        None
    }
}

/// Guest RAM as the rings see it in a build without translation.
#[derive(Debug, Clone)]
pub struct DeviceMemory {
    backend: GuestMemoryMmap,
    iommu: Arc<VhostIommu>,
    /// Translation requested: fail closed (see the module doc).
    deny_all: bool,
}

impl DeviceMemory {
    pub fn new(
        backend: GuestMemoryMmap,
        iommu: VhostIommu,
        translate: bool,
        _bitmap: (),
    ) -> DeviceMemory {
        DeviceMemory {
            backend,
            iommu: Arc::new(iommu),
            deny_all: translate,
        }
    }

    pub fn with_replaced_backend(&self, backend: GuestMemoryMmap) -> DeviceMemory {
        DeviceMemory {
            backend,
            iommu: self.iommu.clone(),
            deny_all: self.deny_all,
        }
    }

    pub fn set_iommu_enabled(&mut self, translate: bool) {
        if translate {
            log::error!(
                "translation requested: {}; denying all guest memory access",
                super::NOT_BUILT
            );
        }
        self.deny_all = translate;
    }

    pub fn get_iommu_enabled(&self) -> bool {
        self.deny_all
    }

    pub fn iommu(&self) -> &Arc<VhostIommu> {
        &self.iommu
    }
}

impl GuestMemory for DeviceMemory {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = <GuestMemoryMmap as GuestMemory>::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        !self.deny_all && GuestMemory::check_range(&self.backend, addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> MemResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if self.deny_all {
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        }
        GuestMemory::get_slices(&self.backend, addr, count, access)
    }

    fn physical_memory(&self) -> Option<&GuestMemoryMmap> {
        (!self.deny_all).then_some(&self.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iotlb::new_device_memory;
    use vm_memory::{Bytes, GuestRegionMmap, MmapRegion};

    fn ram() -> GuestMemoryMmap {
        let region = GuestRegionMmap::new(
            MmapRegion::new(0x2000).expect("mmap"),
            GuestAddress(0x1_0000),
        )
        .expect("region");
        GuestMemoryMmap::from_regions(vec![region]).expect("memory")
    }

    #[test]
    fn untranslated_memory_reads_and_writes_guest_ram() {
        let mem = new_device_memory(16).with_replaced_backend(ram());
        mem.write_slice(b"vsock", GuestAddress(0x1_0010))
            .expect("write");
        let mut out = [0u8; 5];
        mem.read_slice(&mut out, GuestAddress(0x1_0010))
            .expect("read");
        assert_eq!(&out, b"vsock");
        assert!(GuestMemory::check_range(
            &mem,
            GuestAddress(0x1_0000),
            0x2000,
            Permissions::ReadWrite
        ));
        assert!(mem.physical_memory().is_some());
        assert_eq!((mem.iommu().entries(), mem.iommu().take_fail()), (0, None));
    }

    #[test]
    fn translation_switched_on_without_an_iotlb_denies_every_access() {
        let mut mem = new_device_memory(16).with_replaced_backend(ram());
        mem.set_iommu_enabled(true);
        let mut out = [0u8; 1];
        assert!(mem.read_slice(&mut out, GuestAddress(0x1_0000)).is_err());
        assert!(mem.write_slice(b"x", GuestAddress(0x1_0000)).is_err());
        assert!(!GuestMemory::check_range(
            &mem,
            GuestAddress(0x1_0000),
            1,
            Permissions::Read
        ));
        assert!(mem.physical_memory().is_none());
        // Still denied after a memory table change.
        let mem = mem.with_replaced_backend(ram());
        assert!(mem.read_slice(&mut out, GuestAddress(0x1_0000)).is_err());
    }
}
