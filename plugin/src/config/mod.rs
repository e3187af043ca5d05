//! Configuration of the devices this process serves: one [`VmConfig`] per VM.
//!
//! A VM comes from the command line ([`cli`]: vhost-device-vsock's single-VM flags
//! `--guest-cid`, `--socket`, `--uds-path`, ..., or a repeatable `--vm key=value,...`) or from a
//! file ([`file`]). Every default is a constant in [`defaults`]; the values are checked by
//! [`VmConfig::validate`].

pub mod cli;
pub mod file;
pub(crate) mod namespace;
pub mod vm_args;
mod vm_spec;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Guest CIDs 0, 1 and 2 are reserved (hypervisor, local, host); `u32::MAX` is `VMADDR_CID_ANY`.
pub const FIRST_GUEST_CID: u64 = 3;
/// Largest virtqueue size the vhost-user spec (and crosvm's default `max-queue-size`) uses.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest guest CID: `u32::MAX` (`VMADDR_CID_ANY`) is excluded.
pub const LAST_GUEST_CID: u64 = 0xFFFF_FFFE;
/// Longest Unix socket path, in bytes: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_UNIX_PATH_LEN: usize = 107;
/// The longest suffix appended to `uds-path` for guest→host connections: `_<port>`, port < 2^32.
pub const UDS_PORT_SUFFIX_MAX: &str = "_4294967295";
/// Longest `uds-path`, so that `<uds-path>_4294967295` still fits in a `sockaddr_un` (96 bytes).
pub const MAX_UDS_PATH_LEN: usize = MAX_UNIX_PATH_LEN - UDS_PORT_SUFFIX_MAX.len();
/// Bounds of `tx-buffer-size` (bytes): at least one page, at most 1 GiB.
pub const MIN_TX_BUFFER_SIZE: u32 = 4096;
pub const MAX_TX_BUFFER_SIZE: u32 = 1 << 30;
/// Bounds of `max-connections`: each connection holds at least one host fd.
pub const MAX_MAX_CONNECTIONS: u32 = 1 << 20;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 64;
/// Most groups one VM may list.
pub const MAX_GROUPS: usize = 64;
/// Most VMs one process serves (each holds at least four fds before any connection).
pub const MAX_VMS: usize = 512;
/// Largest `--config` file, in bytes.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// A setting with a fixed set of names (`--ok-reply guest-port`, `seqpacket=off`, ...).
pub trait Choice: Copy + 'static {
    /// Every value with its name on the command line.
    const NAMES: &'static [(&'static str, Self)];
}

/// The name of a [`Choice`] value.
pub fn choice_name<T: Choice + PartialEq>(v: T) -> &'static str {
    T::NAMES
        .iter()
        .find(|(_, c)| *c == v)
        .map_or("?", |(name, _)| name)
}

/// How the hybrid listener answers a host `CONNECT <port>` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OkReply {
    /// `OK <guest port>\n`: what Cuttlefish and vhost-device-vsock expect.
    GuestPort,
    /// `OK <host-side local port>\n`: Firecracker's form (local ports from 2^30).
    HostPort,
}

impl Choice for OkReply {
    const NAMES: &'static [(&'static str, OkReply)] = &[
        ("guest-port", OkReply::GuestPort),
        ("host-port", OkReply::HostPort),
    ];
}

/// Whether the device offers `VIRTIO_VSOCK_F_SEQPACKET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    On,
    Off,
}

impl Choice for Toggle {
    const NAMES: &'static [(&'static str, Toggle)] = &[("on", Toggle::On), ("off", Toggle::Off)];
}

/// The IOTLB mode is the policy's own type (`iotlb::policy`); the command line names it here.
pub use crate::iotlb::policy::IotlbMode;

impl Choice for IotlbMode {
    const NAMES: &'static [(&'static str, IotlbMode)] = &[
        ("off", IotlbMode::Off),
        ("required", IotlbMode::Required),
        ("auto", IotlbMode::Auto),
    ];
}

/// One VM served by this process: the vhost-user socket its VMM connects to, and the hybrid
/// Unix-socket namespace its connections map to on the host. Keys on the command line are the
/// field names in kebab case (`guest-cid`, `uds-path`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The guest's context id (>= 3, < 2^32 - 1), reported through the config space.
    pub guest_cid: u64,
    /// Path of the vhost-user socket to listen on (the VMM is the client).
    pub socket: Option<PathBuf>,
    /// An inherited fd: a listening socket, or an already-connected vhost-user stream.
    /// Also accepted as `socket=/proc/self/fd/N`.
    pub socket_fd: Option<i32>,
    /// Host side: guest→host port P connects to `<uds-path>_P`; host→guest clients connect to
    /// `<uds-path>` and send `connect P\n`.
    pub uds_path: PathBuf,
    /// Per-connection buffer (bytes) advertised to the guest as `buf_alloc`.
    pub tx_buffer_size: u32,
    /// Largest queue size accepted in SET_VRING_NUM (a power of two, <= 32768).
    pub queue_size: u16,
    /// Sibling groups, `a+b`: guests sharing a group reach each other by CID.
    pub groups: Vec<String>,
    /// Most concurrent connections for this VM; further ones are refused with RST.
    pub max_connections: u32,
    /// A connection not established (or not closed after a shutdown) within this time is reset.
    pub connect_timeout_ms: u32,
    pub shutdown_timeout_ms: u32,
    /// A host client on `<uds-path>` that sends no complete CONNECT line within this time is dropped.
    pub connect_line_timeout_ms: u32,
    /// Reply form for host-initiated connections.
    pub ok_reply: OkReply,
    /// Offer SEQPACKET sockets to the guest.
    pub seqpacket: Toggle,
    /// Offer `VIRTIO_F_ACCESS_PLATFORM` (the guest uses the DMA API); never enables translation.
    pub access_platform: bool,
    /// IOTLB translation (see [`IotlbMode`]).
    pub iotlb: IotlbMode,
    pub iotlb_miss_timeout_ms: u32,
    pub iotlb_max_entries: u32,
}

impl VmConfig {
    /// A VM with these required values and every other setting at its default.
    pub fn with_defaults(
        guest_cid: u64,
        socket: Option<PathBuf>,
        socket_fd: Option<i32>,
        uds_path: PathBuf,
    ) -> VmConfig {
        VmConfig {
            guest_cid,
            socket,
            socket_fd,
            uds_path,
            tx_buffer_size: defaults::TX_BUFFER_SIZE,
            queue_size: defaults::QUEUE_SIZE,
            groups: defaults::groups(),
            max_connections: defaults::MAX_CONNECTIONS,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            shutdown_timeout_ms: defaults::SHUTDOWN_TIMEOUT_MS,
            connect_line_timeout_ms: defaults::CONNECT_LINE_TIMEOUT_MS,
            ok_reply: defaults::OK_REPLY,
            seqpacket: defaults::SEQPACKET,
            access_platform: defaults::ACCESS_PLATFORM,
            iotlb: defaults::IOTLB,
            iotlb_miss_timeout_ms: defaults::IOTLB_MISS_TIMEOUT_MS,
            iotlb_max_entries: defaults::IOTLB_MAX_ENTRIES,
        }
    }
}

/// A [`VmConfig`] value that is out of bounds or inconsistent; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("guest-cid {0} is out of range: must be 3..=4294967294 (0-2 are reserved, 4294967295 is VMADDR_CID_ANY)")]
    GuestCid(u64),
    #[error("one of socket or socket-fd is required")]
    NoSocket,
    #[error("socket and socket-fd are mutually exclusive")]
    SocketAndFd,
    #[error("socket-fd {0} is not a valid file descriptor")]
    SocketFd(i32),
    #[error("{key} is empty")]
    EmptyPath { key: &'static str },
    #[error("{key} {path:?} contains a NUL byte")]
    NulInPath { key: &'static str, path: PathBuf },
    #[error("socket {path:?} is too long ({len} bytes; a Unix socket path holds at most 107)")]
    SocketTooLong { path: PathBuf, len: usize },
    #[error("uds-path {path:?} is too long ({len} bytes; at most 96, so that <uds-path>_4294967295 fits in a Unix socket address)")]
    UdsPathTooLong { path: PathBuf, len: usize },
    #[error("socket and uds-path are the same path {0:?}")]
    SocketIsUdsPath(PathBuf),
    #[error("queue-size {0} is invalid: must be a power of two in 1..=32768")]
    QueueSize(u16),
    #[error("tx-buffer-size {0} is out of range: must be 4096..=1073741824")]
    TxBufferSize(u32),
    #[error("max-connections {0} is out of range: must be 1..=1048576")]
    MaxConnections(u32),
    #[error("{key} must be at least 1 ms")]
    ZeroTimeout { key: &'static str },
    #[error("groups is empty: give at least one group name")]
    NoGroups,
    #[error("group name {0:?} is invalid: use 1 to 64 characters from [A-Za-z0-9_-]")]
    GroupName(String),
    #[error("group {0:?} is listed twice in groups")]
    DuplicateGroup(String),
    #[error("groups lists {0} groups: at most 64")]
    TooManyGroups(usize),
    #[error("iotlb={0}: {msg}", msg = crate::iotlb::NOT_BUILT)]
    IotlbNotBuilt(&'static str),
}

impl VmConfig {
    /// Checks each value against its bounds:
    ///
    /// - `guest-cid`: 3..=0xFFFF_FFFE (0-2 are reserved, `u32::MAX` is `VMADDR_CID_ANY`);
    /// - exactly one of `socket` / `socket-fd`; `socket-fd` >= 0; `socket` non-empty, without NUL
    ///   and at most 107 bytes (a `sockaddr_un` path);
    /// - `uds-path`: non-empty, without NUL, at most 96 bytes so that `<uds-path>_4294967295` fits
    ///   in a `sockaddr_un`, and not the same path as `socket`;
    /// - `queue-size`: a power of two in 1..=32768;
    /// - `tx-buffer-size`: 4096..=1 GiB;
    /// - `max-connections`: 1..=2^20;
    /// - `connect-timeout-ms`, `shutdown-timeout-ms`, `connect-line-timeout-ms`: at least 1;
    /// - `groups`: 1 to 64 of them; names of 1 to 64 characters from `[A-Za-z0-9_-]`, no repeats;
    /// - `iotlb`: `off` unless this build translates (`iotlb` cargo feature).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(FIRST_GUEST_CID..=LAST_GUEST_CID).contains(&self.guest_cid) {
            return Err(ConfigError::GuestCid(self.guest_cid));
        }
        match (&self.socket, self.socket_fd) {
            (None, None) => return Err(ConfigError::NoSocket),
            (Some(_), Some(_)) => return Err(ConfigError::SocketAndFd),
            (None, Some(fd)) if fd < 0 => return Err(ConfigError::SocketFd(fd)),
            (None, Some(_)) => {}
            (Some(path), None) => {
                let len = check_path("socket", path)?;
                if len > MAX_UNIX_PATH_LEN {
                    return Err(ConfigError::SocketTooLong {
                        path: path.clone(),
                        len,
                    });
                }
            }
        }
        let len = check_path("uds-path", &self.uds_path)?;
        if len > MAX_UDS_PATH_LEN {
            return Err(ConfigError::UdsPathTooLong {
                path: self.uds_path.clone(),
                len,
            });
        }
        if self.socket.as_deref() == Some(self.uds_path.as_path()) {
            return Err(ConfigError::SocketIsUdsPath(self.uds_path.clone()));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::QueueSize(self.queue_size));
        }
        if !(MIN_TX_BUFFER_SIZE..=MAX_TX_BUFFER_SIZE).contains(&self.tx_buffer_size) {
            return Err(ConfigError::TxBufferSize(self.tx_buffer_size));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::MaxConnections(self.max_connections));
        }
        for (key, ms) in [
            ("connect-timeout-ms", self.connect_timeout_ms),
            ("shutdown-timeout-ms", self.shutdown_timeout_ms),
            ("connect-line-timeout-ms", self.connect_line_timeout_ms),
        ] {
            if ms == 0 {
                return Err(ConfigError::ZeroTimeout { key });
            }
        }
        if self.groups.is_empty() {
            return Err(ConfigError::NoGroups);
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(ConfigError::TooManyGroups(self.groups.len()));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.groups.len());
        for name in &self.groups {
            let valid = !name.is_empty()
                && name.len() <= MAX_GROUP_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(ConfigError::GroupName(name.clone()));
            }
            if !seen.insert(name.as_str()) {
                return Err(ConfigError::DuplicateGroup(name.clone()));
            }
        }
        if !crate::iotlb::TRANSLATION_BUILT {
            match self.iotlb {
                IotlbMode::Off => {}
                IotlbMode::Required => return Err(ConfigError::IotlbNotBuilt("required")),
                IotlbMode::Auto => return Err(ConfigError::IotlbNotBuilt("auto")),
            }
        }
        Ok(())
    }
}

/// Checks that a socket path is non-empty and NUL-free; returns its length in bytes.
fn check_path(key: &'static str, path: &Path) -> Result<usize, ConfigError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(ConfigError::EmptyPath { key });
    }
    if bytes.contains(&0) {
        return Err(ConfigError::NulInPath {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes.len())
}

/// Every default of a [`VmConfig`], defined once: the command line (and its `--help`), the
/// config file and README.md's option table (checked by a test) follow these.
pub mod defaults {
    use super::{IotlbMode, OkReply, Toggle};

    /// The single-VM form's CID (`--vm` must name one).
    pub const GUEST_CID: u64 = super::FIRST_GUEST_CID;
    /// Linux's own default socket buffer: with less, a bulk sender stalls on credit every
    /// 64 KiB (measured: g2h throughput 2.4x, CPU/GiB 0.35x with 256 KiB). Worst-case memory
    /// held for host readers that stop reading: max-connections x this.
    pub const TX_BUFFER_SIZE: u32 = 256 * 1024;
    pub const QUEUE_SIZE: u16 = super::MAX_QUEUE_SIZE;
    pub const GROUP: &str = "default";
    /// With the default buffer, at most 256 MiB held for stalled host readers.
    pub const MAX_CONNECTIONS: u32 = 1024;
    pub const CONNECT_TIMEOUT_MS: u32 = 2000;
    pub const SHUTDOWN_TIMEOUT_MS: u32 = 2000;
    pub const CONNECT_LINE_TIMEOUT_MS: u32 = 5000;
    pub const OK_REPLY: OkReply = OkReply::GuestPort;
    pub const SEQPACKET: Toggle = Toggle::On;
    pub const ACCESS_PLATFORM: bool = false;
    pub const IOTLB: IotlbMode = IotlbMode::Off;
    pub const IOTLB_MISS_TIMEOUT_MS: u32 = 5000;
    pub const IOTLB_MAX_ENTRIES: u32 = 2048;

    pub fn groups() -> Vec<String> {
        vec![GROUP.to_string()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig::with_defaults(
            3,
            Some(PathBuf::from("/run/v.vhost")),
            None,
            PathBuf::from("/run/v.vsock"),
        )
    }

    fn err(vm: VmConfig) -> String {
        match vm.validate() {
            Ok(()) => panic!("{vm:?} validated"),
            Err(e) => e.to_string(),
        }
    }

    /// A build without translation refuses the translating modes when the configuration is read,
    /// naming the reason; `access-platform` alone (bit 33, never translation) still works.
    #[test]
    fn translating_modes_need_a_translating_build() {
        for (mode, name) in [(IotlbMode::Required, "required"), (IotlbMode::Auto, "auto")] {
            let vm = VmConfig {
                iotlb: mode,
                ..base()
            };
            if crate::iotlb::TRANSLATION_BUILT {
                assert_eq!(vm.validate(), Ok(()));
            } else {
                let e = err(vm);
                assert!(
                    e.starts_with(&format!(
                        "iotlb={name}: this vsock-plugin build has no IOTLB"
                    )),
                    "{e}"
                );
            }
        }
        let vm = VmConfig {
            access_platform: true,
            ..base()
        };
        assert_eq!(vm.validate(), Ok(()));
    }

    #[test]
    fn defaults_parse_and_validate() {
        let vm = vm_spec::parse("guest-cid=3,socket=/run/v.vhost,uds-path=/run/v.vsock").unwrap();
        assert_eq!(vm, base());
        assert_eq!(vm.validate(), Ok(()));
    }

    #[test]
    fn bounds_accepted() {
        let long_uds = format!("/{}", "u".repeat(MAX_UDS_PATH_LEN - 1));
        let long_socket = format!("/{}", "s".repeat(MAX_UNIX_PATH_LEN - 1));
        for vm in [
            VmConfig {
                guest_cid: LAST_GUEST_CID,
                ..base()
            },
            VmConfig {
                socket: None,
                socket_fd: Some(0),
                ..base()
            },
            VmConfig {
                socket: Some(long_socket.into()),
                ..base()
            },
            VmConfig {
                uds_path: long_uds.into(),
                ..base()
            },
            VmConfig {
                queue_size: 1,
                ..base()
            },
            VmConfig {
                tx_buffer_size: MIN_TX_BUFFER_SIZE,
                ..base()
            },
            VmConfig {
                tx_buffer_size: MAX_TX_BUFFER_SIZE,
                ..base()
            },
            VmConfig {
                max_connections: 1,
                ..base()
            },
            VmConfig {
                groups: vec!["a-Z_09".into(), "b".into()],
                ..base()
            },
        ] {
            assert_eq!(vm.validate(), Ok(()), "{vm:?}");
        }
    }

    #[test]
    fn errors() {
        let cid =
            "out of range: must be 3..=4294967294 (0-2 are reserved, 4294967295 is VMADDR_CID_ANY)";
        assert_eq!(
            err(VmConfig {
                guest_cid: 2,
                ..base()
            }),
            format!("guest-cid 2 is {cid}")
        );
        assert_eq!(
            err(VmConfig {
                guest_cid: 1 << 32,
                ..base()
            }),
            format!("guest-cid 4294967296 is {cid}")
        );
        assert_eq!(
            err(VmConfig {
                socket: None,
                ..base()
            }),
            "one of socket or socket-fd is required"
        );
        assert_eq!(
            err(VmConfig {
                socket_fd: Some(3),
                ..base()
            }),
            "socket and socket-fd are mutually exclusive"
        );
        assert_eq!(
            err(VmConfig {
                socket: None,
                socket_fd: Some(-1),
                ..base()
            }),
            "socket-fd -1 is not a valid file descriptor"
        );
        assert_eq!(
            err(VmConfig {
                socket: Some("".into()),
                ..base()
            }),
            "socket is empty"
        );
        assert_eq!(
            err(VmConfig {
                uds_path: "".into(),
                ..base()
            }),
            "uds-path is empty"
        );
        assert_eq!(
            err(VmConfig {
                uds_path: "/a\0b".into(),
                ..base()
            }),
            "uds-path \"/a\\0b\" contains a NUL byte"
        );
        let long_socket = format!("/{}", "s".repeat(MAX_UNIX_PATH_LEN));
        assert_eq!(
            err(VmConfig { socket: Some(long_socket.clone().into()), ..base() }),
            format!("socket {long_socket:?} is too long (108 bytes; a Unix socket path holds at most 107)")
        );
        let long_uds = format!("/{}", "u".repeat(MAX_UDS_PATH_LEN));
        assert_eq!(
            err(VmConfig {
                uds_path: long_uds.clone().into(),
                ..base()
            }),
            format!(
                "uds-path {long_uds:?} is too long (97 bytes; at most 96, so that \
                 <uds-path>_4294967295 fits in a Unix socket address)"
            )
        );
        assert_eq!(
            err(VmConfig {
                uds_path: "/run/v.vhost".into(),
                ..base()
            }),
            "socket and uds-path are the same path \"/run/v.vhost\""
        );
        for q in [0, 3, 100, 65535] {
            assert_eq!(
                err(VmConfig {
                    queue_size: q,
                    ..base()
                }),
                format!("queue-size {q} is invalid: must be a power of two in 1..=32768")
            );
        }
        assert_eq!(
            err(VmConfig {
                tx_buffer_size: 4095,
                ..base()
            }),
            "tx-buffer-size 4095 is out of range: must be 4096..=1073741824"
        );
        assert_eq!(
            err(VmConfig {
                tx_buffer_size: (1 << 30) + 1,
                ..base()
            }),
            "tx-buffer-size 1073741825 is out of range: must be 4096..=1073741824"
        );
        assert_eq!(
            err(VmConfig {
                max_connections: 0,
                ..base()
            }),
            "max-connections 0 is out of range: must be 1..=1048576"
        );
        assert_eq!(
            err(VmConfig {
                shutdown_timeout_ms: 0,
                ..base()
            }),
            "shutdown-timeout-ms must be at least 1 ms"
        );
        assert_eq!(
            err(VmConfig {
                groups: vec![],
                ..base()
            }),
            "groups is empty: give at least one group name"
        );
        assert_eq!(
            err(VmConfig {
                groups: vec!["".into()],
                ..base()
            }),
            "group name \"\" is invalid: use 1 to 64 characters from [A-Za-z0-9_-]"
        );
        assert_eq!(
            err(VmConfig {
                groups: vec!["g/1".into()],
                ..base()
            }),
            "group name \"g/1\" is invalid: use 1 to 64 characters from [A-Za-z0-9_-]"
        );
        assert_eq!(
            err(VmConfig {
                groups: vec!["g".into(), "h".into(), "g".into()],
                ..base()
            }),
            "group \"g\" is listed twice in groups"
        );
    }
}
