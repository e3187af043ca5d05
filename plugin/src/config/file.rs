//! `--config FILE`: the VMs as a `PluginConfig` protobuf message (`proto/protos/config.proto`),
//! written as protobuf JSON (`{"vms": [{"guestCid": 3, "socket": "...", "udsPath": "..."}]}`) or
//! in binary form.
//!
//! Compatibility rules of the control plane apply: zero or absent means the key's default,
//! enums' UNSPECIFIED means the default, and a `required_features` bit this build does not know
//! is refused rather than ignored. Every VM is then validated like one from the command line.

use std::path::{Path, PathBuf};

use vsock_plugin_ipc::proto::config::{
    IotlbPolicy as PbIotlb, OkReply as PbOkReply, PluginConfig, Toggle as PbToggle,
    VmConfig as PbVm,
};

use super::{defaults, IotlbMode, OkReply, Toggle, VmConfig};

/// Feature bits of `PluginConfig`/`VmConfig.required_features` this build implements (none yet).
pub const SUPPORTED_CONFIG_FEATURES: u64 = 0;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{0}: not a PluginConfig message: {1}")]
    Parse(String, String),
    #[error("{path}: required_features has bits this build does not support: {bits:#x}")]
    Unsupported { path: String, bits: u64 },
    #[error("{0}: no VMs")]
    Empty(String),
}

/// Reads and converts `path`; the VMs still need [`VmConfig::validate`].
pub fn load(path: &Path) -> Result<Vec<VmConfig>, FileError> {
    let name = path.display().to_string();
    let bytes = read_capped(path).map_err(|e| FileError::Read(name.clone(), e))?;
    let parsed: PluginConfig = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let text =
            String::from_utf8(bytes).map_err(|e| FileError::Parse(name.clone(), e.to_string()))?;
        protobuf_json_mapping::parse_from_str(&text)
            .map_err(|e| FileError::Parse(name.clone(), e.to_string()))?
    } else {
        vsock_plugin_ipc::proto::decode(&bytes)
            .map_err(|e| FileError::Parse(name.clone(), e.to_string()))?
    };
    let unknown = parsed.required_features & !SUPPORTED_CONFIG_FEATURES;
    if unknown != 0 {
        return Err(FileError::Unsupported {
            path: name,
            bits: unknown,
        });
    }
    if parsed.vms.is_empty() {
        return Err(FileError::Empty(name));
    }
    if parsed.vms.len() > super::MAX_VMS {
        return Err(FileError::Parse(
            name,
            format!("{} VMs: at most {}", parsed.vms.len(), super::MAX_VMS),
        ));
    }
    parsed.vms.iter().map(|vm| convert(&name, vm)).collect()
}

/// Reads at most [`super::MAX_CONFIG_FILE_BYTES`]; a larger (or endless, `/dev/zero`) file is
/// refused without reading on.
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cap = super::MAX_CONFIG_FILE_BYTES;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    Ok(bytes)
}

fn or<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() {
        default
    } else {
        v
    }
}

fn convert(name: &str, vm: &PbVm) -> Result<VmConfig, FileError> {
    let unknown = vm.required_features & !SUPPORTED_CONFIG_FEATURES;
    if unknown != 0 {
        return Err(FileError::Unsupported {
            path: name.to_string(),
            bits: unknown,
        });
    }
    let bad = |what: &str, v: i32| {
        FileError::Parse(name.to_string(), format!("unknown {what} value {v}"))
    };
    let queue_size =
        u16::try_from(or(vm.queue_size, defaults::QUEUE_SIZE as u32)).map_err(|_| {
            FileError::Parse(
                name.to_string(),
                format!("queue_size {} is too large", vm.queue_size),
            )
        })?;
    Ok(VmConfig {
        guest_cid: vm.guest_cid,
        socket: (!vm.socket.is_empty()).then(|| PathBuf::from(&vm.socket)),
        socket_fd: vm.socket_fd,
        uds_path: PathBuf::from(&vm.uds_path),
        tx_buffer_size: or(vm.tx_buffer_size, defaults::TX_BUFFER_SIZE),
        queue_size,
        groups: if vm.groups.is_empty() {
            defaults::groups()
        } else {
            vm.groups.clone()
        },
        max_connections: or(vm.max_connections, defaults::MAX_CONNECTIONS),
        connect_timeout_ms: or(vm.connect_timeout_ms, defaults::CONNECT_TIMEOUT_MS),
        shutdown_timeout_ms: or(vm.shutdown_timeout_ms, defaults::SHUTDOWN_TIMEOUT_MS),
        connect_line_timeout_ms: or(
            vm.connect_line_timeout_ms,
            defaults::CONNECT_LINE_TIMEOUT_MS,
        ),
        ok_reply: match vm.ok_reply.enum_value() {
            Ok(PbOkReply::OK_REPLY_HOST_PORT) => OkReply::HostPort,
            Ok(_) => OkReply::GuestPort,
            Err(v) => return Err(bad("ok_reply", v)),
        },
        seqpacket: match vm.seqpacket.enum_value() {
            Ok(PbToggle::TOGGLE_OFF) => Toggle::Off,
            Ok(_) => Toggle::On,
            Err(v) => return Err(bad("seqpacket", v)),
        },
        access_platform: vm.access_platform,
        iotlb: match vm.iotlb.enum_value() {
            Ok(PbIotlb::IOTLB_POLICY_REQUIRED) => IotlbMode::Required,
            Ok(PbIotlb::IOTLB_POLICY_AUTO) => IotlbMode::Auto,
            Ok(_) => IotlbMode::Off,
            Err(v) => return Err(bad("iotlb", v)),
        },
        iotlb_miss_timeout_ms: or(vm.iotlb_miss_timeout_ms, defaults::IOTLB_MISS_TIMEOUT_MS),
        iotlb_max_entries: or(vm.iotlb_max_entries, defaults::IOTLB_MAX_ENTRIES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn json_with_defaults_and_binary_forms() {
        let p = write(
            "a.json",
            br#"{"vms": [{"guestCid": 3, "socket": "/run/a.vhost", "udsPath": "/run/a.vsock"},
                        {"guestCid": 4, "socket": "/run/b.vhost", "udsPath": "/run/b.vsock",
                         "groups": ["g1", "g2"], "iotlb": "IOTLB_POLICY_REQUIRED", "okReply": "OK_REPLY_HOST_PORT",
                         "seqpacket": "TOGGLE_OFF", "txBufferSize": 131072}]}"#,
        );
        let vms = load(&p).unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].tx_buffer_size, 262144, "zero/absent = default");
        assert_eq!(vms[0].groups, vec!["default".to_string()]);
        assert_eq!(
            (vms[0].iotlb, vms[0].seqpacket),
            (IotlbMode::Off, Toggle::On)
        );
        assert_eq!(vms[1].groups, vec!["g1".to_string(), "g2".to_string()]);
        assert_eq!(
            (vms[1].iotlb, vms[1].ok_reply, vms[1].seqpacket),
            (IotlbMode::Required, OkReply::HostPort, Toggle::Off)
        );
        assert_eq!(vms[1].tx_buffer_size, 131072);
        vms[0].validate().unwrap();
        if crate::iotlb::TRANSLATION_BUILT {
            vms[1].validate().unwrap();
        } else {
            assert_eq!(
                vms[1].validate(),
                Err(crate::config::ConfigError::IotlbNotBuilt("required"))
            );
        }
        // The same first VM in binary form.
        let mut pc = PluginConfig::new();
        let mut vm = PbVm::new();
        vm.guest_cid = 3;
        vm.socket = "/run/a.vhost".into();
        vm.uds_path = "/run/a.vsock".into();
        pc.vms.push(vm);
        let bin = write("a.pb", &vsock_plugin_ipc::proto::encode(&pc));
        assert_eq!(load(&bin).unwrap()[0], vms[0]);
    }

    #[test]
    fn refuses_unknown_required_features_malformed_and_empty() {
        let p = write(
            "r.json",
            br#"{"requiredFeatures": 4, "vms": [{"guestCid": 3}]}"#,
        );
        assert!(matches!(
            load(&p),
            Err(FileError::Unsupported { bits: 4, .. })
        ));
        let p = write(
            "v.json",
            br#"{"vms": [{"guestCid": 3, "requiredFeatures": 1}]}"#,
        );
        assert!(matches!(
            load(&p),
            Err(FileError::Unsupported { bits: 1, .. })
        ));
        let p = write("m.json", br#"{"vms": [{"guestCid": "x"}]}"#);
        assert!(matches!(load(&p), Err(FileError::Parse(..))));
        let p = write("e.json", br#"{}"#);
        assert!(matches!(load(&p), Err(FileError::Empty(_))));
        let p = write("n.json", br#"{"vms": [{"guestCid": 3, "iotlb": 9}]}"#);
        assert_eq!(
            load(&p),
            Err(FileError::Parse(
                p.display().to_string(),
                "unknown iotlb value 9".into()
            ))
        );
        let p = write("g.bin", &[0xff, 0xff, 0xff]);
        assert!(matches!(load(&p), Err(FileError::Parse(..))));
        assert!(matches!(
            load(Path::new("/nonexistent/x.json")),
            Err(FileError::Read(..))
        ));
        assert_eq!(
            load(Path::new("/dev/zero")),
            Err(FileError::Read(
                "/dev/zero".into(),
                "larger than 1048576 bytes".into()
            ))
        );
    }
}
