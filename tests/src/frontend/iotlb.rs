//! The frontend side of IOTLB translation: `vhost_iotlb_msg` encoding and a QEMU-like session
//! with `VIRTIO_F_ACCESS_PLATFORM` negotiated and ring addresses sent as IOVAs.
//!
//! Identity IOVAs are used (IOVA = guest-physical address), so the guest driver needs no change;
//! the device's IOTLB still starts empty and every access must be mapped first.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::FrontendReq;

use super::guest_memory::GuestMemory;
use super::vhost_user_client::*;

pub const IOTLB_MISS: u8 = 1;
pub const IOTLB_UPDATE: u8 = 2;
pub const IOTLB_INVALIDATE: u8 = 3;
pub const PERM_RO: u8 = 1;
pub const PERM_WO: u8 = 2;
pub const PERM_RW: u8 = 3;

/// `struct vhost_iotlb_msg` (32 bytes, native order).
pub fn iotlb_msg(iova: u64, size: u64, uaddr: u64, perm: u8, kind: u8) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    m[0..8].copy_from_slice(&iova.to_ne_bytes());
    m[8..16].copy_from_slice(&size.to_ne_bytes());
    m[16..24].copy_from_slice(&uaddr.to_ne_bytes());
    m[24] = perm;
    m[25] = kind;
    m
}

/// Sends an IOTLB_MSG and returns its (always present) u64 reply.
pub fn send_iotlb(c: &mut VhostUserClient, msg: &[u8]) -> io::Result<u64> {
    c.request_bytes(FrontendReq::IOTLB_MSG, msg, &[], true)?
        .ok_or_else(|| io::Error::other("IOTLB_MSG without a reply"))
}

/// UPDATEs mapping all of `mem` read-write at identity IOVAs (a warm IOTLB).
pub fn map_all(c: &mut VhostUserClient, mem: &GuestMemory, perm: u8) -> io::Result<()> {
    for r in mem.regions() {
        let status = send_iotlb(
            c,
            &iotlb_msg(r.gpa, r.size, r.frontend_va(), perm, IOTLB_UPDATE),
        )?;
        if status != 0 {
            return Err(io::Error::other(format!(
                "UPDATE of region {:#x} refused ({status})",
                r.gpa
            )));
        }
    }
    Ok(())
}

/// Guest-physical address of a frontend virtual address.
pub fn gpa_of(mem: &GuestMemory, va: u64) -> Option<u64> {
    mem.regions()
        .iter()
        .find(|r| va >= r.frontend_va() && va < r.frontend_va() + r.size)
        .map(|r| r.gpa + (va - r.frontend_va()))
}

/// `v` with its ring addresses as IOVAs (identity: IOVA = guest-physical address).
pub fn with_iovas(mem: &GuestMemory, v: &VringSetup) -> io::Result<VringSetup> {
    let conv =
        |va| gpa_of(mem, va).ok_or_else(|| io::Error::other(format!("{va:#x} is not guest RAM")));
    let mut iova = *v;
    iova.desc_va = conv(v.desc_va)?;
    iova.avail_va = conv(v.avail_va)?;
    iova.used_va = conv(v.used_va)?;
    Ok(iova)
}

fn ok(what: &str, r: Option<u64>) -> io::Result<()> {
    match r {
        Some(0) | None => Ok(()),
        Some(v) => Err(io::Error::other(format!("{what} acked with {v:#x}"))),
    }
}

/// A QEMU-like translated session: REPLY_ACK and BACKEND_REQ, bit 33 negotiated, ring IOVAs,
/// NEED_REPLY everywhere. With `warm`, all RAM is mapped before the rings start (no misses);
/// `err` becomes the tx queue's error eventfd.
pub fn handshake_translated(
    c: &mut VhostUserClient,
    mem: &GuestMemory,
    vrings: &[VringSetup],
    err: Option<RawFd>,
    warm: bool,
) -> io::Result<Negotiated> {
    let mut n = Negotiated {
        offered_features: c.get_features()?,
        offered_protocol_features: c.get_protocol_features()?,
        ..Default::default()
    };
    let needed = PF_BACKEND_REQ | PF_REPLY_ACK;
    if n.offered_protocol_features & needed != needed || n.offered_features & F_ACCESS_PLATFORM == 0
    {
        return Err(io::Error::other(
            "the backend does not offer IOTLB translation",
        ));
    }
    ok(
        "SET_PROTOCOL_FEATURES",
        c.set_protocol_features(n.offered_protocol_features, false)?,
    )?;
    ok("SET_BACKEND_REQ_FD", c.set_backend_req_fd(true)?)?;
    n.features = F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES | F_ACCESS_PLATFORM;
    ok("SET_FEATURES", c.set_features(n.features, true)?)?;
    ok("SET_MEM_TABLE", c.set_mem_table(mem, true)?)?;
    if warm {
        map_all(c, mem, PERM_RW)?;
    }
    for v in vrings {
        let iova = with_iovas(mem, v)?;
        ok(
            "SET_VRING_NUM",
            c.set_vring_num(v.index, v.size as u32, true)?,
        )?;
        ok("SET_VRING_BASE", c.set_vring_base(v.index, 0, true)?)?;
        ok("SET_VRING_ADDR", c.set_vring_addr(&iova, true)?)?;
        if v.index == 1 {
            if let Some(e) = err {
                ok(
                    "SET_VRING_ERR",
                    c.set_vring_err(1, Some(e.as_raw_fd()), true)?,
                )?;
            }
        }
        ok(
            "SET_VRING_KICK",
            c.set_vring_kick(v.index, Some(v.kick), true)?,
        )?;
        ok(
            "SET_VRING_CALL",
            c.set_vring_call(v.index, Some(v.call), true)?,
        )?;
        ok("SET_VRING_ENABLE", c.set_vring_enable(v.index, true, true)?)?;
    }
    n.protocol_features = n.offered_protocol_features;
    Ok(n)
}
