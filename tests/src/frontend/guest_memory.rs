//! Guest RAM: one memfd per region, mapped `MAP_SHARED` into this process.
//!
//! Each region has a guest-physical address (GPA) chosen by the test and a *frontend virtual
//! address*: its mmap address in this process, which is what QEMU and crosvm send as
//! `userspace_addr` and as vring addresses. A bump allocator hands out GPAs for rings and buffers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};
use std::sync::Mutex;

/// One guest memory region backed by its own memfd.
pub struct GuestRegion {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// mmap address in this process (the frontend VA).
    host: usize,
    fd: OwnedFd,
}

impl GuestRegion {
    /// The frontend virtual address of the region's first byte.
    pub fn frontend_va(&self) -> u64 {
        self.host as u64
    }

    /// The memfd backing the region (mmap offset 0).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa + self.size)
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: `host` was returned by mmap with exactly `size` bytes.
        unsafe { libc::munmap(self.host as *mut libc::c_void, self.size as usize) };
    }
}

/// Guest RAM made of one or more regions.
pub struct GuestMemory {
    regions: Vec<GuestRegion>,
    /// Bump allocator state: (region index, next free GPA).
    next: Mutex<(usize, u64)>,
}

// SAFETY: the mappings are plain shared memory; all access goes through raw copies / atomics.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

fn memfd(size: u64) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"vsock-plugin-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl GuestMemory {
    /// Creates guest RAM with regions at the given `(gpa, size)` pairs (sizes page multiples).
    pub fn new(layout: &[(u64, u64)]) -> io::Result<Self> {
        let mut regions = Vec::new();
        for &(gpa, size) in layout {
            let fd = memfd(size)?;
            // SAFETY: mapping a fresh memfd of `size` bytes.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if host == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            regions.push(GuestRegion {
                gpa,
                size,
                host: host as usize,
                fd,
            });
        }
        let first = regions.first().map(|r| r.gpa).unwrap_or(0);
        Ok(GuestMemory {
            regions,
            next: Mutex::new((0, first)),
        })
    }

    /// A single region of `size` bytes at GPA 0.
    pub fn single(size: u64) -> io::Result<Self> {
        Self::new(&[(0, size)])
    }

    /// The regions, in creation order.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    fn find(&self, gpa: u64, len: u64) -> Option<&GuestRegion> {
        self.regions.iter().find(|r| r.contains(gpa, len))
    }

    /// Host pointer for `len` bytes at `gpa`, if they lie within one region.
    pub fn host_ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        self.find(gpa, len)
            .map(|r| (r.host + (gpa - r.gpa) as usize) as *mut u8)
    }

    /// The frontend virtual address of `gpa` (what SET_VRING_ADDR carries).
    pub fn frontend_va(&self, gpa: u64) -> Option<u64> {
        self.host_ptr(gpa, 1).map(|p| p as u64)
    }

    fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        self.host_ptr(gpa, len as u64)
            .unwrap_or_else(|| panic!("GPA range {gpa:#x}+{len:#x} is not in guest memory"))
    }

    /// Copies `buf.len()` bytes from guest memory at `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let p = self.ptr(gpa, buf.len());
        fence(Ordering::Acquire);
        // SAFETY: the range is inside a live mapping; the other process may write concurrently,
        // which at worst yields torn bytes, as for a real driver.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
    }

    /// Reads `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.read(gpa, &mut v);
        v
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len());
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        fence(Ordering::Release);
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        let p = self.ptr(gpa, len);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_bytes(p, byte, len) };
    }

    /// Little-endian u16 with the given memory ordering (ring indices).
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> u16 {
        assert_eq!(gpa % 2, 0);
        // SAFETY: aligned, in range, shared memory.
        let a = unsafe { &*(self.ptr(gpa, 2) as *const AtomicU16) };
        u16::from_le(a.load(order))
    }

    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) {
        assert_eq!(gpa % 2, 0);
        // SAFETY: as in `load_u16`.
        let a = unsafe { &*(self.ptr(gpa, 2) as *const AtomicU16) };
        a.store(v.to_le(), order)
    }

    pub fn load_u32(&self, gpa: u64, order: Ordering) -> u32 {
        assert_eq!(gpa % 4, 0);
        // SAFETY: as in `load_u16`.
        let a = unsafe { &*(self.ptr(gpa, 4) as *const AtomicU32) };
        u32::from_le(a.load(order))
    }

    pub fn store_u32(&self, gpa: u64, v: u32, order: Ordering) {
        assert_eq!(gpa % 4, 0);
        // SAFETY: as in `load_u16`.
        let a = unsafe { &*(self.ptr(gpa, 4) as *const AtomicU32) };
        a.store(v.to_le(), order)
    }

    pub fn write_u64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }

    pub fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) from the bump allocator, moving
    /// on to the next region when the current one is full. Panics when guest RAM is exhausted.
    pub fn alloc(&self, size: u64, align: u64) -> u64 {
        let mut next = self.next.lock().unwrap();
        loop {
            let (idx, cur) = *next;
            let region = self
                .regions
                .get(idx)
                .unwrap_or_else(|| panic!("guest memory exhausted allocating {size:#x} bytes"));
            let start = cur.max(region.gpa).next_multiple_of(align);
            if start + size <= region.gpa + region.size {
                *next = (idx, start + size);
                return start;
            }
            let following = self.regions.get(idx + 1).map(|r| r.gpa).unwrap_or(0);
            *next = (idx + 1, following);
        }
    }
}
