//! Saved device states (DEVICE_STATE loads) through `snapshot::format::decode`, with the restoring
//! VM's CID and the frontend's features taken from the input too.
//! Input: `cid (u64 le) ‖ features (u64 le) ‖ state bytes`. Each input is decoded twice: as given
//! (the seal check must refuse almost everything) and re-sealed with a correct CRC, so the fuzzer
//! reaches the protobuf parser and the field checks behind the seal.
//! Invariants: no panic; an accepted state names the restoring CID and the features the frontend
//! set, stays inside the documented bounds, and re-encodes to bytes that decode to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsock_plugin::snapshot::format::{decode, encode, seal, MAX_SAVED_CONNECTIONS};

fn check(bytes: &[u8], cid: u64, features: u64) {
    let Ok(s) = decode(bytes, cid, features) else {
        return;
    };
    assert_eq!(s.guest_cid, cid, "accepted a state for another CID");
    assert_eq!(s.virtio_features, features, "accepted other features");
    assert!(s.device.connections.len() <= MAX_SAVED_CONNECTIONS);
    let p = s.device.next_local_port;
    assert!(
        p == 0 || (1u32 << 30..1u32 << 31).contains(&p),
        "local port {p}"
    );
    let again = encode(&s, 0);
    let back = decode(&again, cid, features)
        .unwrap_or_else(|e| panic!("re-encoding of {s:?} does not load: {e}"));
    assert_eq!(back, s, "re-encoding changed the state");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, state) = data.split_at(16);
    // Infallible: `head` is exactly 16 bytes, so both halves are 8-byte slices.
    let cid = u64::from_le_bytes(head[..8].try_into().unwrap());
    let features = u64::from_le_bytes(head[8..].try_into().unwrap());
    check(state, cid, features);
    let mut sealed = state.to_vec();
    seal(&mut sealed);
    check(&sealed, cid, features);
});
