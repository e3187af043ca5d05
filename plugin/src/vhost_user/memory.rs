//! The guest memory table: regions the frontend shares with SET_MEM_TABLE / ADD_MEM_REG, each an
//! fd mapped `MAP_SHARED` at `mmap_offset`, placed at `guest_phys_addr`.
//!
//! Two address spaces meet here (vhost-user spec "Memory regions"):
//! - descriptor buffer addresses are guest-physical (GPA);
//! - ring addresses in SET_VRING_ADDR are *frontend virtual addresses*; they are translated to GPAs
//!   through each region's `userspace_addr`.
//!
//! Rules: regions must not overlap in either space, sizes are non-zero, `addr + size` must not
//! overflow, and at most [`MAX_REGIONS`] regions exist. A failed change leaves the table as it was.
//!
//! The fd must be a regular file (memfd, tmpfs, hugetlbfs file) whose size covers
//! `mmap_offset + memory_size` when it is mapped: touching a page past the end of the file is a
//! SIGBUS (F2: a zero-length memfd used to be mapped unchecked). A frontend can still shrink the
//! file afterwards unless it is sealed with `F_SEAL_SHRINK`; unsealed regions are registered
//! with [`super::fault_guard`], which contains such a SIGBUS to this VM ([`MemoryTable::fault`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use super::fault_guard::{self, FaultGuard};

/// Memory slots we accept (GET_MAX_MEM_SLOTS); QEMU needs at least 8 without CONFIGURE_MEM_SLOTS.
pub const MAX_REGIONS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("region {index}: size is zero")]
    EmptyRegion { index: usize },
    #[error("region {index}: address + size overflows")]
    Overflow { index: usize },
    #[error("region {index} overlaps another region")]
    Overlap { index: usize },
    #[error("too many regions ({0} > {MAX_REGIONS})")]
    TooMany(usize),
    #[error("region {index}: cannot map the fd: {reason}")]
    Map { index: usize, reason: String },
    #[error("no region matches {0:#x}")]
    NotFound(u64),
}

/// The frontend's description of one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub mmap_offset: u64,
}

struct Region {
    spec: RegionSpec,
    /// Set when the fd is not sealed against shrinking. Declared before `mapping`: the range is
    /// disarmed before the last reference to the mapping can unmap it.
    guard: Option<Arc<FaultGuard>>,
    mapping: Arc<GuestRegionMmap>,
}

impl Region {
    fn share(&self) -> Region {
        Region {
            spec: self.spec,
            guard: self.guard.clone(),
            mapping: self.mapping.clone(),
        }
    }
}

/// All mapped regions, plus the `GuestMemoryMmap` view the virtqueues use.
#[derive(Default)]
pub struct MemoryTable {
    regions: Vec<Region>,
    memory: Option<Arc<GuestMemoryMmap>>,
    /// Regions no longer in the table whose mapping may still be in use (an older memory view):
    /// their guards stay armed until the mapping is ours alone.
    retired: Vec<Region>,
}

impl MemoryTable {
    /// The memory the queues read and write (None until a table arrives).
    pub fn memory(&self) -> Option<&Arc<GuestMemoryMmap>> {
        self.memory.as_ref()
    }

    /// Replaces the whole table (SET_MEM_TABLE).
    pub fn set_all(&mut self, specs: Vec<(RegionSpec, File)>) -> Result<(), MemoryError> {
        if specs.len() > MAX_REGIONS {
            return Err(MemoryError::TooMany(specs.len()));
        }
        let mut regions = Vec::with_capacity(specs.len());
        for (index, (spec, file)) in specs.into_iter().enumerate() {
            check_new(&regions, index, &spec)?;
            regions.push(map_region(index, spec, file)?);
        }
        self.install(regions)
    }

    /// Adds one region (ADD_MEM_REG).
    pub fn add(&mut self, spec: RegionSpec, file: File) -> Result<(), MemoryError> {
        let index = self.regions.len();
        if index >= MAX_REGIONS {
            return Err(MemoryError::TooMany(index + 1));
        }
        check_new(&self.regions, index, &spec)?;
        let region = map_region(index, spec, file)?;
        let mut regions: Vec<Region> = self.regions.iter().map(Region::share).collect();
        regions.push(region);
        self.install(regions)
    }

    /// Removes the region matching `spec` by guest address, size and user address (REM_MEM_REG).
    pub fn remove(&mut self, spec: &RegionSpec) -> Result<(), MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|r| {
                r.spec.guest_phys_addr == spec.guest_phys_addr
                    && r.spec.memory_size == spec.memory_size
                    && r.spec.userspace_addr == spec.userspace_addr
            })
            .ok_or(MemoryError::NotFound(spec.guest_phys_addr))?;
        let regions = self
            .regions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, r)| r.share())
            .collect();
        self.install(regions)
    }

    /// Why the guest memory can no longer be trusted: an access to a region whose fd shrank
    /// under the mapping raised SIGBUS (contained by [`fault_guard`]). The session must end.
    pub fn fault(&mut self) -> Option<String> {
        self.retired.retain(|r| Arc::strong_count(&r.mapping) > 1);
        self.regions
            .iter()
            .chain(&self.retired)
            .find(|r| r.guard_faulted())
            .map(|r| {
                format!(
                    "guest memory region at {:#x} (+{:#x}) raised SIGBUS: the frontend shrank its \
                     fd under the mapping (fd not sealed with F_SEAL_SHRINK)",
                    r.spec.guest_phys_addr, r.spec.memory_size
                )
            })
    }

    /// Keeps the guards of regions leaving the table armed while their mapping is shared.
    fn retire(&mut self, old: Vec<Region>) {
        let gone = old.into_iter().filter(|r| {
            r.guard.is_some()
                && !self
                    .regions
                    .iter()
                    .any(|n| Arc::ptr_eq(&n.mapping, &r.mapping))
        });
        self.retired.extend(gone);
        self.retired.retain(|r| Arc::strong_count(&r.mapping) > 1);
    }

    /// Frontend virtual address → guest-physical address, if `[va, va + len)` lies in one region.
    pub fn va_to_gpa(&self, va: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = va.checked_sub(r.spec.userspace_addr)?;
            (off.checked_add(len)? <= r.spec.memory_size).then(|| r.spec.guest_phys_addr + off)
        })
    }

    /// `[va, va + len)` as guest-physical pieces `(offset into the range, gpa, len)`, when every
    /// byte lies in some region (a range may cross regions that are adjacent in VA space).
    pub fn va_pieces(&self, va: u64, len: u64) -> Option<Vec<(u64, u64, u64)>> {
        let mut pieces = Vec::new();
        let mut done = 0u64;
        while done < len {
            let at = va.checked_add(done)?;
            let r = self.regions.iter().find(|r| {
                at >= r.spec.userspace_addr && at - r.spec.userspace_addr < r.spec.memory_size
            })?;
            let off = at - r.spec.userspace_addr;
            let n = (r.spec.memory_size - off).min(len - done);
            pieces.push((done, r.spec.guest_phys_addr + off, n));
            done += n;
        }
        Some(pieces)
    }

    fn install(&mut self, mut regions: Vec<Region>) -> Result<(), MemoryError> {
        regions.sort_by_key(|r| r.spec.guest_phys_addr);
        let memory = if regions.is_empty() {
            None
        } else {
            let arcs = regions.iter().map(|r| r.mapping.clone()).collect();
            Some(Arc::new(GuestMemoryMmap::from_arc_regions(arcs).map_err(
                |e| MemoryError::Map {
                    index: 0,
                    reason: e.to_string(),
                },
            )?))
        };
        let old = std::mem::replace(&mut self.regions, regions);
        self.memory = memory;
        self.retire(old);
        Ok(())
    }
}

fn check_new(existing: &[Region], index: usize, spec: &RegionSpec) -> Result<(), MemoryError> {
    if spec.memory_size == 0 {
        return Err(MemoryError::EmptyRegion { index });
    }
    let gpa_end = spec.guest_phys_addr.checked_add(spec.memory_size);
    let va_end = spec.userspace_addr.checked_add(spec.memory_size);
    let off_end = spec.mmap_offset.checked_add(spec.memory_size);
    let (Some(gpa_end), Some(va_end), Some(_)) = (gpa_end, va_end, off_end) else {
        return Err(MemoryError::Overflow { index });
    };
    if usize::try_from(spec.memory_size).is_err() {
        return Err(MemoryError::Overflow { index });
    }
    let overlaps = existing.iter().any(|r| {
        let o = &r.spec;
        (spec.guest_phys_addr < o.guest_phys_addr + o.memory_size && o.guest_phys_addr < gpa_end)
            || (spec.userspace_addr < o.userspace_addr + o.memory_size && o.userspace_addr < va_end)
    });
    if overlaps {
        return Err(MemoryError::Overlap { index });
    }
    Ok(())
}

/// The fd's size by `fstat(2)`: `File::metadata` is `statx`, outside Cuttlefish's sandbox policy.
/// Whether `file` is a regular file (memfds are), and its size, by `fstat`.
fn fd_stat(file: &File) -> std::io::Result<(bool, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: stat is plain data, written by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid stat buffer.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        st.st_mode & libc::S_IFMT == libc::S_IFREG,
        st.st_size as u64,
    ))
}

fn map_region(index: usize, spec: RegionSpec, file: File) -> Result<Region, MemoryError> {
    let map_err = |reason: String| MemoryError::Map { index, reason };
    let size = usize::try_from(spec.memory_size).map_err(|_| MemoryError::Overflow { index })?;
    // Seals first: once F_SEAL_SHRINK is seen, the size read next is a lower bound for good.
    let sealed = fault_guard::shrink_sealed(file.as_raw_fd());
    // fstat, not std's metadata (statx): inside Cuttlefish's sandbox policy.
    let (is_file, len) = fd_stat(&file).map_err(|e| map_err(e.to_string()))?;
    if !is_file {
        return Err(map_err(
            "the fd is not a regular file or memfd (its size cannot be checked)".into(),
        ));
    }
    // The fd must cover the mapped range, or touching the tail would SIGBUS (zero-length
    // memfds included).
    if spec.mmap_offset.saturating_add(spec.memory_size) > len {
        return Err(map_err(format!(
            "offset {:#x} + size {:#x} is beyond the fd's {len:#x} bytes",
            spec.mmap_offset, spec.memory_size
        )));
    }
    let mmap = MmapRegion::from_file(FileOffset::new(file, spec.mmap_offset), size)
        .map_err(|e| map_err(e.to_string()))?;
    let mapping = GuestRegionMmap::new(mmap, GuestAddress(spec.guest_phys_addr))
        .ok_or_else(|| map_err("guest address range overflows".to_string()))?;
    let guard = if sealed {
        None
    } else {
        let start = mapping
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| map_err(e.to_string()))?;
        Some(Arc::new(
            FaultGuard::register(start, size).map_err(map_err)?,
        ))
    };
    Ok(Region {
        spec,
        guard,
        mapping: Arc::new(mapping),
    })
}

impl Region {
    fn guard_faulted(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.faulted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn memfd(size: u64) -> File {
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe {
            libc::memfd_create(
                c"vsock-test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0);
        use std::os::fd::FromRawFd;
        // SAFETY: fd is a fresh, owned descriptor.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    fn spec(gpa: u64, size: u64, va: u64, off: u64) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: va,
            mmap_offset: off,
        }
    }

    #[test]
    fn maps_translates_and_rejects_bad_tables() {
        let mut t = MemoryTable::default();
        let f = memfd(0x20000);
        t.set_all(vec![
            (
                spec(0, 0x10000, 0x7f00_0000_0000, 0),
                f.try_clone().unwrap(),
            ),
            (
                spec(0x100000, 0x10000, 0x7f00_0001_0000, 0x10000),
                f.try_clone().unwrap(),
            ),
        ])
        .unwrap();
        assert_eq!(t.va_to_gpa(0x7f00_0001_0010, 16), Some(0x100010));
        assert_eq!(t.va_to_gpa(0x7f00_0000_fff8, 16), None);
        let m = t.memory().unwrap().clone();
        m.write_obj(0xabcdu32, GuestAddress(0x100000)).unwrap();
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x100000)).unwrap(), 0xabcd);

        assert_eq!(
            t.add(spec(0x8000, 0x1000, 0x1000, 0), f.try_clone().unwrap()),
            Err(MemoryError::Overlap { index: 2 })
        );
        assert_eq!(
            t.add(spec(0x200000, 0, 0x1000, 0), f.try_clone().unwrap()),
            Err(MemoryError::EmptyRegion { index: 2 })
        );
        assert_eq!(
            t.add(spec(u64::MAX, 2, 0x1000, 0), f.try_clone().unwrap()),
            Err(MemoryError::Overflow { index: 2 })
        );
        assert!(matches!(
            t.add(spec(0x200000, 0x100000, 0x1000, 0), f.try_clone().unwrap()),
            Err(MemoryError::Map { .. })
        ));
        // Failed changes left the table intact.
        assert_eq!(t.regions.len(), 2);
        t.remove(&spec(0, 0x10000, 0x7f00_0000_0000, 0)).unwrap();
        assert_eq!(t.regions.len(), 1);
        assert_eq!(t.va_to_gpa(0x7f00_0000_0000, 1), None);
    }

    /// F2 (fuzz finding): a region backed by a zero-length memfd was mapped unchecked (the
    /// `len != 0 &&` condition) and the first ring access was a SIGBUS killing every VM.
    #[test]
    fn zero_length_and_short_fds_are_refused() {
        let mut t = MemoryTable::default();
        let empty = memfd(0);
        assert_eq!(
            t.add(spec(0, 0x1000, 0x1000, 0), empty),
            Err(MemoryError::Map {
                index: 0,
                reason: "offset 0x0 + size 0x1000 is beyond the fd's 0x0 bytes".into()
            })
        );
        assert_eq!(
            t.set_all(vec![(spec(0, 0x2000, 0x1000, 0x1000), memfd(0x2000))]),
            Err(MemoryError::Map {
                index: 0,
                reason: "offset 0x1000 + size 0x2000 is beyond the fd's 0x2000 bytes".into()
            })
        );
        let pipe = {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two fresh fds, owned right away.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            use std::os::fd::FromRawFd;
            // SAFETY: fds[1] is ours; fds[0] is closed here.
            unsafe {
                libc::close(fds[0]);
                File::from_raw_fd(fds[1])
            }
        };
        assert!(matches!(
            t.add(spec(0, 0x1000, 0x1000, 0), pipe),
            Err(MemoryError::Map { reason, .. }) if reason.contains("not a regular file")
        ));
        assert!(t.memory().is_none());
    }

    /// F2, later shrink: an unsealed memfd truncated after it was shared. The access reads
    /// zeros instead of killing the process, and the table reports the fault so the session is
    /// torn down. A memfd sealed with F_SEAL_SHRINK needs no guard (it cannot shrink).
    #[test]
    fn a_memfd_shrunk_after_sharing_is_contained_and_reported() {
        let mut t = MemoryTable::default();
        let f = memfd(0x4000);
        t.add(
            spec(0x10000, 0x4000, 0x7f00_0000_0000, 0),
            f.try_clone().unwrap(),
        )
        .unwrap();
        assert!(t.regions[0].guard.is_some(), "unsealed: guarded");
        let m = t.memory().unwrap().clone();
        m.write_obj(0x1122_3344u32, GuestAddress(0x12000)).unwrap();
        assert_eq!(t.fault(), None);

        f.set_len(0).unwrap(); // the frontend shrinks the memfd under the mapping
        let v: u32 = m.read_obj(GuestAddress(0x12000)).unwrap();
        assert_eq!(v, 0, "the faulting page reads as zeros");
        let fault = t.fault().expect("the SIGBUS is reported");
        assert!(
            fault.contains("0x10000") && fault.contains("SIGBUS"),
            "{fault}"
        );
        // Writes to the replaced page do not fault either.
        m.write_obj(7u32, GuestAddress(0x12004)).unwrap();
        drop(m);
        t.set_all(Vec::new()).unwrap();
        assert_eq!(t.fault(), None, "a new table starts clean");

        // Sealed against shrinking: no guard, and the truncation is refused by the kernel.
        let sealed = memfd(0x1000);
        // SAFETY: F_ADD_SEALS on our own memfd.
        let rc = unsafe { libc::fcntl(sealed.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        t.add(spec(0, 0x1000, 0x1000, 0), sealed.try_clone().unwrap())
            .unwrap();
        assert!(t.regions[0].guard.is_none(), "sealed: no guard needed");
        assert!(sealed.set_len(0).is_err());
    }
}
