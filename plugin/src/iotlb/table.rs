//! The device IOTLB: IOVA → guest-physical mappings the frontend installs with IOTLB_MSG, and
//! the `vm_memory::Iommu` that translates through them.
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

/// `struct vhost_iotlb_msg` as vhost-user carries it: 32 bytes.
pub const MSG_SIZE: usize = 32;

pub const TYPE_MISS: u8 = 1;
pub const TYPE_UPDATE: u8 = 2;
pub const TYPE_INVALIDATE: u8 = 3;

/// A validated IOTLB request from the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IotlbRequest {
    Update {
        iova: u64,
        size: u64,
        uaddr: u64,
        perm: Permissions,
    },
    Invalidate {
        iova: u64,
        size: u64,
    },
}

/// Parses and validates an IOTLB_MSG payload. Every rule here is a refusal (non-zero reply, no
/// state change): payload size ≠ 32; type not UPDATE/INVALIDATE; size 0; `iova + size` or
/// `uaddr + size` overflowing (ranges are half-open, so IOVA `u64::MAX` itself is never mapped);
/// UPDATE permission not RO/WO/RW (perm 0, "no access", is refused rather than installed).
/// INVALIDATE sizes that overflow are clamped: over-invalidation is always safe.
pub fn parse_request(p: &[u8]) -> Result<IotlbRequest, String> {
    if p.len() != MSG_SIZE {
        return Err(format!(
            "IOTLB message of {} bytes (expected {MSG_SIZE})",
            p.len()
        ));
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    let (iova, size, uaddr, perm, kind) = (u64_at(0), u64_at(8), u64_at(16), p[24], p[25]);
    if size == 0 {
        return Err("IOTLB message with size 0".into());
    }
    match kind {
        TYPE_UPDATE => {
            if iova.checked_add(size).is_none() || uaddr.checked_add(size).is_none() {
                return Err(format!(
                    "IOTLB UPDATE {iova:#x}+{size:#x} -> {uaddr:#x} overflows"
                ));
            }
            let perm = match perm {
                1 => Permissions::Read,
                2 => Permissions::Write,
                3 => Permissions::ReadWrite,
                p => {
                    return Err(format!(
                        "IOTLB UPDATE with permission {p} (expected 1 RO, 2 WO or 3 RW)"
                    ))
                }
            };
            Ok(IotlbRequest::Update {
                iova,
                size,
                uaddr,
                perm,
            })
        }
        TYPE_INVALIDATE => Ok(IotlbRequest::Invalidate {
            iova,
            size: size.min(u64::MAX - iova),
        }),
        t => Err(format!(
            "IOTLB message type {t} is not UPDATE (2) or INVALIDATE (3)"
        )),
    }
}

/// Encodes a MISS for `iova` needing `perm` (size 0, as QEMU and the kernel expect).
pub fn encode_miss(iova: u64, perm: Permissions) -> [u8; MSG_SIZE] {
    let mut out = [0u8; MSG_SIZE];
    out[0..8].copy_from_slice(&iova.to_ne_bytes());
    out[24] = perm as u8;
    out[25] = TYPE_MISS;
    out
}

/// The first address an access could not translate, and the access it needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslationFail {
    pub iova: u64,
    pub access: Permissions,
    /// true: nothing mapped there; false: mapped without the needed permission.
    pub miss: bool,
}

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
    pub fn map(&self, pieces: &[(u64, u64, u64)], perm: Permissions) {
        let mut tlb = self.write();
        let mut installed = lock(&self.installed);
        for &(iova, gpa, len) in pieces {
            // Checked by parse_request and the region lookup: len > 0, no overflow.
            let _ = tlb.set_mapping(GuestAddress(iova), GuestAddress(gpa), len as usize, perm);
            installed.push_back((iova, len));
            while installed.len() > self.max_entries {
                if let Some((old, old_len)) = installed.pop_front() {
                    // Evicting may also drop an overlapping newer mapping: that only costs a miss.
                    tlb.invalidate_mapping(GuestAddress(old), old_len as usize);
                }
            }
        }
    }

    pub fn invalidate(&self, iova: u64, size: u64) {
        if size == 0 {
            return;
        }
        self.write()
            .invalidate_mapping(GuestAddress(iova), size as usize);
        lock(&self.installed).retain(|&(a, l)| a + l <= iova || a >= iova.saturating_add(size));
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

    fn msg(iova: u64, size: u64, uaddr: u64, perm: u8, kind: u8) -> Vec<u8> {
        let mut m = vec![0u8; MSG_SIZE];
        m[0..8].copy_from_slice(&iova.to_ne_bytes());
        m[8..16].copy_from_slice(&size.to_ne_bytes());
        m[16..24].copy_from_slice(&uaddr.to_ne_bytes());
        m[24] = perm;
        m[25] = kind;
        m
    }

    #[test]
    fn parse_validates_every_field() {
        assert_eq!(
            parse_request(&msg(0x1000, 0x1000, 0x7f00, 3, 2)),
            Ok(IotlbRequest::Update {
                iova: 0x1000,
                size: 0x1000,
                uaddr: 0x7f00,
                perm: Permissions::ReadWrite
            })
        );
        assert_eq!(
            parse_request(&msg(0, u64::MAX, 0, 0, 3)),
            Ok(IotlbRequest::Invalidate {
                iova: 0,
                size: u64::MAX
            })
        );
        assert_eq!(
            parse_request(&msg(5, u64::MAX, 0, 0, 3)),
            Ok(IotlbRequest::Invalidate {
                iova: 5,
                size: u64::MAX - 5
            })
        );
        for (bad, why) in [
            (msg(0x1000, 0, 0x7f00, 3, 2), "size 0"),
            (msg(u64::MAX - 10, 0x1000, 0x7f00, 3, 2), "overflows"),
            (msg(0x1000, 0x1000, u64::MAX - 10, 3, 2), "overflows"),
            (msg(0x1000, 0x1000, 0x7f00, 0, 2), "permission 0"),
            (msg(0x1000, 0x1000, 0x7f00, 4, 2), "permission 4"),
            (msg(0x1000, 0x1000, 0x7f00, 3, 5), "type 5"),
            (msg(0x1000, 0x1000, 0x7f00, 3, 1), "type 1"),
            (msg(0x1000, 0, 0, 0, 3), "size 0"),
        ] {
            let err = parse_request(&bad).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
        assert!(parse_request(&[0u8; 31]).unwrap_err().contains("31 bytes"));
        assert!(parse_request(&[0u8; 40]).unwrap_err().contains("40 bytes"));
    }

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
