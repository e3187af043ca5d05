//! One descriptor chain seen as two byte streams: the device-readable part and the device-writable
//! part. Buffers may be split across any number of descriptors in either direction (Linux 6.12
//! sends a 64 KiB packet as a header descriptor plus several data descriptors), so nothing here
//! assumes a fixed layout. Every address is checked against guest memory when the chain is taken,
//! so later I/O on it cannot touch anything outside guest memory.

use std::ops::Deref;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Upper bound on descriptors in one chain we accept (the largest queue size).
const MAX_DESCRIPTORS: usize = 32768;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor {index} ({addr:#x}+{len}) is outside guest memory or not {access}")]
    BadAddress {
        index: usize,
        addr: u64,
        len: u32,
        access: &'static str,
    },
    #[error("descriptor chain longer than {MAX_DESCRIPTORS} entries")]
    TooLong,
    #[error("access at offset {offset}+{len} beyond the {total} bytes of the buffer")]
    OutOfBounds {
        offset: usize,
        len: usize,
        total: usize,
    },
    #[error("guest memory access failed: {0}")]
    Memory(String),
}

/// A list of guest buffers forming one contiguous byte range.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    segs: Vec<(GuestAddress, usize)>,
    total: usize,
}

impl Segments {
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn push(&mut self, addr: GuestAddress, len: usize) {
        if len > 0 {
            self.segs.push((addr, len));
            self.total += len;
        }
    }

    /// The guest ranges covering `[offset, offset + len)`, appended to `out` (no memory is
    /// touched: every descriptor was checked against guest memory when the chain was taken).
    pub fn ranges(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<(GuestAddress, usize)>,
    ) -> Result<(), ChainError> {
        self.for_each_range(offset, len, |addr, n| {
            out.push((addr, n));
            Ok(())
        })
    }

    /// Calls `f` with each guest range covering `[offset, offset + len)`, in order.
    fn for_each_range(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.total).ok_or(
            ChainError::OutOfBounds {
                offset,
                len,
                total: self.total,
            },
        )?;
        let mut pos = 0usize;
        for &(addr, seg_len) in &self.segs {
            let seg_end = pos + seg_len;
            if seg_end > offset && pos < end {
                let from = offset.max(pos) - pos;
                let to = end.min(seg_end) - pos;
                f(GuestAddress(addr.0 + from as u64), to - from)?;
            }
            pos = seg_end;
            if pos >= end {
                break;
            }
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the guest (volatile reads).
    pub fn read_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let mut done = 0;
        self.for_each_range(offset, buf.len(), |addr, len| {
            mem.read_slice(&mut buf[done..done + len], addr)
                .map_err(|e| ChainError::Memory(e.to_string()))?;
            done += len;
            Ok(())
        })
    }

    /// Copies `buf` into the guest starting at `offset` (volatile writes).
    pub fn write_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &[u8],
    ) -> Result<(), ChainError> {
        let mut done = 0;
        self.for_each_range(offset, buf.len(), |addr, len| {
            mem.write_slice(&buf[done..done + len], addr)
                .map_err(|e| ChainError::Memory(e.to_string()))?;
            done += len;
            Ok(())
        })
    }
}

/// The buffers of one available descriptor chain.
#[derive(Debug)]
pub struct ChainBuffers {
    pub head: u16,
    /// Device-readable bytes (a tx packet).
    pub readable: Segments,
    /// Device-writable bytes (room for an rx packet or an event).
    pub writable: Segments,
}

impl ChainBuffers {
    /// Walks `chain`, checking that every descriptor lies inside guest memory with the access it
    /// is used for.
    pub fn collect<D, M>(
        chain: virtio_queue::DescriptorChain<D>,
        mem: &M,
    ) -> Result<Self, ChainError>
    where
        D: Deref,
        D::Target: GuestMemory,
        M: GuestMemory,
    {
        let head = chain.head_index();
        let mut readable = Segments::default();
        let mut writable = Segments::default();
        for (index, desc) in chain.enumerate() {
            if index >= MAX_DESCRIPTORS {
                return Err(ChainError::TooLong);
            }
            let (access, name) = if desc.is_write_only() {
                (Permissions::Write, "writable")
            } else {
                (Permissions::Read, "readable")
            };
            let len = desc.len() as usize;
            let bad = || ChainError::BadAddress {
                index,
                addr: desc.addr().0,
                len: desc.len(),
                access: name,
            };
            if desc.addr().0.checked_add(len as u64).is_none() {
                return Err(bad());
            }
            for slice in mem
                .get_slices(desc.addr(), len, access)
                .map_err(|_| bad())?
            {
                slice.map_err(|_| bad())?;
            }
            if desc.is_write_only() {
                writable.push(desc.addr(), len);
            } else {
                readable.push(desc.addr(), len);
            }
        }
        Ok(ChainBuffers {
            head,
            readable,
            writable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x10000),
        ])
        .unwrap()
    }

    #[test]
    fn reads_and_writes_span_segments() {
        let m = mem();
        let mut s = Segments::default();
        s.push(GuestAddress(0x100), 3);
        s.push(GuestAddress(0x20000), 5);
        s.push(GuestAddress(0x300), 4);
        assert_eq!(s.len(), 12);
        s.write_at(&m, 1, b"abcdefghij").unwrap();
        assert_eq!(m.read_obj::<[u8; 2]>(GuestAddress(0x101)).unwrap(), *b"ab");
        assert_eq!(
            m.read_obj::<[u8; 5]>(GuestAddress(0x20000)).unwrap(),
            *b"cdefg"
        );
        assert_eq!(m.read_obj::<[u8; 3]>(GuestAddress(0x300)).unwrap(), *b"hij");
        let mut back = [0u8; 10];
        s.read_at(&m, 1, &mut back).unwrap();
        assert_eq!(&back, b"abcdefghij");
        let mut ranges = Vec::new();
        s.ranges(2, 8, &mut ranges).unwrap();
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0x102), 1),
                (GuestAddress(0x20000), 5),
                (GuestAddress(0x300), 2)
            ]
        );
        assert_eq!(
            s.read_at(&m, 10, &mut [0u8; 3]),
            Err(ChainError::OutOfBounds {
                offset: 10,
                len: 3,
                total: 12
            })
        );
    }

    /// T12: a buffer spanning two IOTLB entries that map to unrelated guest-physical pages reads
    /// and writes the right bytes; spanning a hole fails with exactly the hole's start recorded.
    #[test]
    #[cfg(feature = "iotlb")]
    fn translated_buffers_span_entries_and_report_holes() {
        use crate::iotlb::table::VhostIommu;
        use vm_memory::IommuMemory;
        let backend = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        backend.write_slice(b"ABCD", GuestAddress(0x3ffc)).unwrap();
        backend.write_slice(b"EFGH", GuestAddress(0x8000)).unwrap();
        let mem = IommuMemory::new(backend, VhostIommu::new(16), true, ());
        // IOVA 0x10000.. -> GPA 0x3000.., IOVA 0x11000.. -> GPA 0x8000.. (not adjacent).
        mem.iommu().map(
            &[(0x10000, 0x3000, 0x1000), (0x11000, 0x8000, 0x1000)],
            Permissions::ReadWrite,
        );
        let mut s = Segments::default();
        s.push(GuestAddress(0x10ffc), 8);
        let mut got = [0u8; 8];
        s.read_at(&mem, 0, &mut got).unwrap();
        assert_eq!(&got, b"ABCDEFGH");
        s.write_at(&mem, 2, b"xyzw").unwrap();
        s.read_at(&mem, 0, &mut got).unwrap();
        assert_eq!(&got, b"ABxyzwGH");
        // 0x12000.. is unmapped: the failure names the hole's first byte.
        let mut hole = Segments::default();
        hole.push(GuestAddress(0x11ff0), 0x20);
        assert!(hole.read_at(&mem, 0, &mut [0u8; 0x20]).is_err());
        let fail = mem.iommu().take_fail().unwrap();
        assert_eq!((fail.iova, fail.miss), (0x12000, true));
    }
}
