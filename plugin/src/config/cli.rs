//! The command line, on clap (derive): vhost-device-vsock's single-VM flags or a repeatable
//! `--vm key=value,...` (both made of the same per-VM options, [`super::vm_args`]), a `--config`
//! file, and the process-wide options. `vsock-plugin ctl ...` (as the first argument) is the
//! control-plane client, parsed by `vsock_plugin_ipc::ctl`.
//!
//! The contract users rely on: a bad command line is one error line (naming the option, or the
//! `--vm` and its key) and exit status 2.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use super::vm_args::{self, Form, VmArgs};
use super::{vm_spec, ConfigError, VmConfig};
use crate::sandbox::SandboxMode;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve these VMs (at least one, each validated, no shared CIDs, sockets or paths).
    Run(Vec<VmConfig>, crate::ProcessOptions),
    /// `vsock-plugin ctl …`: talk to a running plugin's control plane (arguments after `ctl`).
    Ctl(Vec<String>),
    /// `-h` / `--help`: print [`help`].
    Help,
    /// `-V` / `--version`.
    Version,
}

const USAGE: &str = "vsock-plugin [OPTIONS] --socket PATH --uds-path PATH
       vsock-plugin --vm KEY=VALUE,... [--vm KEY=VALUE,...]...
       vsock-plugin --config FILE
       vsock-plugin ctl COMMAND ...";

const EXAMPLES: &str = "\
One VM (vhost-device-vsock's syntax):
    vsock-plugin --guest-cid 3 --socket /run/vsock/vm3.vhost --uds-path /run/vsock/vm3.vsock
Several VMs (repeatable; keys are the same as the VM options):
    vsock-plugin --vm guest-cid=3,socket=/run/vsock/a.vhost,uds-path=/run/vsock/a.vsock,groups=g1 \\
                 --vm guest-cid=4,socket=/run/vsock/b.vhost,uds-path=/run/vsock/b.vsock,groups=g1+g2
Talk to a running plugin (caps, status, connections, metrics, routes, policy ...):
    vsock-plugin ctl --help

Bad arguments print one error line and exit with status 2. Logging: RUST_LOG=debug.";

/// `vsock-plugin`'s options (the VM options are [`VmArgs`]).
#[derive(Parser, Debug)]
#[command(
    name = "vsock-plugin",
    version,
    about = "A vhost-user virtio-vsock device for crosvm, QEMU and Cuttlefish.",
    override_usage = USAGE,
    after_help = EXAMPLES,
    disable_help_flag = true,
    disable_version_flag = true,
    next_help_heading = "VM options (as --vm keys: without the dashes)"
)]
struct Cli {
    #[command(flatten)]
    vm: VmArgs,
    /// One VM as KEY=VALUE,... (repeatable); cannot be mixed with the VM options above. Quote a
    /// value holding ',' as KEY="VALUE"
    #[arg(long = "vm", value_name = "KEY=VALUE,...", value_parser = vm_spec::parse, allow_hyphen_values = true, help_heading = "Process options")]
    vms: Vec<VmConfig>,
    /// The VMs as a PluginConfig protobuf message (proto/protos/config.proto), in JSON or binary
    /// form; zero = default
    #[arg(long, value_name = "FILE", value_parser = clap::builder::OsStringValueParser::new(), allow_hyphen_values = true, help_heading = "Process options")]
    config: Option<OsString>,
    /// Serve the control plane (binder://NAME, or binder RPC at unix:///path#NAME); see
    /// `vsock-plugin ctl --help`
    #[arg(
        long,
        value_name = "URI",
        overrides_with = "control",
        allow_hyphen_values = true,
        help_heading = "Process options"
    )]
    control: Option<String>,
    /// Uids allowed to call the control plane (own uid always)
    #[arg(long, value_name = "UID[+UID]", value_parser = uid_list, allow_hyphen_values = true, help_heading = "Process options")]
    control_allow_uid: Vec<Vec<u32>>,
    /// Write one byte to FD and close it once every socket listens (also: READY=1 to
    /// $NOTIFY_SOCKET when set, as systemd expects)
    #[arg(long, value_name = "FD", value_parser = ready_fd, allow_hyphen_values = true, help_heading = "Process options")]
    ready_fd: Option<i32>,
    /// Socket files the plugin creates are mode 0660 (its group may connect) instead of 0600
    /// (only its uid), any umask
    #[arg(long, help_heading = "Process options")]
    socket_group_access: bool,
    /// stock: stay inside Cuttlefish's stock vhost_device_vsock seccomp policy, giving up
    /// half-close (a guest SHUTDOWN(SEND) is not passed to the host socket); full: everything,
    /// needs the patched policy (cuttlefish/sandbox/) [default: full, or $VSOCK_PLUGIN_SANDBOX]
    #[arg(long, value_name = "full|stock", value_parser = sandbox_mode, allow_hyphen_values = true, help_heading = "Process options")]
    sandbox: Option<SandboxMode>,
    /// Print this help
    #[arg(short = 'h', long, action = ArgAction::Help, help_heading = "Process options")]
    help: Option<bool>,
    /// Print the version
    #[arg(short = 'V', long, action = ArgAction::Version, help_heading = "Process options")]
    version: Option<bool>,
}

/// The `--help` text, from the options' definitions (their defaults are [`super::defaults`]).
pub fn help() -> String {
    Cli::command().render_help().to_string()
}

/// Why the command line was rejected; the message is one line naming the option or key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// What clap refused, in one line naming the option (or `--vm #N` and its key).
    #[error("{0}")]
    Usage(String),
    #[error("unexpected argument \"--\" (try --help)")]
    DoubleDash,
    #[error("--vm cannot be combined with single-VM options such as {0}")]
    MixedForms(String),
    #[error("no VM configured: give --socket/--uds-path or --vm")]
    NoVm,
    #[error("{0} VMs configured: one process serves at most {max}", max = super::MAX_VMS)]
    TooManyVms(usize),
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    Namespace(#[from] super::namespace::NamespaceError),
    #[error("--config: {0}")]
    ConfigFile(super::file::FileError),
    #[error("--config cannot be combined with {0}")]
    ConfigMixed(String),
    /// A `--vm` value (numbered from 1) that does not parse.
    #[error("--vm #{index}: {message}")]
    VmSpec { index: usize, message: String },
    /// The single-VM options lack a required one.
    #[error("{0}")]
    Options(String),
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

/// Parses the arguments (without argv\[0\]) into a [`Command`]; every VM is validated.
pub fn parse_args<I, T>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.first().is_some_and(|a| a == "ctl") {
        let rest = args[1..].iter().map(|a| a.to_string_lossy().into_owned());
        return Ok(Command::Ctl(rest.collect()));
    }
    if has_double_dash(&args) {
        return Err(CliError::DoubleDash);
    }
    let parsed = Cli::command()
        .no_binary_name(true)
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return clap_error(e, &args),
    };
    let first_vm_flag = vm_args::first_given(&matches);

    let mut vms = Vec::new();
    let single = cli.vms.is_empty() && cli.config.is_none();
    if let Some(path) = &cli.config {
        if let Some(flag) = &first_vm_flag {
            return Err(CliError::ConfigMixed(flag.clone()));
        }
        if !cli.vms.is_empty() {
            return Err(CliError::ConfigMixed("--vm".into()));
        }
        vms = super::file::load(Path::new(path)).map_err(CliError::ConfigFile)?;
    }
    match &first_vm_flag {
        Some(flag) if !cli.vms.is_empty() => return Err(CliError::MixedForms(flag.clone())),
        Some(_) => vms.push(
            cli.vm
                .into_config(&matches, Form::Flags)
                .map_err(CliError::Options)?,
        ),
        None if single => return Err(CliError::NoVm),
        None => {}
    }
    vms.extend(cli.vms);

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
    let sandbox = match cli.sandbox {
        Some(mode) => mode,
        None => SandboxMode::from_env().map_err(CliError::Sandbox)?,
    };
    let process = crate::ProcessOptions {
        control: cli.control,
        control_allow_uids: cli.control_allow_uid.concat(),
        ready_fd: cli.ready_fd,
        socket_group_access: cli.socket_group_access,
        sandbox,
    };
    super::namespace::check(&vms, process.control.as_deref())?;
    Ok(Command::Run(vms, process))
}

/// A `--` that is not an option's value: this command line takes no positional arguments, and
/// clap would silently accept the separator.
fn has_double_dash(args: &[OsString]) -> bool {
    let command = Cli::command();
    let takes_value = |arg: &OsString| {
        let Some(long) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            return false;
        };
        !long.contains('=')
            && command.get_arguments().any(|a| {
                a.get_long() == Some(long)
                    && a.get_action().takes_values()
                    && a.get_num_args().is_none_or(|n| n.min_values() > 0)
            })
    };
    args.iter()
        .enumerate()
        .any(|(i, a)| a == "--" && (i == 0 || !takes_value(&args[i - 1])))
}

/// Help and version are requests, not errors; anything else becomes one line.
fn clap_error(e: clap::Error, args: &[OsString]) -> Result<Command, CliError> {
    match e.kind() {
        ErrorKind::DisplayHelp => return Ok(Command::Help),
        ErrorKind::DisplayVersion => return Ok(Command::Version),
        _ => {}
    }
    if let (ErrorKind::ValueValidation, Some(spec)) = (e.kind(), vm_value(&e)) {
        let message = std::error::Error::source(&e).map_or_else(String::new, |s| s.to_string());
        return Err(CliError::VmSpec {
            index: vm_index(args, &spec),
            message,
        });
    }
    Err(CliError::Usage(vm_args::message(&e, Form::Flags)))
}

/// The `--vm` value a clap error is about, if it is about one.
fn vm_value(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    match (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) {
        (Some(ContextValue::String(arg)), Some(ContextValue::String(v)))
            if arg.starts_with("--vm ") =>
        {
            Some(v.clone())
        }
        _ => None,
    }
}

/// Which `--vm` (from 1) holds `spec`: errors name the VM by its position.
fn vm_index(args: &[OsString], spec: &str) -> usize {
    let mut index = 0;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let value = if a == "--vm" {
            it.next().map(|v| v.to_string_lossy().into_owned())
        } else if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--vm=")) {
            Some(v.to_string())
        } else {
            continue;
        };
        index += 1;
        if value.as_deref() == Some(spec) {
            break;
        }
    }
    index
}

fn uid_list(s: &str) -> Result<Vec<u32>, String> {
    s.split('+')
        .map(|uid| uid.parse::<u32>().map_err(|_| format!("bad uid {uid:?}")))
        .collect()
}

fn ready_fd(s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| format!("bad fd {s:?}"))
}

fn sandbox_mode(s: &str) -> Result<SandboxMode, String> {
    SandboxMode::parse(s).ok_or_else(|| format!("{s:?} is not full or stock"))
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
        let help = help();
        for key in vm_args::keys() {
            assert!(help.contains(&format!("--{key} ")), "--help lacks --{key}");
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

    /// The defaults clap applies (and `--help` shows) are the constants of `defaults`.
    #[test]
    fn defaults_come_from_the_constants() {
        let want = VmConfig::with_defaults(3, Some("/s".into()), None, "/u".into());
        assert_eq!(
            run(&["--socket", "/s", "--uds-path", "/u"]),
            vec![want.clone()]
        );
        assert_eq!(
            run(&["--vm", "guest-cid=3,socket=/s,uds-path=/u"]),
            vec![want]
        );
        let help = help();
        for (key, default) in vm_args::key_defaults() {
            if let Some(d) = default {
                let line = help
                    .lines()
                    .skip_while(|l| !l.contains(&format!("--{key} ")))
                    .nth(1)
                    .unwrap_or_default();
                assert!(
                    line.ends_with(&format!("[default: {d}]")),
                    "--{key}: {line}"
                );
            }
        }
    }

    #[test]
    fn help_stops_parsing_where_it_stands() {
        assert_eq!(
            parse_args(args(&["--colour", "--help"])).map_err(|e| e.to_string()),
            Err("unknown option \"--colour\" (try --help)".to_string())
        );
        assert_eq!(parse_args(args(&["--help", "--colour"])), Ok(Command::Help));
        assert_eq!(parse_args(args(&["-V", "--colour"])), Ok(Command::Version));
        assert_eq!(
            parse_args(args(&["ctl", "--help"])),
            Ok(Command::Ctl(vec!["--help".to_string()]))
        );
    }

    #[test]
    fn double_dash_and_hyphen_values() {
        assert_eq!(
            err(&["--socket", "/s", "--uds-path", "/u", "--"]),
            "unexpected argument \"--\" (try --help)"
        );
        // As an option's value, `--` and `-x` are values (as vhost-device-vsock's parser takes them).
        assert_eq!(
            run(&["--socket", "--", "--uds-path", "-u"]),
            vec![vm(3, "--", "-u")]
        );
        assert_eq!(err(&["--ready-fd", "-1"]), "--ready-fd: bad fd \"-1\"");
        assert_eq!(
            err(&["--control-allow-uid", "1+x"]),
            "--control-allow-uid: bad uid \"x\""
        );
        assert_eq!(
            err(&["--sandbox", "strict"]),
            "--sandbox: \"strict\" is not full or stock"
        );
    }

    /// Arguments need not be UTF-8: paths are bytes, anything else is refused in one line.
    #[test]
    fn non_utf8_arguments() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"/s\xff".to_vec());
        let got = parse_args([
            OsString::from("--socket"),
            odd.clone(),
            "--uds-path".into(),
            "/u".into(),
        ]);
        let Ok(Command::Run(vms, _)) = got else {
            panic!("{got:?}");
        };
        assert_eq!(vms[0].socket.as_deref(), Some(Path::new(&odd)));
        let e = parse_args([OsString::from("--queue-size"), odd])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid UTF-8 was detected in one or more arguments");
    }
}
