//! IOTLB_MSG payloads (`struct vhost_iotlb_msg`): validation of what the frontend sends and the
//! MISS the backend sends. Pure codec, built with or without IOTLB translation.

use vm_memory::Permissions;

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

/// A raw IOTLB_MSG payload, for tests.
#[cfg(test)]
pub(crate) fn test_message(iova: u64, size: u64, uaddr: u64, perm: u8, kind: u8) -> Vec<u8> {
    let mut m = vec![0u8; MSG_SIZE];
    m[0..8].copy_from_slice(&iova.to_ne_bytes());
    m[8..16].copy_from_slice(&size.to_ne_bytes());
    m[16..24].copy_from_slice(&uaddr.to_ne_bytes());
    m[24] = perm;
    m[25] = kind;
    m
}

#[cfg(test)]
mod tests {
    use super::test_message as msg;
    use super::*;

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
}
