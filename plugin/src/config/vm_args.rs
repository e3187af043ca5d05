//! The per-VM options, defined once as clap arguments: vhost-device-vsock's single-VM flags
//! (`--guest-cid 3 --socket ...`) and the keys of `--vm guest-cid=3,socket=...` are the same
//! arguments, with the same value parsers and the defaults of [`defaults`] (which `--help` shows).
//!
//! Error messages are one line naming the option (`--queue-size`) or the key (`"queue-size"`):
//! [`message`] renders a clap error in those terms.

use std::path::PathBuf;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command};

use super::{choice_name, defaults, Choice, IotlbMode, OkReply, Toggle, VmConfig};

/// The options of one VM. A value the user did not give keeps the default shown in `--help`.
#[derive(Args, Clone, Debug)]
pub(super) struct VmArgs {
    /// The guest's CID, 3..=4294967294 (required in --vm)
    #[arg(long, value_name = "CID", value_parser = int::<u64>, default_value_t = defaults::GUEST_CID, allow_hyphen_values = true)]
    guest_cid: u64,
    /// vhost-user socket path to listen on; /proc/self/fd/N or /dev/fd/N means an inherited fd
    #[arg(long, value_name = "PATH", value_parser = path(), allow_hyphen_values = true)]
    socket: Option<PathBuf>,
    /// An inherited fd: a listening socket or an already-connected vhost-user stream (exactly one
    /// of socket / socket-fd)
    #[arg(long, value_name = "FD", value_parser = int::<i32>, allow_hyphen_values = true)]
    socket_fd: Option<i32>,
    /// Hybrid vsock base path: guest->host port P connects to PATH_P; host clients connect to PATH
    /// and send `connect P` (required)
    #[arg(long, value_name = "PATH", value_parser = path(), allow_hyphen_values = true)]
    uds_path: Option<PathBuf>,
    /// Per-connection buffer advertised to the guest (buf_alloc), 4096..=1073741824
    #[arg(long, value_name = "BYTES", value_parser = int::<u32>, default_value_t = defaults::TX_BUFFER_SIZE, allow_hyphen_values = true)]
    tx_buffer_size: u32,
    /// Largest virtqueue size accepted, a power of two <= 32768
    #[arg(long, value_name = "N", value_parser = int::<u16>, default_value_t = defaults::QUEUE_SIZE, allow_hyphen_values = true)]
    queue_size: u16,
    /// Guests sharing a group reach each other by CID
    #[arg(long, value_name = "A+B", value_parser = plus_list, default_value = defaults::GROUP, allow_hyphen_values = true)]
    groups: Groups,
    /// Connections per VM; more are refused with RST
    #[arg(long, value_name = "N", value_parser = int::<u32>, default_value_t = defaults::MAX_CONNECTIONS, allow_hyphen_values = true)]
    max_connections: u32,
    /// Reset a connection stuck connecting
    #[arg(long, value_name = "MS", value_parser = int::<u32>, default_value_t = defaults::CONNECT_TIMEOUT_MS, allow_hyphen_values = true)]
    connect_timeout_ms: u32,
    /// Reset a connection stuck closing
    #[arg(long, value_name = "MS", value_parser = int::<u32>, default_value_t = defaults::SHUTDOWN_TIMEOUT_MS, allow_hyphen_values = true)]
    shutdown_timeout_ms: u32,
    /// Drop a host client that sends no CONNECT line
    #[arg(long, value_name = "MS", value_parser = int::<u32>, default_value_t = defaults::CONNECT_LINE_TIMEOUT_MS, allow_hyphen_values = true)]
    connect_line_timeout_ms: u32,
    /// Reply `OK <guest port>` (Cuttlefish) or Firecracker's `OK <local port>`
    #[arg(long, value_name = "guest-port|host-port", value_parser = choice::<OkReply>, default_value = choice_name(defaults::OK_REPLY), allow_hyphen_values = true)]
    ok_reply: OkReply,
    /// Offer VIRTIO_VSOCK_F_SEQPACKET (alone: on)
    #[arg(long, value_name = "on|off", value_parser = choice::<Toggle>, num_args = 0..=1, default_missing_value = "on", default_value = choice_name(defaults::SEQPACKET))]
    seqpacket: Toggle,
    /// Offer VIRTIO_F_ACCESS_PLATFORM (bit 33): the guest uses the DMA API. Never turns on
    /// address translation (alone: true)
    #[arg(long, value_name = "true|false", value_parser = boolean, num_args = 0..=1, action = ArgAction::Set, default_missing_value = "true", default_value_t = defaults::ACCESS_PLATFORM)]
    access_platform: bool,
    /// IOTLB translation of ring and buffer addresses (IOVAs). required: offer bit 33 +
    /// BACKEND_REQ, refuse a session without bit 33; auto: translate iff bit 33 is negotiated
    /// (trusts the frontend)
    #[arg(long, value_name = "off|required|auto", value_parser = choice::<IotlbMode>, default_value = choice_name(defaults::IOTLB), allow_hyphen_values = true)]
    iotlb: IotlbMode,
    /// A MISS unanswered this long stops the queue
    #[arg(long, value_name = "MS", value_parser = int::<u32>, default_value_t = defaults::IOTLB_MISS_TIMEOUT_MS, allow_hyphen_values = true)]
    iotlb_miss_timeout_ms: u32,
    /// IOTLB entries kept; the oldest is evicted
    #[arg(long, value_name = "N", value_parser = int::<u32>, default_value_t = defaults::IOTLB_MAX_ENTRIES, allow_hyphen_values = true)]
    iotlb_max_entries: u32,
}

/// `a+b`: a list of group names.
#[derive(Clone, Debug)]
struct Groups(Vec<String>);

/// How errors name a setting: `--queue-size` (single-VM flags) or key `"queue-size"` (`--vm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    Flags,
    Keys,
}

impl VmArgs {
    /// The VM, once its required settings are there. `matches` tells which values were given;
    /// in the [`Form::Keys`] form the guest CID must be.
    pub(super) fn into_config(self, matches: &ArgMatches, form: Form) -> Result<VmConfig, String> {
        let missing = |key: &str| match form {
            Form::Flags => format!("missing required option --{key}"),
            Form::Keys => format!("missing required key {key:?}"),
        };
        if form == Form::Keys && !given(matches, "guest_cid") {
            return Err(missing("guest-cid"));
        }
        let uds_path = self.uds_path.ok_or_else(|| missing("uds-path"))?;
        Ok(VmConfig {
            guest_cid: self.guest_cid,
            socket: self.socket,
            socket_fd: self.socket_fd,
            uds_path,
            tx_buffer_size: self.tx_buffer_size,
            queue_size: self.queue_size,
            groups: self.groups.0,
            max_connections: self.max_connections,
            connect_timeout_ms: self.connect_timeout_ms,
            shutdown_timeout_ms: self.shutdown_timeout_ms,
            connect_line_timeout_ms: self.connect_line_timeout_ms,
            ok_reply: self.ok_reply,
            seqpacket: self.seqpacket,
            access_platform: self.access_platform,
            iotlb: self.iotlb,
            iotlb_miss_timeout_ms: self.iotlb_miss_timeout_ms,
            iotlb_max_entries: self.iotlb_max_entries,
        })
    }
}

/// The VM options' clap arguments, in declaration order.
pub(super) fn vm_arguments() -> Vec<clap::Arg> {
    VmArgs::augment_args(Command::new("vm"))
        .get_arguments()
        .cloned()
        .collect()
}

/// The keys (long names) of the VM options, in declaration order.
pub fn keys() -> Vec<String> {
    vm_arguments()
        .iter()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// Each VM option's key with its default as `--help` shows it (`None`: no default).
pub fn key_defaults() -> Vec<(String, Option<String>)> {
    vm_arguments()
        .iter()
        .filter_map(|a| {
            let default = a
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((a.get_long()?.to_string(), default))
        })
        .collect()
}

/// The first VM option given on the command line (by position), as `--key`.
pub(super) fn first_given(matches: &ArgMatches) -> Option<String> {
    vm_arguments()
        .iter()
        .filter(|a| given(matches, a.get_id().as_str()))
        .filter_map(|a| Some((matches.index_of(a.get_id().as_str())?, a.get_long()?)))
        .min()
        .map(|(_, long)| format!("--{long}"))
}

fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// The argument a clap error is about, as `--name` (clap shows `--name <VALUE>`).
fn error_arg(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind) {
        Some(ContextValue::String(s)) => s.split([' ', '=']).next().map(str::to_string),
        _ => None,
    }
}

fn error_value(e: &clap::Error) -> Option<&str> {
    match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => Some(s),
        _ => None,
    }
}

/// One line for a clap error, naming the option (`Form::Flags`) or `--vm` key (`Form::Keys`).
/// `is_vm_key` tells the VM options (whose value errors read `invalid value ... for ...`) from the
/// process options (whose value parsers word the whole message).
pub(super) fn message(e: &clap::Error, form: Form) -> String {
    let arg = error_arg(e, ContextKind::InvalidArg).unwrap_or_default();
    let key = arg.trim_start_matches('-').to_string();
    let problem = std::error::Error::source(e).map(|s| s.to_string());
    match (e.kind(), form) {
        (ErrorKind::UnknownArgument, Form::Keys) => {
            format!("unknown key {key:?} (valid keys: {})", keys().join(", "))
        }
        (ErrorKind::UnknownArgument, Form::Flags) if arg.starts_with('-') && arg != "-" => {
            format!("unknown option {arg:?} (try --help)")
        }
        (ErrorKind::UnknownArgument, Form::Flags) => {
            format!("unexpected argument {arg:?} (try --help)")
        }
        (ErrorKind::InvalidValue, _) if error_value(e) == Some("") => match form {
            Form::Flags => format!("option {arg} needs a value"),
            Form::Keys => format!("key {key:?} needs a value ({key}=...)"),
        },
        (ErrorKind::ArgumentConflict, _)
            if error_arg(e, ContextKind::PriorArg).as_deref() == Some(arg.as_str()) =>
        {
            match form {
                Form::Flags => format!("option {arg} given more than once"),
                Form::Keys => format!("duplicate key {key:?}"),
            }
        }
        (ErrorKind::TooManyValues, _) if !arg.is_empty() => {
            format!("option {arg} takes no value")
        }
        (ErrorKind::ValueValidation, _) => {
            let value = error_value(e).unwrap_or_default();
            let problem = problem.unwrap_or_default();
            let is_vm_key = keys().contains(&key);
            match form {
                Form::Keys => format!("invalid value {value:?} for key {key:?}: {problem}"),
                Form::Flags if is_vm_key => {
                    format!("invalid value {value:?} for {arg}: {problem}")
                }
                Form::Flags => format!("{arg}: {problem}"),
            }
        }
        _ => vsock_plugin_ipc::ctl::clap_error_line(e),
    }
}

// Value parsers. Each error is the problem alone; [`message`] adds the value and the option.

/// Bounds and wording for the integer parsers.
pub(super) trait Integer: TryFrom<i128> + std::fmt::Display + Copy {
    const MIN: Self;
    const MAX: Self;
    const WHAT: &'static str;
}

macro_rules! integer {
    ($($t:ty => $what:expr),*) => {$(
        impl Integer for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            const WHAT: &'static str = $what;
        }
    )*};
}
integer!(u16 => "an unsigned integer", u32 => "an unsigned integer", u64 => "an unsigned integer", i32 => "an integer");

/// A decimal integer of type `T`, telling "malformed" from "out of range".
fn int<T: Integer>(s: &str) -> Result<T, String> {
    let out_of_range = || format!("out of range (expected {}..={})", T::MIN, T::MAX);
    match s.parse::<i128>() {
        Ok(n) => T::try_from(n).map_err(|_| out_of_range()),
        Err(e)
            if matches!(
                e.kind(),
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
            ) =>
        {
            Err(out_of_range())
        }
        Err(_) => Err(format!("expected {}", T::WHAT)),
    }
}

/// A path, any bytes (empty is caught by [`VmConfig::validate`], naming the key).
fn path() -> impl TypedValueParser<Value = PathBuf> {
    OsStringValueParser::new().map(PathBuf::from)
}

/// `a+b+c`; empty names (`a++b`, `a+`, `+a`, ``) are refused.
fn plus_list(s: &str) -> Result<Groups, String> {
    let names: Vec<String> = s.split('+').map(str::to_string).collect();
    if names.iter().any(String::is_empty) {
        return Err("expected a '+'-separated list of non-empty names".into());
    }
    Ok(Groups(names))
}

fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn choice<T: Choice>(s: &str) -> Result<T, String> {
    T::NAMES
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = T::NAMES.iter().map(|(n, _)| *n).collect();
            format!("expected one of: {}", names.join(", "))
        })
}
