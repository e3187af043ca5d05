//! The device IOTLB (builds with the `iotlb` feature): IOVA → guest-physical mappings the
//! frontend installs with IOTLB_MSG, and the `vm_memory::Iommu` that translates through them.
//!
//! Lookups never block: a hole or a permission failure is recorded (see [`VhostIommu::take_fail`])
//! and the access fails; the queue code then parks and sends a MISS. UPDATE carries a frontend
//! virtual address; it is converted to guest-physical addresses through the memory table when it
//! is installed (split per region), so a mapping can only ever point into shared guest RAM.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vm_memory::iommu::{IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iommu, Permissions};

use super::TranslationFail;

#[cfg(test)]
use super::message::{parse_request, test_message as msg, IotlbRequest};

#[derive(Debug)]
pub struct VhostIommu {
    iotlb: RwLock<vm_memory::Iotlb>,
    /// Installed mappings, oldest first, for the entry cap.
    installed: Mutex<VecDeque<(u64, u64)>>,
    max_entries: usize,
    last_fail: Mutex<Option<TranslationFail>>,
    /// Bumped by every change, so checks made against the IOTLB can be cached until it changes.
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only this worker thread uses these locks; poisoning could only follow a panic elsewhere and
    // the guarded data stays consistent, so recover instead of propagating.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VhostIommu {
    pub fn new(max_entries: usize) -> VhostIommu {
        VhostIommu {
            iotlb: RwLock::new(vm_memory::Iotlb::new()),
            installed: Mutex::new(VecDeque::new()),
            max_entries: max_entries.max(1),
            last_fail: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Write access; every writer changes the mappings, so the generation moves on.
    fn write(&self) -> RwLockWriteGuard<'_, vm_memory::Iotlb> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.iotlb.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever a mapping is added, removed or flushed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, vm_memory::Iotlb> {
        self.iotlb.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `iova → gpa` pieces (already validated and resolved to guest-physical memory).
    ///
    /// The entry count is exact: `installed` holds disjoint ranges that together cover exactly
    /// what the IOTLB translates. A new mapping first cuts what it overlaps out of older entries
    /// (as the IOTLB itself does), then the oldest entries are evicted while over the cap.
    pub fn map(&self, pieces: &[(u64, u64, u64)], perm: Permissions) {
        let mut tlb = self.write();
        let mut installed = lock(&self.installed);
        for &(iova, gpa, len) in pieces {
            // Checked by parse_request and the region lookup: len > 0, no overflow.
            cut_out(&mut installed, iova, len);
            let _ = tlb.set_mapping(GuestAddress(iova), GuestAddress(gpa), len as usize, perm);
            installed.push_back((iova, len));
            self.evict_over_cap(&mut tlb, &mut installed);
        }
    }

    /// Drops any translation in `[iova, iova + size)`. An entry only partly inside keeps its
    /// remaining head and tail as entries of their own (F3: dropping the whole entry left the
    /// rest of the mapping installed and uncounted, so the cap did not bound the IOTLB). A split
    /// can add one entry; the cap is enforced again.
    pub fn invalidate(&self, iova: u64, size: u64) {
        let size = size.min(u64::MAX - iova);
        if size == 0 {
            return;
        }
        let mut tlb = self.write();
        tlb.invalidate_mapping(GuestAddress(iova), size as usize);
        let mut installed = lock(&self.installed);
        cut_out(&mut installed, iova, size);
        self.evict_over_cap(&mut tlb, &mut installed);
    }

    fn evict_over_cap(&self, tlb: &mut vm_memory::Iotlb, installed: &mut VecDeque<(u64, u64)>) {
        while installed.len() > self.max_entries {
            if let Some((old, old_len)) = installed.pop_front() {
                // Entries are disjoint: this drops exactly that entry's translations.
                tlb.invalidate_mapping(GuestAddress(old), old_len as usize);
            }
        }
    }

    /// The tracked ranges (disjoint), oldest first.
    pub fn installed_ranges(&self) -> Vec<(u64, u64)> {
        lock(&self.installed).iter().copied().collect()
    }

    /// Drops every mapping (deny-all).
    pub fn flush(&self) {
        self.write().invalidate_all();
        lock(&self.installed).clear();
        *lock(&self.last_fail) = None;
    }

    pub fn entries(&self) -> usize {
        lock(&self.installed).len()
    }

    /// The last failed translation, if any (cleared by taking it).
    pub fn take_fail(&self) -> Option<TranslationFail> {
        lock(&self.last_fail).take()
    }
}

/// Removes `[iova, iova + len)` from the tracked ranges, keeping the parts of each range outside
/// it in that range's place (same age). `iova + len` does not overflow (callers check).
fn cut_out(installed: &mut VecDeque<(u64, u64)>, iova: u64, len: u64) {
    let end = iova + len;
    if !installed.iter().any(|&(a, l)| a < end && iova < a + l) {
        return;
    }
    let kept = installed
        .drain(..)
        .flat_map(|(a, l)| {
            let a_end = a + l;
            if a_end <= iova || a >= end {
                return [Some((a, l)), None];
            }
            let head = (a < iova).then(|| (a, iova - a));
            let tail = (a_end > end).then(|| (end, a_end - end));
            [head, tail]
        })
        .flatten()
        .collect();
    *installed = kept;
}

impl Iommu for VhostIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, vm_memory::Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, vm_memory::iommu::Error> {
        if iova.0.checked_add(length as u64).is_none() {
            return Err(vm_memory::iommu::Error::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "range overflows".into(),
            });
        }
        match vm_memory::Iotlb::lookup(self.read(), iova, length, access) {
            Ok(it) => Ok(it),
            Err(fails) => {
                let (first, miss) = match (fails.misses.first(), fails.access_fails.first()) {
                    (Some(m), Some(a)) if a.base.0 < m.base.0 => (a.base.0, false),
                    (Some(m), _) => (m.base.0, true),
                    (None, Some(a)) => (a.base.0, false),
                    (None, None) => (iova.0, true),
                };
                *lock(&self.last_fail) = Some(TranslationFail {
                    iova: first,
                    access,
                    miss,
                });
                Err(vm_memory::iommu::Error::CannotResolve {
                    iova_range: IovaRange { base: iova, length },
                    reason: if miss {
                        "IOTLB miss".into()
                    } else {
                        "IOTLB permission".into()
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_record_misses_and_permission_failures() {
        let iommu = VhostIommu::new(2);
        assert!(iommu
            .translate(GuestAddress(0x1000), 8, Permissions::Read)
            .is_err());
        assert_eq!(
            iommu.take_fail(),
            Some(TranslationFail {
                iova: 0x1000,
                access: Permissions::Read,
                miss: true
            })
        );
        iommu.map(&[(0x1000, 0x9000, 0x1000)], Permissions::Read);
        let hit: Vec<_> = iommu
            .translate(GuestAddress(0x1010), 8, Permissions::Read)
            .unwrap()
            .collect();
        assert_eq!(hit[0].base, GuestAddress(0x9010));
        assert!(iommu
            .translate(GuestAddress(0x1010), 8, Permissions::Write)
            .is_err());
        assert_eq!(
            iommu.take_fail(),
            Some(TranslationFail {
                iova: 0x1010,
                access: Permissions::Write,
                miss: false
            })
        );
        // A range spanning a hole reports the hole's start.
        assert!(iommu
            .translate(GuestAddress(0x1ff0), 0x20, Permissions::Read)
            .is_err());
        assert_eq!(iommu.take_fail().map(|f| f.iova), Some(0x2000));
        // The cap evicts the oldest.
        iommu.map(
            &[(0x3000, 0xa000, 0x1000), (0x5000, 0xb000, 0x1000)],
            Permissions::ReadWrite,
        );
        assert_eq!(iommu.entries(), 2);
        assert!(iommu
            .translate(GuestAddress(0x1000), 8, Permissions::Read)
            .is_err());
        assert!(iommu
            .translate(GuestAddress(0x5000), 8, Permissions::Write)
            .is_ok());
        iommu.invalidate(0x5000, 0x10);
        assert!(iommu
            .translate(GuestAddress(0x5000), 8, Permissions::Write)
            .is_err());
        iommu.flush();
        assert!(iommu
            .translate(GuestAddress(0x3000), 8, Permissions::Read)
            .is_err());
        assert!(iommu
            .translate(GuestAddress(u64::MAX - 4), 8, Permissions::Read)
            .is_err());
    }

    fn translates(iommu: &VhostIommu, iova: u64) -> bool {
        let ok = iommu
            .translate(GuestAddress(iova), 1, Permissions::Read)
            .is_ok();
        let _ = iommu.take_fail();
        ok
    }

    /// F3 (fuzz finding): UPDATE 0+0x3000 then INVALIDATE 0x1000+0x1000 left two pages
    /// translating with 0 entries counted; repeated, the IOTLB grew without bound past the cap.
    #[test]
    fn partial_invalidate_splits_the_entry_and_the_cap_bounds_translations() {
        let iommu = VhostIommu::new(16);
        iommu.map(&[(0, 0x10_0000, 0x3000)], Permissions::ReadWrite);
        iommu.invalidate(0x1000, 0x1000);
        assert_eq!(iommu.installed_ranges(), [(0, 0x1000), (0x2000, 0x1000)]);
        assert!(translates(&iommu, 0));
        assert!(!translates(&iommu, 0x1000));
        assert!(translates(&iommu, 0x2fff));
        let hit: Vec<_> = iommu
            .translate(GuestAddress(0x2000), 8, Permissions::Read)
            .unwrap()
            .collect();
        assert_eq!(hit[0].base, GuestAddress(0x10_2000));

        // The attack: 1000 UPDATE/partial-INVALIDATE pairs with a cap of 16.
        for i in 0..1000u64 {
            let base = 0x100_0000 + i * 0x3000;
            iommu.map(&[(base, 0x10_0000, 0x3000)], Permissions::Read);
            iommu.invalidate(base + 0x1000, 0x1000);
            assert!(iommu.entries() <= 16);
        }
        let pages = (0..3000u64)
            .filter(|p| translates(&iommu, 0x100_0000 + p * 0x1000))
            .count();
        assert_eq!(pages, 16, "only the 16 counted one-page entries translate");
        // Overlapping UPDATEs replace what they cover: still disjoint and exact.
        iommu.flush();
        iommu.map(&[(0, 0, 0x4000)], Permissions::Read);
        iommu.map(&[(0x1000, 0x8000, 0x1000)], Permissions::Read);
        assert_eq!(
            iommu.installed_ranges(),
            [(0, 0x1000), (0x2000, 0x2000), (0x1000, 0x1000)]
        );
    }

    #[test]
    fn fuzz_requests_never_panic_and_entries_stay_capped() {
        let mut rng = crate::testing::Rng::new(0x10ad);
        let iommu = VhostIommu::new(64);
        for _ in 0..50_000 {
            let mut m = msg(
                rng.edgy(),
                rng.edgy(),
                rng.edgy(),
                rng.below(6) as u8,
                rng.below(7) as u8,
            );
            if rng.below(20) == 0 {
                m.truncate(rng.below(40) as usize);
            }
            match parse_request(&m) {
                Ok(IotlbRequest::Update {
                    iova,
                    size,
                    uaddr,
                    perm,
                }) => {
                    // Pretend the target resolved to one guest-physical piece.
                    iommu.map(&[(iova, uaddr, size)], perm);
                }
                Ok(IotlbRequest::Invalidate { iova, size }) => iommu.invalidate(iova, size),
                Err(_) => {}
            }
            assert!(iommu.entries() <= 64);
            let _ = iommu.translate(
                GuestAddress(rng.edgy()),
                rng.below(0x10000) as usize,
                Permissions::Read,
            );
            let _ = iommu.take_fail();
        }
    }
}
