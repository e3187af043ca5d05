//! Descriptor chains from a fuzzed guest memory image through the device's tx path (and the rx
//! and event paths that answer them), as a hostile guest would post them.
//!
//! Layout (queue size 16, everything guest-physical): tx descriptor table at 0x000, avail ring
//! at 0x100, used ring at 0x200; rx at 0x300/0x400/0x500; event queue at 0x600/0x700/0x780;
//! buffers anywhere in the 32 KiB of RAM. The input (after one flag byte) is copied to GPA 0, so
//! the fuzzer writes the rings, the chains and the vsock headers. Guest REQUESTs are relayed to
//! `<uds-path>_<port>`, which does not exist here: they are answered with RST.
//! Invariants: no panic, no out-of-bounds access (ASan), and the device's used-ring index moves
//! by at most the number of chains the guest made available. (A guest may post an rx buffer over
//! its own rings, so the device's writes legitimately change the avail index: the used-index
//! check is skipped for inputs with a device-writable or indirect descriptor into the ring area.)
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vsock_plugin::config::OkReply;
use vsock_plugin::host::sibling::SiblingRouter;
use vsock_plugin::iotlb::{DeviceMemory, VhostIommu};
use vsock_plugin::virtqueue::vring::Vring;
use vsock_plugin::vsock::device::{DeviceConfig, Rings, VsockDevice};

const RAM: usize = 0x8000;
const QUEUE: u32 = 16;
/// (descriptor table, avail ring, used ring) of rx, tx, event.
const LAYOUT: [(u64, u64, u64); 3] = [
    (0x300, 0x400, 0x500),
    (0x000, 0x100, 0x200),
    (0x600, 0x700, 0x780),
];

struct Env {
    dir: PathBuf,
    hybrid: UnixListener,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vsock-fuzz-tx-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("v");
        let _ = std::fs::remove_file(&path);
        let hybrid = UnixListener::bind(&path).expect("bind the hybrid listener");
        hybrid.set_nonblocking(true).expect("nonblocking");
        Env { dir, hybrid }
    })
}

/// Whether any descriptor the device may write through (WRITE or INDIRECT) points below 0x800,
/// where the rings are.
fn writes_into_rings(image: &[u8]) -> bool {
    let desc = |at: usize| -> Option<(u64, u16)> {
        let d = image.get(at..at + 16)?;
        let addr = u64::from_le_bytes(d[0..8].try_into().ok()?);
        Some((addr, u16::from_le_bytes([d[12], d[13]])))
    };
    LAYOUT.iter().any(|&(table, _, _)| {
        (0..QUEUE as usize).any(|i| {
            desc(table as usize + 16 * i)
                .is_some_and(|(addr, flags)| flags & 0x6 != 0 && addr < 0x800)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    let env = env();
    let Ok(ram) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]) else {
        return;
    };
    let image = &image[..image.len().min(RAM)];
    if ram.write_slice(image, GuestAddress(0)).is_err() {
        return;
    }
    // The used rings belong to the device: they start at index 0.
    for &(_, _, used) in &LAYOUT {
        if ram.write_obj(0u32, GuestAddress(used)).is_err() {
            return;
        }
    }
    let mem = DeviceMemory::new(ram, VhostIommu::new(16), false, ());
    let mut vrings = Vec::new();
    for &(desc, avail, used) in &LAYOUT {
        let Ok(mut v) = Vring::new(256) else { return };
        if v.set_num(QUEUE).is_err() || v.set_addresses(desc, avail, used).is_err() {
            return;
        }
        v.set_event_idx(flags & 2 != 0);
        v.set_enabled(true);
        if v.start(&mem).is_err() {
            return;
        }
        vrings.push(v);
    }
    let Ok(hybrid) = env.hybrid.try_clone() else {
        return;
    };
    let Ok(wake) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let router = Arc::new(SiblingRouter::default());
    let sibling = router.register(3, Vec::new(), Arc::new(wake));
    let cfg = DeviceConfig {
        guest_cid: 3,
        uds_path: env.dir.join("v"),
        buf_alloc: 64 * 1024,
        max_connections: 8,
        connect_timeout: Duration::from_millis(10),
        shutdown_timeout: Duration::from_millis(10),
        connect_line_timeout: Duration::from_millis(10),
        ok_reply: OkReply::GuestPort,
    };
    // No event registry: host sockets cannot be watched (and the REQUESTs here find no
    // listener anyway).
    let mut device = VsockDevice::new(cfg, hybrid, router, sibling);
    device.set_seqpacket(flags & 1 != 0);
    device.set_running(true);
    let avail_idx =
        |m: &DeviceMemory, at: u64| m.read_obj::<u16>(GuestAddress(at + 2)).unwrap_or(0);
    let tx_avail = avail_idx(&mem, LAYOUT[1].1);
    let mut rings = Rings {
        mem: &mem,
        vrings: &mut vrings,
    };
    for _ in 0..2 {
        device.process_tx(&mut rings);
        device.process_rx(&mut rings);
        device.process_event(&mut rings);
    }
    let tx_used = avail_idx(&mem, LAYOUT[1].2);
    if !writes_into_rings(image) {
        assert!(
            tx_used <= tx_avail,
            "tx used index {tx_used} passed the avail index {tx_avail}"
        );
    }
    device.reset();
});
