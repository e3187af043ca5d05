//! Configuration of the devices this process serves: one [`VmConfig`] per VM.
//!
//! Like crosvm's CLI, each device is one serde struct (`deny_unknown_fields`, kebab-case keys), filled
//! either from a repeatable `--vm key=value,...` option or from the single-VM flags
//! (`--guest-cid`, `--socket`, `--uds-path`, ...) that vhost-device-vsock and Cuttlefish use.
//! Parsing lives in [`cli`] and [`keyvalue`]; validation of the values in [`VmConfig::validate`].

pub mod cli;
pub mod keyvalue;

use std::path::PathBuf;

use serde::Deserialize;

/// Guest CIDs 0, 1 and 2 are reserved (hypervisor, local, host); `u32::MAX` is `VMADDR_CID_ANY`.
pub const FIRST_GUEST_CID: u64 = 3;
/// Largest virtqueue size the vhost-user spec (and crosvm's default `max-queue-size`) uses.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// How the hybrid listener answers a host `CONNECT <port>` line.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OkReply {
    /// `OK <guest port>\n`: what Cuttlefish and vhost-device-vsock expect.
    #[default]
    GuestPort,
    /// `OK <host-side local port>\n`: Firecracker's form (local ports from 2^30).
    HostPort,
}

/// Whether the device offers `VIRTIO_VSOCK_F_SEQPACKET`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Toggle {
    #[default]
    On,
    Off,
}

/// One VM served by this process: the vhost-user socket its VMM connects to, and the hybrid
/// Unix-socket namespace its connections map to on the host.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmConfig {
    /// The guest's context id (>= 3, < 2^32 - 1), reported through the config space.
    pub guest_cid: u64,
    /// Path of the vhost-user socket to listen on (the VMM is the client).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// An inherited fd: a listening socket, or an already-connected vhost-user stream.
    /// Also accepted as `socket=/proc/self/fd/N`.
    #[serde(default)]
    pub socket_fd: Option<i32>,
    /// Host side: guest→host port P connects to `<uds-path>_P`; host→guest clients connect to
    /// `<uds-path>` and send `connect P\n`.
    pub uds_path: PathBuf,
    /// Per-connection buffer (bytes) advertised to the guest as `buf_alloc`.
    #[serde(default = "defaults::tx_buffer_size")]
    pub tx_buffer_size: u32,
    /// Largest queue size accepted in SET_VRING_NUM (a power of two, <= 32768).
    #[serde(default = "defaults::queue_size")]
    pub queue_size: u16,
    /// Sibling groups, `a+b`: guests sharing a group reach each other by CID.
    #[serde(default = "defaults::groups", deserialize_with = "keyvalue::plus_list")]
    pub groups: Vec<String>,
    /// Most concurrent connections for this VM; further ones are refused with RST.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// A connection not established (or not closed after a shutdown) within this time is reset.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u32,
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u32,
    /// A host client on `<uds-path>` that sends no complete CONNECT line within this time is dropped.
    #[serde(default = "defaults::connect_line_timeout_ms")]
    pub connect_line_timeout_ms: u32,
    /// Reply form for host-initiated connections.
    #[serde(default)]
    pub ok_reply: OkReply,
    /// Offer SEQPACKET sockets to the guest.
    #[serde(default)]
    pub seqpacket: Toggle,
}

pub mod defaults {
    pub fn tx_buffer_size() -> u32 {
        64 * 1024
    }
    pub fn queue_size() -> u16 {
        super::MAX_QUEUE_SIZE
    }
    pub fn groups() -> Vec<String> {
        vec!["default".to_string()]
    }
    pub fn max_connections() -> u32 {
        4096
    }
    pub fn connect_timeout_ms() -> u32 {
        2000
    }
    pub fn shutdown_timeout_ms() -> u32 {
        2000
    }
    pub fn connect_line_timeout_ms() -> u32 {
        5000
    }
}
