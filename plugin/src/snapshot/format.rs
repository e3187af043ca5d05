//! The saved state's bytes: a `DeviceStateSnapshot` protobuf (`proto/protos/device_state.proto`)
//! followed by a seal, and the checks a load makes before anything is applied.
//!
//! Layout: `protobuf(fields 1..15) ‖ 0xa5 0x06 ‖ crc32(le)` — the seal is field 100 (`fixed32`)
//! of the same message, always the last 6 bytes, holding the CRC-32 (IEEE) of every byte before
//! it. A protobuf cut at a field boundary still parses; the seal is what makes a truncated state
//! (or random bytes) a refusal instead of a state with fields silently missing.
//!
//! Refused, with nothing applied: more than [`MAX_STATE_BYTES`]; a missing or wrong seal
//! (truncated, garbage); bytes that do not parse; `format_version` other than 1; any
//! `required_features` bit (this loader implements none); a guest CID other than the restoring
//! VM's; virtio features other than the ones the restoring frontend set; a local port outside the
//! allocator's range; more saved connections than [`MAX_SAVED_CONNECTIONS`]. Unknown fields are
//! ignored (optional by the compatibility rules).

use vsock_plugin_ipc::proto::device_state::{DeviceStateSnapshot, SavedConnection};

use crate::vsock::device::snapshot::{DeviceSnapshot, SavedConn};

/// The format this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Must-understand bits this loader implements (none yet).
pub const SUPPORTED_FEATURES: u64 = 0;
/// Largest state accepted (and produced). A state is a few hundred bytes plus 10-16 bytes per
/// open connection; 1 MiB bounds what a frontend can make the plugin buffer.
pub const MAX_STATE_BYTES: usize = 1 << 20;
/// Most saved connections accepted (beyond any `max-connections` a saving VM could have had
/// within the size cap).
pub const MAX_SAVED_CONNECTIONS: usize = 65536;
/// Field 100, wire type 5 (fixed32), as a varint: `(100 << 3) | 5 = 805`.
const SEAL_TAG: [u8; 2] = [0xa5, 0x06];
const SEAL_LEN: usize = SEAL_TAG.len() + 4;
const LOCAL_PORTS: std::ops::Range<u32> = (1 << 30)..(1 << 31);

/// Everything a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    pub guest_cid: u64,
    pub virtio_features: u64,
    pub protocol_features: u64,
    pub device: DeviceSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state of {0} bytes exceeds the {MAX_STATE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("state of {0} bytes is truncated or corrupt (seal missing or checksum wrong)")]
    BadSeal(usize),
    #[error("state does not parse: {0}")]
    Malformed(String),
    #[error("state format version {0} is not understood (this build reads {FORMAT_VERSION})")]
    UnknownVersion(u32),
    #[error("state requires features {0:#x} this build does not implement")]
    UnsupportedFeatures(u64),
    #[error("state is for guest CID {saved}, this VM is configured with CID {configured}")]
    WrongCid { saved: u64, configured: u64 },
    #[error(
        "state was saved with virtio features {saved:#x}, the frontend set {set:#x} before loading"
    )]
    FeaturesDiffer { saved: u64, set: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// The state's bytes. `padding` extra ignored bytes (tests only, see the .proto).
pub fn encode(s: &SavedState, padding: usize) -> Vec<u8> {
    let msg = DeviceStateSnapshot {
        format_version: FORMAT_VERSION,
        required_features: 0,
        guest_cid: s.guest_cid,
        virtio_features: s.virtio_features,
        protocol_features: s.protocol_features,
        transport_reset_owed: s.device.transport_reset_owed,
        next_local_port: s.device.next_local_port,
        generation: s.device.generation,
        connections: s
            .device
            .connections
            .iter()
            .map(|c| SavedConnection {
                guest_port: c.guest_port,
                host_port: c.host_port,
                host_initiated: c.host_initiated,
                ..Default::default()
            })
            .collect(),
        padding: vec![0x5a; padding],
        ..Default::default()
    };
    let mut bytes = vsock_plugin_ipc::proto::encode(&msg);
    seal(&mut bytes);
    bytes
}

/// Appends the seal field to a protobuf encoding.
pub fn seal(bytes: &mut Vec<u8>) {
    let crc = crc32(bytes);
    bytes.extend_from_slice(&SEAL_TAG);
    bytes.extend_from_slice(&crc.to_le_bytes());
}

/// Checks and decodes a state for a VM with `configured_cid` whose frontend set `features`.
pub fn decode(bytes: &[u8], configured_cid: u64, features: u64) -> Result<SavedState, StateError> {
    if bytes.len() > MAX_STATE_BYTES {
        return Err(StateError::TooLarge(bytes.len()));
    }
    let body_len = bytes
        .len()
        .checked_sub(SEAL_LEN)
        .ok_or(StateError::BadSeal(bytes.len()))?;
    let (body, tail) = bytes.split_at(body_len);
    let sealed = tail[..2] == SEAL_TAG && tail[2..] == crc32(body).to_le_bytes();
    if !sealed {
        return Err(StateError::BadSeal(bytes.len()));
    }
    let msg: DeviceStateSnapshot =
        vsock_plugin_ipc::proto::decode(body).map_err(|e| StateError::Malformed(e.to_string()))?;
    if msg.format_version != FORMAT_VERSION {
        return Err(StateError::UnknownVersion(msg.format_version));
    }
    let unknown = msg.required_features & !SUPPORTED_FEATURES;
    if unknown != 0 {
        return Err(StateError::UnsupportedFeatures(unknown));
    }
    if msg.guest_cid != configured_cid {
        return Err(StateError::WrongCid {
            saved: msg.guest_cid,
            configured: configured_cid,
        });
    }
    if msg.virtio_features != features {
        return Err(StateError::FeaturesDiffer {
            saved: msg.virtio_features,
            set: features,
        });
    }
    if msg.next_local_port != 0 && !LOCAL_PORTS.contains(&msg.next_local_port) {
        return Err(StateError::Invalid(format!(
            "next local port {} is outside {}..{}",
            msg.next_local_port, LOCAL_PORTS.start, LOCAL_PORTS.end
        )));
    }
    if msg.connections.len() > MAX_SAVED_CONNECTIONS {
        return Err(StateError::Invalid(format!(
            "{} saved connections (at most {MAX_SAVED_CONNECTIONS})",
            msg.connections.len()
        )));
    }
    Ok(SavedState {
        guest_cid: msg.guest_cid,
        virtio_features: msg.virtio_features,
        protocol_features: msg.protocol_features,
        device: DeviceSnapshot {
            next_local_port: msg.next_local_port,
            transport_reset_owed: msg.transport_reset_owed,
            generation: msg.generation,
            connections: msg
                .connections
                .iter()
                .map(|c| SavedConn {
                    guest_port: c.guest_port,
                    host_port: c.host_port,
                    host_initiated: c.host_initiated,
                })
                .collect(),
        },
    })
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;
    const FEATURES: u64 = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 1);

    fn state() -> SavedState {
        SavedState {
            guest_cid: CID,
            virtio_features: FEATURES,
            protocol_features: 0x8_0209,
            device: DeviceSnapshot {
                next_local_port: (1 << 30) + 7,
                transport_reset_owed: false,
                generation: 2,
                connections: vec![SavedConn {
                    guest_port: 1025,
                    host_port: 5000,
                    host_initiated: false,
                }],
            },
        }
    }

    /// The v1 golden state (proto/tests/golden/device_state_v1.bin, checked against this copy
    /// by proto/tests/compat.rs), written by hand field by field, the CRC from zlib.
    fn golden_v1() -> Vec<u8> {
        [
            &[0x08, 0x01][..],                                 // 1 format_version = 1
            &[0x18, 0x03],                                     // 3 guest_cid = 3
            &[0x20, 0x82, 0x80, 0x80, 0x80, 0x16],             // 4 virtio_features = 0x1_6000_0002
            &[0x28, 0x89, 0x84, 0x20],                         // 5 protocol_features = 0x8_0209
            &[0x38, 0x87, 0x80, 0x80, 0x80, 0x04],             // 7 next_local_port = 2^30 + 7
            &[0x40, 0x02],                                     // 8 generation = 2
            &[0x4a, 0x06, 0x08, 0x81, 0x08, 0x10, 0x88, 0x27], // 9 {guest 1025, host 5000}
            &[0xa5, 0x06, 0xc9, 0x1b, 0xd8, 0x90],             // 100 seal = crc32 (le)
        ]
        .concat()
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&state(), 0);
        assert_eq!(decode(&bytes, CID, FEATURES), Ok(state()));
        let padded = encode(&state(), 100_000);
        assert!(padded.len() > 100_000);
        assert_eq!(decode(&padded, CID, FEATURES), Ok(state()));
    }

    /// The v1 golden bytes (hand-written, independent of this encoder) load, and this encoder
    /// still produces exactly them.
    #[test]
    fn golden_v1_loads() {
        let golden = golden_v1();
        let s = decode(&golden, CID, FEATURES).expect("v1 state loads");
        assert_eq!(s, state());
        assert_eq!(encode(&state(), 0), golden, "v1 encoding changed");
    }

    fn resealed(msg: DeviceStateSnapshot) -> Vec<u8> {
        let mut b = vsock_plugin_ipc::proto::encode(&msg);
        seal(&mut b);
        b
    }

    fn v1_message() -> DeviceStateSnapshot {
        let golden = golden_v1();
        vsock_plugin_ipc::proto::decode(&golden[..golden.len() - SEAL_LEN]).unwrap()
    }

    #[test]
    fn unknown_must_understand_bit_is_refused() {
        let mut m = v1_message();
        m.required_features = 1 << 5;
        assert_eq!(
            decode(&resealed(m), CID, FEATURES),
            Err(StateError::UnsupportedFeatures(1 << 5))
        );
    }

    /// A newer writer's optional field (number 42, unknown here) is ignored.
    #[test]
    fn unknown_optional_field_is_ignored() {
        let mut body = golden_v1();
        body.truncate(body.len() - SEAL_LEN);
        body.extend_from_slice(&[0xd2, 0x02, 0x03, b'n', b'e', b'w']); // field 42, bytes "new"
        seal(&mut body);
        assert_eq!(decode(&body, CID, FEATURES), Ok(state()));
    }

    #[test]
    fn refusals() {
        let good = encode(&state(), 0);
        for cut in [1, 6, 7, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(
                    decode(&good[..good.len() - cut], CID, FEATURES),
                    Err(StateError::BadSeal(_))
                ),
                "cut {cut}"
            );
        }
        let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(matches!(
            decode(&garbage, CID, FEATURES),
            Err(StateError::BadSeal(_))
        ));
        // Sealed but not a message (an unterminated varint).
        let mut junk = vec![0x08, 0xff];
        seal(&mut junk);
        assert!(matches!(
            decode(&junk, CID, FEATURES),
            Err(StateError::Malformed(_))
        ));
        assert_eq!(
            decode(&vec![0; MAX_STATE_BYTES + 1], CID, FEATURES),
            Err(StateError::TooLarge(MAX_STATE_BYTES + 1))
        );
        assert_eq!(
            decode(&good, 4, FEATURES),
            Err(StateError::WrongCid {
                saved: 3,
                configured: 4
            })
        );
        assert!(matches!(
            decode(&good, CID, FEATURES & !2),
            Err(StateError::FeaturesDiffer { .. })
        ));
        let mut m = v1_message();
        m.format_version = 2;
        assert_eq!(
            decode(&resealed(m), CID, FEATURES),
            Err(StateError::UnknownVersion(2))
        );
        let mut m = v1_message();
        m.next_local_port = 5;
        assert!(matches!(
            decode(&resealed(m), CID, FEATURES),
            Err(StateError::Invalid(_))
        ));
    }
}
