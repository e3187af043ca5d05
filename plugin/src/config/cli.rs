//! Command-line parsing: `--vm key=value,...` (repeatable) or vhost-device-vsock's single-VM flags.
//!
//! The single-VM flags are collected into a `key=value,...` string and parsed by the same
//! [`from_key_values`] as `--vm`, so [`VmConfig`] is the one source of truth for keys and defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::keyvalue::{from_key_values, KeyValueError};
use super::{ConfigError, VmConfig, FIRST_GUEST_CID};

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve these VMs (at least one, each validated, no shared CIDs, sockets or paths).
    Run(Vec<VmConfig>, crate::ProcessOptions),
    /// `vsock-plugin ctl …`: talk to a running plugin's control plane (arguments after `ctl`).
    Ctl(Vec<String>),
    /// `-h` / `--help`: print [`USAGE`].
    Help,
    /// `-V` / `--version`.
    Version,
}

/// Help text (`--help`), matching README.md's table.
pub const USAGE: &str = "\
Usage: vsock-plugin [OPTIONS]
       vsock-plugin --vm KEY=VALUE,... [--vm KEY=VALUE,...]...

A vhost-user virtio-vsock device for crosvm, QEMU and Cuttlefish.

One VM (vhost-device-vsock's syntax):
    vsock-plugin --guest-cid 3 --socket /run/vsock/vm3.vhost --uds-path /run/vsock/vm3.vsock
Several VMs (repeatable; keys are the same as the long options):
    vsock-plugin --vm guest-cid=3,socket=/run/vsock/a.vhost,uds-path=/run/vsock/a.vsock,groups=g1 \\
                 --vm guest-cid=4,socket=/run/vsock/b.vhost,uds-path=/run/vsock/b.vsock,groups=g1+g2

Options (each also as `--option=VALUE`; as `--vm` keys, without the dashes):
    --guest-cid CID                 the guest's CID, 3..=4294967294 [default: 3 in the single-VM form]
    --socket PATH                   vhost-user socket path to listen on; /proc/self/fd/N or
                                    /dev/fd/N means an inherited fd
    --socket-fd FD                  an inherited fd: a listening socket or an already-connected
                                    vhost-user stream (exactly one of socket / socket-fd)
    --uds-path PATH                 hybrid vsock base path: guest->host port P connects to
                                    PATH_P; host clients connect to PATH and send `connect P`
    --tx-buffer-size BYTES          per-connection buffer advertised to the guest (buf_alloc),
                                    4096..=1073741824 [default: 262144]
    --queue-size N                  largest virtqueue size accepted, a power of two <= 32768
                                    [default: 32768]
    --groups A+B                    guests sharing a group reach each other by CID
                                    [default: default]
    --max-connections N             connections per VM; more are refused with RST [default: 1024]
    --connect-timeout-ms MS         reset a connection stuck connecting [default: 2000]
    --shutdown-timeout-ms MS        reset a connection stuck closing [default: 2000]
    --connect-line-timeout-ms MS    drop a host client that sends no CONNECT line [default: 5000]
    --ok-reply guest-port|host-port reply `OK <guest port>` (Cuttlefish) or Firecracker's
                                    `OK <local port>` [default: guest-port]
    --seqpacket [on|off]            offer VIRTIO_VSOCK_F_SEQPACKET [default: on]
    --access-platform [true|false]  offer VIRTIO_F_ACCESS_PLATFORM (bit 33): the guest uses the
                                    DMA API. Never turns on address translation [default: false]
    --iotlb off|required|auto       IOTLB translation of ring and buffer addresses (IOVAs).
                                    required: offer bit 33 + BACKEND_REQ, refuse a session without
                                    bit 33; auto: translate iff bit 33 is negotiated (trusts the
                                    frontend) [default: off]
    --iotlb-miss-timeout-ms MS      a MISS unanswered this long stops the queue [default: 5000]
    --iotlb-max-entries N           IOTLB entries kept; the oldest is evicted [default: 2048]
    --vm KEY=VALUE,...              one VM; cannot be mixed with the single-VM options above.
                                    Quote a value holding ',' as KEY=\"VALUE\"
    --config FILE                   the VMs as a PluginConfig protobuf message (proto/protos/
                                    config.proto), in JSON or binary form; zero = default
    --control URI                   serve the control plane (binder://NAME, or binder RPC at
                                    unix:///path#NAME); see `vsock-plugin ctl --help`
    --control-allow-uid UID[+UID]   uids allowed to call the control plane (own uid always)
    --ready-fd FD                   write one byte to FD and close it once every socket listens
                                    (also: READY=1 to $NOTIFY_SOCKET when set, as systemd expects)
    --socket-group-access           socket files the plugin creates are mode 0660 (its group
                                    may connect) instead of 0600 (only its uid), any umask
    --sandbox full|stock            stock: stay inside Cuttlefish's stock vhost_device_vsock
                                    seccomp policy, giving up half-close (a guest SHUTDOWN(SEND)
                                    is not passed to the host socket); full: everything, needs the
                                    patched policy (cuttlefish/sandbox/) [default: full, or
                                    $VSOCK_PLUGIN_SANDBOX when set]
    ctl COMMAND ...                 talk to a running plugin: caps, status, connections, metrics,
                                    routes, policy ... (as the first argument)
    -h, --help                      print this help
    -V, --version                   print the version

Bad arguments print one error line and exit with status 2. Logging: RUST_LOG=debug.
";

/// Why the command line was rejected; the message is one line naming the option or key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("unknown option {0:?} (try --help)")]
    UnknownOption(String),
    #[error("unexpected argument {0:?} (try --help)")]
    UnexpectedArgument(String),
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("option {0} takes no value")]
    UnexpectedValue(String),
    #[error("option {0} given more than once")]
    RepeatedOption(String),
    #[error("--vm cannot be combined with single-VM options such as {0}")]
    MixedForms(String),
    #[error("no VM configured: give --socket/--uds-path or --vm")]
    NoVm,
    #[error("{0} VMs configured: one process serves at most {max}", max = super::MAX_VMS)]
    TooManyVms(usize),
    #[error("{0}")]
    BadProcessOption(String),
    #[error("{0}")]
    Namespace(#[from] super::namespace::NamespaceError),
    #[error("--config: {0}")]
    ConfigFile(super::file::FileError),
    #[error("--config cannot be combined with {0}")]
    ConfigMixed(String),
    /// A `--vm` value (numbered from 1) that does not parse.
    #[error("--vm #{index}: {source}")]
    VmSpec { index: usize, source: KeyValueError },
    /// The single-VM options do not parse.
    #[error("{}", flag_message(.0))]
    Options(KeyValueError),
    /// A VM's values are out of bounds; `context` is `--vm #N: ` or empty in the single-VM form.
    #[error("{context}{source}")]
    Invalid {
        context: String,
        source: ConfigError,
    },
    #[error("guest-cid {cid} is used by both --vm #{first} and --vm #{second}")]
    DuplicateCid {
        cid: u64,
        first: usize,
        second: usize,
    },
    #[error("socket-fd {fd} is used by both --vm #{first} and --vm #{second}")]
    DuplicateSocketFd {
        fd: i32,
        first: usize,
        second: usize,
    },
    /// The same path used twice in the same role (`socket` or `uds-path`).
    #[error("{key} {path:?} is used by both --vm #{first} and --vm #{second}")]
    DuplicatePath {
        key: &'static str,
        path: PathBuf,
        first: usize,
        second: usize,
    },
    /// One VM's socket is another's uds-path.
    #[error("path {path:?} is both the {first_key} of --vm #{first} and the {second_key} of --vm #{second}")]
    PathConflict {
        path: PathBuf,
        first_key: &'static str,
        first: usize,
        second_key: &'static str,
        second: usize,
    },
}

/// Renders a key=value error in terms of the single-VM options (`--key`).
fn flag_message(e: &KeyValueError) -> String {
    match e {
        KeyValueError::MissingKey { key } => format!("missing required option --{key}"),
        KeyValueError::InvalidValue {
            key: Some(k),
            value,
            problem,
        } => {
            format!("invalid value {value:?} for --{k}: {problem}")
        }
        KeyValueError::Custom {
            key: Some(k),
            message,
        } => format!("--{k}: {message}"),
        other => other.to_string(),
    }
}

/// The single-VM options, by their `VmConfig` key (the option is `--` + key).
const SINGLE_VM_KEYS: &[&str] = &[
    "guest-cid",
    "socket",
    "socket-fd",
    "uds-path",
    "tx-buffer-size",
    "queue-size",
    "groups",
    "max-connections",
    "connect-timeout-ms",
    "shutdown-timeout-ms",
    "connect-line-timeout-ms",
    "ok-reply",
    "seqpacket",
    "access-platform",
    "iotlb",
    "iotlb-miss-timeout-ms",
    "iotlb-max-entries",
];

/// Parses the arguments (without argv\[0\]) into a [`Command`]; every VM is validated.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == "ctl") {
        return Ok(Command::Ctl(args.skip(1).collect()));
    }
    let mut process = crate::ProcessOptions::default();
    let mut sandbox_flag = None;
    let mut config_file: Option<String> = None;
    let mut vm_specs: Vec<String> = Vec::new();
    let mut flags: Vec<(&'static str, String)> = Vec::new();

    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(long) = arg.strip_prefix("--").filter(|l| !l.is_empty()) else {
            return Err(if arg.starts_with('-') && arg != "-" && arg != "--" {
                CliError::UnknownOption(arg)
            } else {
                CliError::UnexpectedArgument(arg)
            });
        };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        let option = format!("--{name}");
        if name == "help" || name == "version" {
            return Err(CliError::UnexpectedValue(option));
        }
        if name == "config" {
            let Some(value) = inline.or_else(|| args.next()) else {
                return Err(CliError::MissingValue(option));
            };
            if config_file.replace(value).is_some() {
                return Err(CliError::RepeatedOption(option));
            }
            continue;
        }
        if name == "socket-group-access" {
            if inline.is_some() {
                return Err(CliError::UnexpectedValue(option));
            }
            process.socket_group_access = true;
            continue;
        }
        if name == "control" || name == "control-allow-uid" {
            let Some(value) = inline.or_else(|| args.next()) else {
                return Err(CliError::MissingValue(option));
            };
            if name == "control" {
                process.control = Some(value);
            } else {
                for uid in value.split('+') {
                    let uid = uid.parse::<u32>().map_err(|_| {
                        CliError::BadProcessOption(format!("{option}: bad uid {uid:?}"))
                    })?;
                    process.control_allow_uids.push(uid);
                }
            }
            continue;
        }
        if name == "ready-fd" {
            let Some(value) = inline.or_else(|| args.next()) else {
                return Err(CliError::MissingValue(option));
            };
            let fd = value
                .parse::<i32>()
                .ok()
                .filter(|fd| *fd >= 0)
                .ok_or_else(|| CliError::BadProcessOption(format!("{option}: bad fd {value:?}")))?;
            if process.ready_fd.replace(fd).is_some() {
                return Err(CliError::RepeatedOption(option));
            }
            continue;
        }
        if name == "sandbox" {
            let Some(value) = inline.or_else(|| args.next()) else {
                return Err(CliError::MissingValue(option));
            };
            let mode = crate::sandbox::SandboxMode::parse(&value).ok_or_else(|| {
                CliError::BadProcessOption(format!("{option}: {value:?} is not full or stock"))
            })?;
            if sandbox_flag.replace(mode).is_some() {
                return Err(CliError::RepeatedOption(option));
            }
            continue;
        }
        if name == "vm" {
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(CliError::MissingValue(option)),
            };
            if vm_specs.len() >= super::MAX_VMS {
                return Err(CliError::TooManyVms(vm_specs.len() + 1));
            }
            vm_specs.push(value);
            continue;
        }
        let Some(&key) = SINGLE_VM_KEYS.iter().find(|k| **k == name) else {
            return Err(CliError::UnknownOption(option));
        };
        let value = match inline {
            Some(v) => v,
            // `--seqpacket` alone means `on`; it takes the next argument only if it is on/off.
            None if key == "seqpacket" => match args.next_if(|v| v == "on" || v == "off") {
                Some(v) => v,
                None => "on".to_string(),
            },
            // `--access-platform` alone means `true`.
            None if key == "access-platform" => match args.next_if(|v| v == "true" || v == "false")
            {
                Some(v) => v,
                None => "true".to_string(),
            },
            None => match args.next() {
                Some(v) => v,
                None => return Err(CliError::MissingValue(option)),
            },
        };
        if flags.iter().any(|(k, _)| *k == key) {
            return Err(CliError::RepeatedOption(option));
        }
        flags.push((key, value));
    }

    let mut vms = Vec::new();
    let single = vm_specs.is_empty() && config_file.is_none();
    if let Some(path) = &config_file {
        if let Some((key, _)) = flags.first() {
            return Err(CliError::ConfigMixed(format!("--{key}")));
        }
        if !vm_specs.is_empty() {
            return Err(CliError::ConfigMixed("--vm".into()));
        }
        vms = super::file::load(Path::new(path)).map_err(CliError::ConfigFile)?;
    }
    if let Some((key, _)) = flags.first() {
        if !single {
            return Err(CliError::MixedForms(format!("--{key}")));
        }
        if !flags.iter().any(|(k, _)| *k == "guest-cid") {
            flags.insert(0, ("guest-cid", FIRST_GUEST_CID.to_string()));
        }
        let spec = flags
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(",");
        vms.push(from_key_values::<VmConfig>(&spec).map_err(CliError::Options)?);
    } else if single && config_file.is_none() {
        return Err(CliError::NoVm);
    }
    for (i, spec) in vm_specs.iter().enumerate() {
        let vm = from_key_values::<VmConfig>(spec).map_err(|source| CliError::VmSpec {
            index: i + 1,
            source,
        })?;
        vms.push(vm);
    }

    if vms.len() > super::MAX_VMS {
        return Err(CliError::TooManyVms(vms.len()));
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        normalize_socket_fd(vm);
        vm.validate().map_err(|source| CliError::Invalid {
            context: if single {
                String::new()
            } else {
                format!("--vm #{}: ", i + 1)
            },
            source,
        })?;
    }
    check_distinct(&vms)?;
    process.sandbox = match sandbox_flag {
        Some(mode) => mode,
        None => crate::sandbox::SandboxMode::from_env().map_err(CliError::BadProcessOption)?,
    };
    super::namespace::check(&vms, process.control.as_deref())?;
    Ok(Command::Run(vms, process))
}

/// Quotes a value for [`from_key_values`], so that `,`, `"` and `\` survive.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `socket=/proc/self/fd/N` or `/dev/fd/N` (as launchers pass inherited fds) becomes
/// `socket-fd=N`, unless `socket-fd` is also given (which [`VmConfig::validate`] then rejects).
fn normalize_socket_fd(vm: &mut VmConfig) {
    if vm.socket_fd.is_some() {
        return;
    }
    if let Some(fd) = vm.socket.as_deref().and_then(inherited_fd) {
        vm.socket = None;
        vm.socket_fd = Some(fd);
    }
}

fn inherited_fd(path: &Path) -> Option<i32> {
    let s = path.to_str()?;
    let n = s
        .strip_prefix("/proc/self/fd/")
        .or_else(|| s.strip_prefix("/dev/fd/"))?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<i32>().ok()
}

/// Rejects VMs sharing a guest CID, a socket fd, or a socket / uds-path. Linear in the number
/// of VMs (one map per kind of value).
fn check_distinct(vms: &[VmConfig]) -> Result<(), CliError> {
    let mut cids: HashMap<u64, usize> = HashMap::with_capacity(vms.len());
    let mut fds: HashMap<i32, usize> = HashMap::new();
    let mut paths: HashMap<&Path, (&'static str, usize)> = HashMap::with_capacity(2 * vms.len());
    for (j, b) in vms.iter().enumerate() {
        let second = j + 1;
        if let Some(&first) = cids.get(&b.guest_cid) {
            return Err(CliError::DuplicateCid {
                cid: b.guest_cid,
                first,
                second,
            });
        }
        cids.insert(b.guest_cid, second);
        if let Some(fd) = b.socket_fd {
            if let Some(&first) = fds.get(&fd) {
                return Err(CliError::DuplicateSocketFd { fd, first, second });
            }
            fds.insert(fd, second);
        }
        let own: Vec<(&'static str, &Path)> = b
            .socket
            .as_deref()
            .map(|s| ("socket", s))
            .into_iter()
            .chain([("uds-path", b.uds_path.as_path())])
            .collect();
        for &(kb, pb) in &own {
            if let Some(&(ka, first)) = paths.get(pb) {
                return Err(if ka == kb {
                    CliError::DuplicatePath {
                        key: ka,
                        path: pb.to_path_buf(),
                        first,
                        second,
                    }
                } else {
                    CliError::PathConflict {
                        path: pb.to_path_buf(),
                        first_key: ka,
                        first,
                        second_key: kb,
                        second,
                    }
                });
            }
        }
        for (kb, pb) in own {
            paths.insert(pb, (kb, second));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IotlbMode, OkReply, Toggle};

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn run(s: &[&str]) -> Vec<VmConfig> {
        match parse_args(args(s)) {
            Ok(Command::Run(vms, _)) => vms,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn err(s: &[&str]) -> String {
        match parse_args(args(s)) {
            Ok(c) => panic!("{s:?} parsed as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A VM with every default and the given required values.
    fn vm(cid: u64, socket: &str, uds: &str) -> VmConfig {
        VmConfig {
            guest_cid: cid,
            socket: Some(PathBuf::from(socket)),
            socket_fd: None,
            uds_path: PathBuf::from(uds),
            tx_buffer_size: 262144,
            queue_size: 32768,
            groups: vec!["default".to_string()],
            max_connections: 1024,
            connect_timeout_ms: 2000,
            shutdown_timeout_ms: 2000,
            connect_line_timeout_ms: 5000,
            ok_reply: OkReply::GuestPort,
            seqpacket: Toggle::On,
            access_platform: false,
            iotlb: IotlbMode::Off,
            iotlb_miss_timeout_ms: 5000,
            iotlb_max_entries: 2048,
        }
    }

    #[test]
    fn single_vm_defaults() {
        assert_eq!(
            run(&["--socket", "/run/v.vhost", "--uds-path", "/run/v.vsock"]),
            vec![vm(3, "/run/v.vhost", "/run/v.vsock")]
        );
    }

    #[test]
    fn single_vm_all_flags() {
        let got = run(&[
            "--guest-cid",
            "42",
            "--socket",
            "/run/v.vhost",
            "--uds-path",
            "/run/v.vsock",
            "--tx-buffer-size",
            "131072",
            "--queue-size",
            "256",
            "--groups",
            "g1+g2",
            "--max-connections",
            "10",
            "--connect-timeout-ms",
            "100",
            "--shutdown-timeout-ms",
            "200",
            "--connect-line-timeout-ms",
            "300",
            "--ok-reply",
            "host-port",
            "--seqpacket",
            "off",
        ]);
        let want = VmConfig {
            guest_cid: 42,
            tx_buffer_size: 131072,
            queue_size: 256,
            groups: vec!["g1".to_string(), "g2".to_string()],
            max_connections: 10,
            connect_timeout_ms: 100,
            shutdown_timeout_ms: 200,
            connect_line_timeout_ms: 300,
            ok_reply: OkReply::HostPort,
            seqpacket: Toggle::Off,
            ..vm(0, "/run/v.vhost", "/run/v.vsock")
        };
        assert_eq!(got, vec![want]);
    }

    #[test]
    fn flag_equals_form() {
        assert_eq!(
            run(&[
                "--guest-cid=5",
                "--socket=/s",
                "--uds-path=/u",
                "--seqpacket",
                "--queue-size=64"
            ]),
            vec![VmConfig {
                queue_size: 64,
                ..vm(5, "/s", "/u")
            }]
        );
        assert_eq!(
            run(&["--socket=/s", "--seqpacket=off", "--uds-path", "/u"]),
            vec![VmConfig {
                seqpacket: Toggle::Off,
                ..vm(3, "/s", "/u")
            }]
        );
    }

    #[test]
    fn paths_with_commas_and_quotes() {
        assert_eq!(
            run(&["--socket", "/a,b\"c\\d", "--uds-path", "/u,v"]),
            vec![vm(3, "/a,b\"c\\d", "/u,v")]
        );
    }

    #[test]
    fn several_vms() {
        let got = run(&[
            "--vm",
            "guest-cid=3,socket=/run/a.vhost,uds-path=/run/a.vsock,groups=g1",
            "--vm=guest-cid=4,socket-fd=9,uds-path=/run/b.vsock,groups=g1+g2,ok-reply=host-port",
        ]);
        let a = VmConfig {
            groups: vec!["g1".to_string()],
            ..vm(3, "/run/a.vhost", "/run/a.vsock")
        };
        let b = VmConfig {
            socket: None,
            socket_fd: Some(9),
            groups: vec!["g1".to_string(), "g2".to_string()],
            ok_reply: OkReply::HostPort,
            ..vm(4, "", "/run/b.vsock")
        };
        assert_eq!(got, vec![a, b]);
    }

    #[test]
    fn proc_self_fd_is_socket_fd() {
        let want = VmConfig {
            socket: None,
            socket_fd: Some(7),
            ..vm(3, "", "/u")
        };
        assert_eq!(
            run(&["--socket", "/proc/self/fd/7", "--uds-path", "/u"]),
            vec![want.clone()]
        );
        assert_eq!(
            run(&["--vm", "guest-cid=3,socket=/dev/fd/7,uds-path=/u"]),
            vec![want]
        );
        // Not a number: stays a path.
        assert_eq!(
            run(&["--socket", "/proc/self/fd/x", "--uds-path", "/u"]),
            vec![vm(3, "/proc/self/fd/x", "/u")]
        );
        assert_eq!(
            err(&[
                "--socket",
                "/proc/self/fd/7",
                "--socket-fd",
                "7",
                "--uds-path",
                "/u"
            ]),
            "socket and socket-fd are mutually exclusive"
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_args(args(&["-h"])), Ok(Command::Help));
        assert_eq!(
            parse_args(args(&["--socket", "/s", "--help"])),
            Ok(Command::Help)
        );
        assert_eq!(parse_args(args(&["-V"])), Ok(Command::Version));
        assert_eq!(parse_args(args(&["--version"])), Ok(Command::Version));
        assert_eq!(err(&["--help=x"]), "option --help takes no value");
        for key in SINGLE_VM_KEYS {
            assert!(USAGE.contains(&format!("--{key} ")), "USAGE lacks --{key}");
        }
    }

    #[test]
    fn config_file_alone_or_refused_with_other_forms() {
        let dir = std::env::temp_dir().join(format!("vp-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(
            &f,
            r#"{"vms":[{"guestCid":9,"socket":"/s9","udsPath":"/u9"}]}"#,
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let vms = run(&["--config", path]);
        assert_eq!(
            (vms[0].guest_cid, vms[0].uds_path.to_str()),
            (9, Some("/u9"))
        );
        assert_eq!(
            err(&["--config", path, "--guest-cid", "4"]),
            "--config cannot be combined with --guest-cid"
        );
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/s,uds-path=/u",
                "--config",
                path
            ]),
            "--config cannot be combined with --vm"
        );
        assert!(err(&["--config", "/nonexistent.json"])
            .starts_with("--config: cannot read /nonexistent.json"));
    }

    #[test]
    fn unknown_key_and_option() {
        assert_eq!(
            err(&["--vm", "guest-cid=3,socket=/s,uds-path=/u,colour=red"]),
            "--vm #1: unknown key \"colour\" (valid keys: guest-cid, socket, socket-fd, uds-path, \
             tx-buffer-size, queue-size, groups, max-connections, connect-timeout-ms, \
             shutdown-timeout-ms, connect-line-timeout-ms, ok-reply, seqpacket, access-platform, \
             iotlb, iotlb-miss-timeout-ms, iotlb-max-entries)"
        );
        assert_eq!(
            err(&["--colour", "red"]),
            "unknown option \"--colour\" (try --help)"
        );
        assert_eq!(
            err(&["--colour=red"]),
            "unknown option \"--colour\" (try --help)"
        );
        assert_eq!(err(&["-x"]), "unknown option \"-x\" (try --help)");
        assert_eq!(
            err(&["stray"]),
            "unexpected argument \"stray\" (try --help)"
        );
        assert_eq!(err(&["--"]), "unexpected argument \"--\" (try --help)");
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(
            err(&["--guest-cid", "abc", "--socket", "/s", "--uds-path", "/u"]),
            "invalid value \"abc\" for --guest-cid: expected an unsigned integer"
        );
        assert_eq!(
            err(&["--vm", "guest-cid=abc,socket=/s,uds-path=/u"]),
            "--vm #1: invalid value \"abc\" for key \"guest-cid\": expected an unsigned integer"
        );
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--queue-size=65536"]),
            "invalid value \"65536\" for --queue-size: out of range (expected 0..=65535)"
        );
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--queue-size=100"]),
            "queue-size 100 is invalid: must be a power of two in 1..=32768"
        );
        assert_eq!(
            err(&["--guest-cid", "2", "--socket", "/s", "--uds-path", "/u"]),
            "guest-cid 2 is out of range: must be 3..=4294967294 \
             (0-2 are reserved, 4294967295 is VMADDR_CID_ANY)"
        );
        assert_eq!(
            err(&["--vm", "guest-cid=4294967295,socket=/s,uds-path=/u"]),
            "--vm #1: guest-cid 4294967295 is out of range: must be 3..=4294967294 \
             (0-2 are reserved, 4294967295 is VMADDR_CID_ANY)"
        );
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--ok-reply", "port"]),
            "invalid value \"port\" for --ok-reply: expected one of: guest-port, host-port"
        );
    }

    #[test]
    fn vm_count_cap_and_socket_group_access() {
        let specs: Vec<String> = (0..=crate::config::MAX_VMS as u64)
            .flat_map(|k| {
                [
                    "--vm".to_string(),
                    format!("guest-cid={},socket=/s{k},uds-path=/u{k}", k + 3),
                ]
            })
            .collect();
        let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
        assert_eq!(
            err(&refs),
            "513 VMs configured: one process serves at most 512"
        );
        // 512 distinct VMs are fine (checked in linear time).
        assert_eq!(run(&refs[..refs.len() - 2]).len(), 512);
        let Ok(Command::Run(_, opts)) = parse_args(args(&[
            "--socket",
            "/v",
            "--uds-path",
            "/u",
            "--socket-group-access",
        ])) else {
            panic!("--socket-group-access refused");
        };
        assert_eq!(opts.socket_mode(), 0o660);
        assert_eq!(crate::ProcessOptions::default().socket_mode(), 0o600);
        assert_eq!(
            err(&["--socket-group-access=yes"]),
            "option --socket-group-access takes no value"
        );
    }

    #[test]
    fn duplicates_across_vms() {
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/ua",
                "--vm",
                "guest-cid=4,socket=/b,uds-path=/ub",
                "--vm",
                "guest-cid=3,socket=/c,uds-path=/uc",
            ]),
            "guest-cid 3 is used by both --vm #1 and --vm #3"
        );
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/ua",
                "--vm",
                "guest-cid=4,socket=/a,uds-path=/ub"
            ]),
            "socket \"/a\" is used by both --vm #1 and --vm #2"
        );
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/u",
                "--vm",
                "guest-cid=4,socket=/b,uds-path=/u"
            ]),
            "uds-path \"/u\" is used by both --vm #1 and --vm #2"
        );
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/ua",
                "--vm",
                "guest-cid=4,socket=/ua,uds-path=/ub"
            ]),
            "path \"/ua\" is both the uds-path of --vm #1 and the socket of --vm #2"
        );
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket-fd=5,uds-path=/ua",
                "--vm",
                "guest-cid=4,socket=/proc/self/fd/5,uds-path=/ub"
            ]),
            "socket-fd 5 is used by both --vm #1 and --vm #2"
        );
    }

    #[test]
    fn mixing_forms_and_repeats() {
        assert_eq!(
            err(&[
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/u",
                "--queue-size",
                "64"
            ]),
            "--vm cannot be combined with single-VM options such as --queue-size"
        );
        assert_eq!(
            err(&[
                "--guest-cid",
                "3",
                "--vm",
                "guest-cid=3,socket=/a,uds-path=/u"
            ]),
            "--vm cannot be combined with single-VM options such as --guest-cid"
        );
        assert_eq!(
            err(&["--socket", "/a", "--socket=/b", "--uds-path", "/u"]),
            "option --socket given more than once"
        );
    }

    #[test]
    fn missing_things() {
        assert_eq!(
            err(&[]),
            "no VM configured: give --socket/--uds-path or --vm"
        );
        assert_eq!(
            err(&["--socket", "/s"]),
            "missing required option --uds-path"
        );
        assert_eq!(
            err(&["--uds-path", "/u"]),
            "one of socket or socket-fd is required"
        );
        assert_eq!(err(&["--socket"]), "option --socket needs a value");
        assert_eq!(err(&["--vm"]), "option --vm needs a value");
        assert_eq!(
            err(&["--vm", "guest-cid=3,socket=/s"]),
            "--vm #1: missing required key \"uds-path\""
        );
        assert_eq!(
            err(&["--vm", "socket=/s,uds-path=/u"]),
            "--vm #1: missing required key \"guest-cid\""
        );
        assert_eq!(err(&["--socket", "/s", "--uds-path="]), "uds-path is empty");
    }

    #[test]
    fn groups_errors() {
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--groups", ""]),
            "invalid value \"\" for --groups: expected a '+'-separated list of non-empty names"
        );
        assert_eq!(
            err(&["--vm", "guest-cid=3,socket=/s,uds-path=/u,groups=a++b"]),
            "--vm #1: invalid value \"a++b\" for key \"groups\": \
             expected a '+'-separated list of non-empty names"
        );
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--groups", "a+b c"]),
            "group name \"b c\" is invalid: use 1 to 64 characters from [A-Za-z0-9_-]"
        );
    }
}
