//! Wire compatibility of the control-plane protobufs: golden bytes, the append-only schema lock,
//! version skew (older/newer peers), UNSPECIFIED = old default, and a no-panic decode sweep.
//!
//! Regenerate fixtures after an *intended* addition with `UPDATE_GOLDEN=1 cargo test -p
//! vsock-plugin-proto`; existing golden files must never change (old bytes stay decodable).

use std::path::PathBuf;

use protobuf::{EnumOrUnknown, Message, MessageFull};
use vsock_plugin_proto::config::{IotlbPolicy, OkReply, PluginConfig, Toggle, VmConfig};
use vsock_plugin_proto::control::*;
use vsock_plugin_proto::testing::*;
use vsock_plugin_proto::{
    check_required_features, decode, encode, features, PayloadError, MAX_PAYLOAD_LEN,
};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.bin"))
}

/// `msg` encodes to exactly the checked-in bytes, and those bytes decode to `msg`.
fn golden<M: MessageFull + PartialEq + std::fmt::Debug>(name: &str, msg: &M) {
    let bytes = encode(msg);
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes, want, "encoding of {name} changed");
    let back: M = decode(&want).unwrap();
    assert_eq!(&back, msg);
}

fn vm_config() -> VmConfig {
    VmConfig {
        required_features: 0,
        guest_cid: 3,
        socket: "/run/cf/vhost_user_vsock.sock".into(),
        uds_path: "/run/cf/vsock_3".into(),
        tx_buffer_size: 262144,
        queue_size: 256,
        groups: vec!["default".into(), "pair".into()],
        max_connections: 1024,
        connect_timeout_ms: 2000,
        shutdown_timeout_ms: 3000,
        connect_line_timeout_ms: 5000,
        ok_reply: OkReply::OK_REPLY_HOST_PORT.into(),
        seqpacket: Toggle::TOGGLE_OFF.into(),
        access_platform: true,
        iotlb: IotlbPolicy::IOTLB_POLICY_AUTO.into(),
        iotlb_miss_timeout_ms: 100,
        iotlb_max_entries: 4096,
        socket_fd: None,
        ..Default::default()
    }
}

#[test]
fn golden_vm_config() {
    golden("vm_config", &vm_config());
    golden(
        "plugin_config",
        &PluginConfig {
            vms: vec![
                vm_config(),
                VmConfig {
                    guest_cid: 4,
                    socket_fd: Some(3),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
}

#[test]
fn golden_small_messages_inline() {
    // Small enough to read: field 1 varint 6 / field 2 (guest_cid) len... spelled out.
    let req = ListConnectionsRequest {
        required_features: features::CONNECTION_FILTER,
        guest_cid: Some(3),
        ..Default::default()
    };
    assert_eq!(encode(&req), [0x08, 0x02, 0x10, 0x03]);
    golden("list_connections_request", &req);
    let rule = PolicyRule {
        guest_cid: Some(3),
        host_port: Some(22),
        action: PolicyAction::POLICY_ACTION_DENY.into(),
        reason: "no".into(),
        ..Default::default()
    };
    let set = SetPolicyRequest {
        rules: vec![rule],
        replace_all: true,
        ..Default::default()
    };
    assert_eq!(
        encode(&set),
        [0x12, 0x0a, 0x08, 0x03, 0x10, 0x16, 0x18, 0x02, 0x2a, 0x02, b'n', b'o', 0x18, 0x01]
    );
    golden("set_policy_request", &set);
    // The empty request is zero bytes: the all-defaults request every method accepts.
    assert!(encode(&StatusRequest::new()).is_empty());
}

#[test]
fn golden_replies_and_events() {
    let mut caps = Capabilities {
        protocol_major: 1,
        protocol_minor: 0,
        supported_features: features::CONNECTION_FILTER | features::EVENTS,
        server_version: "0.1.0".into(),
        ..Default::default()
    };
    let mut c = Capability::new();
    c.cap = Some(capability::Cap::Policy(PolicyCapability {
        version: 1,
        max_rules: 4096,
        ..Default::default()
    }));
    caps.caps.push(c);
    golden("capabilities", &caps);

    let status = Status {
        uptime_ms: 61000,
        vms: vec![VmStatus {
            guest_cid: 3,
            state: DeviceState::DEVICE_STATE_RUNNING.into(),
            negotiated_features: 0x1_0000_0003,
            protocol_features: 0x8000,
            iotlb_mode: IotlbMode::IOTLB_MODE_TRANSLATING.into(),
            connections: 2,
            config: Some(vm_config()).into(),
            ..Default::default()
        }],
        version: "0.1.0".into(),
        ..Default::default()
    };
    golden("status", &status);

    let conns = ConnectionList {
        connections: vec![ConnectionInfo {
            guest_cid: 3,
            guest_port: 1024,
            host_port: 5000,
            state: ConnectionState::CONNECTION_STATE_ESTABLISHED.into(),
            host_initiated: true,
            bytes_from_guest: 100,
            bytes_to_guest: 200,
            buf_alloc: 262144,
            fwd_cnt: 100,
            peer_buf_alloc: 65536,
            peer_fwd_cnt: 200,
            route: RouteKind::ROUTE_KIND_BINDER_SERVICE.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    golden("connection_list", &conns);

    let metrics = Metrics {
        uptime_ms: 5,
        counters: vec![Counter {
            name: "rx_packets".into(),
            value: 42,
            guest_cid: 3,
            ..Default::default()
        }],
        ..Default::default()
    };
    golden("metrics", &metrics);

    let mut ev = Event {
        uptime_ms: 7,
        ..Default::default()
    };
    ev.set_connection_closed(ConnectionEvent {
        guest_cid: 3,
        guest_port: 1,
        host_port: 2,
        reason: "rst".into(),
        ..Default::default()
    });
    golden("event_connection_closed", &ev);
}

/// Every (message, field, number) and (enum, value, number) of the schema, as lock lines.
fn schema_lines() -> Vec<String> {
    let mut out = Vec::new();
    for file in [
        vsock_plugin_proto::config::file_descriptor(),
        vsock_plugin_proto::control::file_descriptor(),
        vsock_plugin_proto::device_state::file_descriptor(),
    ] {
        for m in file.messages() {
            for f in m.fields() {
                out.push(format!("{} {} = {}", m.full_name(), f.name(), f.number()));
            }
        }
        for e in file.enums() {
            for v in e.values() {
                out.push(format!("{} {} = {}", e.full_name(), v.name(), v.value()));
            }
        }
    }
    out
}

fn reserved(full_name: &str, number: i32) -> bool {
    for file in [
        vsock_plugin_proto::config::file_descriptor(),
        vsock_plugin_proto::control::file_descriptor(),
        vsock_plugin_proto::device_state::file_descriptor(),
    ] {
        if let Some(m) = file.messages().find(|m| m.full_name() == full_name) {
            return m
                .proto()
                .reserved_range
                .iter()
                .any(|r| (r.start()..r.end()).contains(&number));
        }
        if let Some(e) = file.enums().find(|e| e.full_name() == full_name) {
            return e
                .proto()
                .reserved_range
                .iter()
                .any(|r| (r.start()..=r.end()).contains(&number));
        }
    }
    false
}

/// Append-only schema: a locked field/value keeps its number, or its number is `reserved`.
/// New fields must be appended to `schema.lock` (UPDATE_GOLDEN=1 appends them).
#[test]
fn schema_is_append_only() {
    let lock_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    let current = schema_lines();
    for line in lock
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        if current.iter().any(|c| c == line) {
            continue;
        }
        let (name, number) = line.split_once(" = ").unwrap();
        let full = name.split(' ').next().unwrap();
        assert!(
            reserved(full, number.parse().unwrap()),
            "schema.lock: `{line}` changed or vanished without `reserved`"
        );
    }
    let new: Vec<&String> = current
        .iter()
        .filter(|c| !lock.lines().any(|l| l == c.as_str()))
        .collect();
    if !new.is_empty() && std::env::var_os("UPDATE_GOLDEN").is_some() {
        let mut s = lock.clone();
        if s.is_empty() {
            s.push_str("# Append-only lock of the control-plane protobuf schema (checked by tests/compat.rs).\n");
        }
        for l in &new {
            s.push_str(l);
            s.push('\n');
        }
        std::fs::write(&lock_path, s).unwrap();
        return;
    }
    assert!(
        new.is_empty(),
        "append to proto/schema.lock (UPDATE_GOLDEN=1): {new:#?}"
    );
}

#[test]
fn every_enum_starts_with_unspecified_zero() {
    for file in [
        vsock_plugin_proto::config::file_descriptor(),
        vsock_plugin_proto::control::file_descriptor(),
        vsock_plugin_proto::device_state::file_descriptor(),
    ] {
        for e in file.enums() {
            let first = e.values().next().unwrap();
            assert_eq!(first.value(), 0, "{}", e.full_name());
            assert!(
                first.name().ends_with("_UNSPECIFIED") || first.name() == "FEATURE_NONE",
                "{}: first value {} must be *_UNSPECIFIED",
                e.full_name(),
                first.name()
            );
        }
        // Every request message has required_features as field 1.
        for m in file
            .messages()
            .filter(|m| m.name().ends_with("Request") || m.name().ends_with("Config"))
        {
            let f = m
                .field_by_number(1)
                .unwrap_or_else(|| panic!("{} has no field 1", m.full_name()));
            assert_eq!(f.name(), "required_features", "{}", m.full_name());
        }
    }
}

// ---- skew ------------------------------------------------------------------------------------

#[test]
fn old_client_bytes_decode_with_old_defaults() {
    // A V0 client's policy (no limits field) is a valid new request.
    let v0 = SetPolicyRequestV0 {
        rules: vec![PolicyRuleV0 {
            host_port: Some(22),
            action: 2,
            reason: "x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let new: SetPolicyRequest = decode(&encode(&v0)).unwrap();
    assert_eq!(new.rules[0].host_port, Some(22));
    assert_eq!(new.rules[0].guest_cid, None);
    assert_eq!(
        new.rules[0].action.enum_value(),
        Ok(PolicyAction::POLICY_ACTION_DENY)
    );
    assert!(new.rules[0].limits.is_none());
    assert!(!new.replace_all);
    // A config that never heard of IOTLB: UNSPECIFIED = OFF, access_platform false, timeouts 0 (= default).
    let old_cfg = VmConfigNext {
        guest_cid: 5,
        uds_path: "/u".into(),
        ..Default::default()
    };
    let cfg: VmConfig = decode(&encode(&old_cfg)).unwrap();
    assert_eq!(
        cfg.iotlb.enum_value(),
        Ok(IotlbPolicy::IOTLB_POLICY_UNSPECIFIED)
    );
    assert_eq!(cfg.iotlb.value(), 0);
    assert_eq!(cfg.seqpacket.enum_value(), Ok(Toggle::TOGGLE_UNSPECIFIED));
    assert!(!cfg.access_platform);
    assert_eq!(
        (
            cfg.iotlb_miss_timeout_ms,
            cfg.iotlb_max_entries,
            cfg.tx_buffer_size
        ),
        (0, 0, 0)
    );
}

#[test]
fn new_server_bytes_decode_in_old_client() {
    let golden = std::fs::read(golden_path("connection_list")).unwrap();
    let old: ConnectionListV0 = decode(&golden).unwrap();
    assert_eq!(old.connections.len(), 1);
    let c = &old.connections[0];
    assert_eq!(
        (c.guest_cid, c.guest_port, c.host_port, c.state),
        (3, 1024, 5000, 2)
    );
    // What it did not know is kept as unknown fields, never acted on, and passed on intact
    // (rust-protobuf re-encodes unknown fields in hash order: equal content, not equal bytes).
    assert_eq!(c.special_fields.unknown_fields().iter().count(), 8);
    let relayed: ConnectionList = decode(&encode(&old)).unwrap();
    assert_eq!(relayed, decode::<ConnectionList>(&golden).unwrap());
}

#[test]
fn unknown_optional_field_is_ignored() {
    let next = ListConnectionsRequestNext {
        guest_cid: Some(4),
        include_recently_closed: true,
        ..Default::default()
    };
    let cur: ListConnectionsRequest = decode(&encode(&next)).unwrap();
    assert_eq!(cur.guest_cid, Some(4));
    assert_eq!(cur.required_features, 0);
    let cfg_next = VmConfigNext {
        guest_cid: 3,
        future_knob: 9,
        ..Default::default()
    };
    let cfg: VmConfig = decode(&encode(&cfg_next)).unwrap();
    assert_eq!(cfg.guest_cid, 3);
    assert_eq!(
        cfg.special_fields
            .unknown_fields()
            .iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        vec![100]
    );
}

#[test]
fn unknown_required_feature_is_rejected() {
    assert_eq!(check_required_features(0, 0), Ok(()));
    assert_eq!(
        check_required_features(features::EVENTS, features::ALL),
        Ok(())
    );
    assert_eq!(
        check_required_features(1 << 40 | features::EVENTS, features::ALL),
        Err(PayloadError::UnsupportedFeatures(1 << 40))
    );
    assert_eq!(
        check_required_features(features::POLICY_LIMITS, features::CONNECTION_FILTER)
            .unwrap_err()
            .to_string(),
        "unsupported required features 0x1"
    );
    // Unknown enum values survive decoding as numbers (consumers must refuse them explicitly).
    let bytes = [0x12, 0x02, 0x18, 0x09];
    let r: SetPolicyRequest = decode(&bytes).unwrap();
    assert_eq!(r.rules[0].action, EnumOrUnknown::from_i32(9));
    assert!(r.rules[0].action.enum_value().is_err());
}

// ---- malformed input -------------------------------------------------------------------------

/// xorshift64*, so the sweep is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn try_all(bytes: &[u8]) -> usize {
    let results = [
        decode::<VmConfig>(bytes).is_ok(),
        decode::<PluginConfig>(bytes).is_ok(),
        decode::<Capabilities>(bytes).is_ok(),
        decode::<Status>(bytes).is_ok(),
        decode::<ConnectionList>(bytes).is_ok(),
        decode::<Metrics>(bytes).is_ok(),
        decode::<SetPolicyRequest>(bytes).is_ok(),
        decode::<ListConnectionsRequest>(bytes).is_ok(),
        decode::<ExplainRouteRequest>(bytes).is_ok(),
        decode::<Event>(bytes).is_ok(),
    ];
    results.iter().filter(|ok| **ok).count()
}

#[test]
fn malformed_payloads_error_never_panic() {
    // Specific malformed encodings give a Malformed error.
    for bad in [
        &[0x08][..],
        &[0x12, 0x05, 0x01],
        &[0xff; 11],
        &[0x0f],
        &[0x12, 0x80, 0x80, 0x04, 0x08],
    ] {
        let r = decode::<Status>(bad);
        assert!(
            matches!(r, Err(PayloadError::Malformed(_))),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(
        decode::<Status>(&vec![0u8; MAX_PAYLOAD_LEN + 1]),
        Err(PayloadError::TooLong(MAX_PAYLOAD_LEN + 1))
    );
    // rust-protobuf 3.7.2 leniency (recorded, harmless): a length prefix of exactly 0xFFFFFFFF
    // is read as an empty embedded message instead of an error.
    let lenient = decode::<Status>(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap();
    assert_eq!(lenient.vms.len(), 1);
    assert_eq!(lenient.vms[0], VmStatus::new());
    // Every truncation of every golden file, and random mutations of them.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut decoded = 0;
    for entry in std::fs::read_dir(golden_path("x").parent().unwrap()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for n in 0..bytes.len() {
            decoded += try_all(&bytes[..n]);
        }
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..(rng.next() % 4 + 1) {
                if b.is_empty() {
                    break;
                }
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            decoded += try_all(&b);
        }
    }
    for _ in 0..3000 {
        let len = (rng.next() % 64) as usize;
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        decoded += try_all(&b);
    }
    // Some inputs happen to be valid; the point is that none panicked.
    assert!(decoded > 0);
}

/// F4 (fuzz finding, dependency bug): rust-protobuf 3.7.2 sizes a packed negative enum at 5
/// bytes but writes 10, so `IotlbCapability { policies: [-1] }` decoded while its re-encoding
/// failed. `decode` refuses negative values in repeated enum fields (packed or not, nested too),
/// so nothing accepted from a peer can break a later `encode`.
#[test]
fn negative_repeated_enum_values_are_refused() {
    // IotlbCapability: field 2, packed, one varint -1 (10 bytes).
    let packed: &[u8] = &[
        0x12, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    // The upstream bug, as it stands: the parser accepts the message; the writer emits a length
    // prefix of 5 followed by 10 bytes (a corrupt message).
    let raw = IotlbCapability::parse_from_bytes(packed).unwrap();
    assert_eq!(raw.policies[0].value(), -1);
    let mut corrupt = vec![0x12, 0x05];
    corrupt.extend_from_slice(&packed[2..]);
    assert_eq!(raw.write_to_bytes().unwrap(), corrupt);
    assert_eq!(
        decode::<IotlbCapability>(packed),
        Err(PayloadError::Invalid(
            "negative value in repeated enum field vsockplugin.IotlbCapability.policies".into()
        ))
    );
    // Unpacked encoding of the same value.
    let unpacked: &[u8] = &[
        0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert!(matches!(
        decode::<IotlbCapability>(unpacked),
        Err(PayloadError::Invalid(_))
    ));
    // Nested: Capabilities.caps[0].iotlb.policies.
    let mut nested = vec![0x22, 14, 0x12, 12];
    nested.extend_from_slice(packed);
    assert_eq!(
        decode::<Capabilities>(&nested),
        Err(PayloadError::Invalid(
            "negative value in repeated enum field vsockplugin.IotlbCapability.policies".into()
        ))
    );
    // Valid and unknown-but-positive values still decode and re-encode to the same bytes.
    let ok: &[u8] = &[0x12, 0x02, 0x01, 0x07];
    let m = decode::<IotlbCapability>(ok).unwrap();
    assert_eq!(encode(&m), ok);
}

/// The v1 device state (DEVICE_STATE snapshot) golden bytes: written by hand (the same bytes are
/// inline in plugin/src/snapshot/format.rs, whose tests load them); they stay decodable.
#[test]
fn golden_device_state_v1() {
    use vsock_plugin_proto::device_state::DeviceStateSnapshot;
    let bytes = std::fs::read(golden_path("device_state_v1")).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "080118032082808080162889842038878080800440024a06088108108827a506c91bd890"
    );
    let m: DeviceStateSnapshot = decode(&bytes).unwrap();
    assert_eq!(m.format_version, 1);
    assert_eq!(m.guest_cid, 3);
    assert_eq!(m.generation, 2);
    assert_eq!(m.next_local_port, (1 << 30) + 7);
    assert_eq!(m.connections.len(), 1);
    assert_eq!(m.seal, 0x90d8_1bc9);
}
