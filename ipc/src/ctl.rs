//! `vsock-plugin ctl ...`: a client of `IDeviceControl` that prints tables or JSON. The command
//! line is [`CtlArgs`] (clap): `ctl [--uri URI] [--json] COMMAND`, with the commands caps, status,
//! connections [--cid CID], metrics, routes, route CID PORT, policy list|allow|deny|clear, and
//! reset CID GUEST_PORT HOST_PORT (`vsock-plugin ctl --help` lists them).
//!
//! `URI` defaults to `$VSOCK_PLUGIN_CONTROL`, else `binder://default`. The client asks for the
//! server's capabilities first and never sends a feature the server did not advertise (a
//! `--cid` filter is applied locally against a server without `FEATURE_CONNECTION_FILTER`).

use std::fmt::Write as _;
use std::time::Duration;

use android_vsockplugin::aidl::android::vsockplugin::{
    ErrorCode::ErrorCode, IDeviceControl::IDeviceControl,
};
use android_vsockplugin::binder::{Status, Strong};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use protobuf::{Enum, MessageFull};

use crate::platform::{self, ControlUri};
use crate::proto::control::{
    Capabilities, ConnectionList, ExplainRouteRequest, ListConnectionsRequest, Metrics,
    PolicyAction, PolicyLimits, PolicyList, PolicyRule, RouteInfo, RouteList, SetPolicyRequest,
    Status as DevStatus,
};
use crate::proto::{decode, encode, features};

/// Environment variable naming the default control URI.
pub const URI_ENV: &str = "VSOCK_PLUGIN_CONTROL";
/// URI used when neither `--uri` nor the environment names one.
pub const DEFAULT_URI: &str = "binder://default";

/// The `ctl` command line: global options and one command.
#[derive(Parser, Debug)]
#[command(
    name = "vsock-plugin ctl",
    no_binary_name = true,
    about = "Talk to a running vsock-plugin's control plane (IDeviceControl).",
    disable_version_flag = true
)]
struct CtlArgs {
    #[arg(long, value_name = "URI", global = true, help = uri_help())]
    uri: Option<String>,
    /// Print protobuf JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

fn uri_help() -> String {
    format!("The control service: binder://NAME or unix:///path#NAME [default: ${URI_ENV}, else {DEFAULT_URI}]")
}

/// A command.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Command {
    /// Protocol version and supported features
    Caps,
    /// VMs, negotiated features, IOTLB mode, uptime
    Status,
    /// Live connections
    Connections {
        /// Only this guest's connections
        #[arg(long)]
        cid: Option<u64>,
    },
    /// Counters
    Metrics,
    /// Which mapping serves which port
    Routes,
    /// The mapping a guest connection to PORT would get now
    Route { cid: u64, port: u32 },
    /// Per-(cid, port) allow/deny rules
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Reset one connection
    Reset {
        cid: u64,
        guest_port: u32,
        host_port: u32,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum PolicyCommand {
    /// The rules in force
    List,
    /// Allow matching connections (a rule with limits caps them)
    Allow(RuleArgs),
    /// Refuse matching connections
    Deny(RuleArgs),
    /// Drop every rule
    Clear,
}

/// What a policy rule matches (absent: any) and its limits.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
struct RuleArgs {
    #[arg(long)]
    cid: Option<u64>,
    #[arg(long)]
    port: Option<u32>,
    #[arg(long, default_value = "")]
    reason: String,
    /// At most N concurrent connections (needs FEATURE_POLICY_LIMITS)
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
}

/// The `ctl --help` text.
pub fn help() -> String {
    CtlArgs::command().render_help().to_string()
}

/// Why a ctl command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlError {
    /// Bad command line (exit status 2): one line naming what is wrong.
    Usage(String),
    /// The control service could not be reached.
    Connect(String),
    /// The call failed: the server's error, or a reply that did not decode.
    Call(String),
}

impl CtlError {
    /// Process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Usage(m) => write!(f, "{m} (try `vsock-plugin ctl --help`)"),
            CtlError::Connect(m) => write!(f, "cannot reach the control service: {m}"),
            CtlError::Call(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// Describe a binder error the way a user wants to read it.
pub fn describe_status(s: &Status) -> String {
    match platform::error_kind(s) {
        platform::ErrorKind::ServiceSpecific(code, msg) => format!("{}: {msg}", error_name(code)),
        platform::ErrorKind::Security(msg) => format!("permission denied: {msg}"),
        platform::ErrorKind::Transaction(t) => format!("transaction failed: {t}"),
        platform::ErrorKind::Other(m) => m,
    }
}

/// Name of an `ErrorCode` value.
pub fn error_name(code: i32) -> String {
    match ErrorCode(code) {
        ErrorCode::NONE => "NONE".into(),
        ErrorCode::UNSUPPORTED_FEATURE => "UNSUPPORTED_FEATURE".into(),
        ErrorCode::INVALID_ARGUMENT => "INVALID_ARGUMENT".into(),
        ErrorCode::NOT_FOUND => "NOT_FOUND".into(),
        ErrorCode::ALREADY_REGISTERED => "ALREADY_REGISTERED".into(),
        ErrorCode::REFUSED => "REFUSED".into(),
        _ => format!("error {code}"),
    }
}

fn call_err(what: &str) -> impl Fn(Status) -> CtlError + '_ {
    move |s| CtlError::Call(format!("{what}: {}", describe_status(&s)))
}

/// The control URI used when `--uri` is absent.
pub fn default_uri() -> String {
    std::env::var(URI_ENV).unwrap_or_else(|_| DEFAULT_URI.to_string())
}

/// What a `ctl` command line asks for: a command, or the help text.
enum Parsed {
    Run(CtlArgs),
    Help(String),
}

/// Parses the arguments (without the program and `ctl` words); a clap error becomes one line.
fn parse<S: AsRef<str>>(args: &[S]) -> Result<Parsed, CtlError> {
    match CtlArgs::try_parse_from(args.iter().map(AsRef::as_ref)) {
        Ok(a) => Ok(Parsed::Run(a)),
        Err(e) if e.kind() == ErrorKind::DisplayHelp => Ok(Parsed::Help(e.to_string())),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
            ) =>
        {
            Err(CtlError::Usage("no command".into()))
        }
        Err(e) => Err(CtlError::Usage(clap_error_line(&e))),
    }
}

/// A clap error as one line: its message up to the usage, without the `error: ` prefix (clap
/// puts the missing arguments on lines of their own).
pub fn clap_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = message.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// Run `ctl` with `args` (without the program and `ctl` words). Returns the text to print.
pub fn run<S: AsRef<str>>(args: &[S]) -> Result<String, CtlError> {
    // The command line is checked before connecting.
    let a = match parse(args)? {
        Parsed::Run(a) => a,
        Parsed::Help(text) => return Ok(text),
    };
    let uri = a.uri.unwrap_or_else(default_uri);
    let uri = ControlUri::parse(&uri).map_err(CtlError::Usage)?;
    let (svc, _session) = platform::connect_control(&uri, false, Some(Duration::from_secs(10)))
        .map_err(|e| CtlError::Connect(format!("{uri}: {e:?}")))?;
    execute(&*svc, &a.command, a.json)
}

/// The proto3 JSON mapping of `m` (stable: field names are the schema's), with default values
/// printed, one line.
/// `m` as protobuf JSON (`--json`) or as the human table `render` makes of it.
fn show<M: MessageFull>(
    json: bool,
    m: &M,
    render: impl Fn(&M) -> String,
) -> Result<String, CtlError> {
    if json {
        to_json(m)
    } else {
        Ok(render(m))
    }
}

fn to_json<M: MessageFull>(m: &M) -> Result<String, CtlError> {
    let opts = protobuf_json_mapping::PrintOptions {
        always_output_default_values: true,
        ..Default::default()
    };
    protobuf_json_mapping::print_to_string_with_options(m, &opts)
        .map(|s| s + "\n")
        .map_err(|e| CtlError::Call(format!("cannot print JSON: {e}")))
}

fn reply<M: MessageFull>(what: &str, r: Result<Vec<u8>, Status>) -> Result<M, CtlError> {
    let bytes = r.map_err(call_err(what))?;
    decode(&bytes).map_err(|e| CtlError::Call(format!("{what}: bad reply: {e}")))
}

/// Run a parsed command against a connected service (public for tests through [`run_on`]).
fn execute(svc: &dyn IDeviceControl, cmd: &Command, json: bool) -> Result<String, CtlError> {
    // Capability query first: every later request uses only advertised features.
    let caps: Capabilities = reply("getCapabilities", svc.getCapabilities())?;
    if caps.protocol_major != crate::proto::PROTOCOL_MAJOR {
        return Err(CtlError::Call(format!(
            "server speaks control protocol {}.{}, this client {}.{}",
            caps.protocol_major,
            caps.protocol_minor,
            crate::proto::PROTOCOL_MAJOR,
            crate::proto::PROTOCOL_MINOR
        )));
    }
    let has = |f: u64| caps.supported_features & f == f;
    let out = match cmd {
        Command::Caps => show(json, &caps, render_caps)?,
        Command::Status => {
            let s: DevStatus = reply("getStatus", svc.getStatus(&[]))?;
            show(json, &s, render_status)?
        }
        Command::Connections { cid } => {
            let mut req = ListConnectionsRequest::new();
            if let (Some(c), true) = (cid, has(features::CONNECTION_FILTER)) {
                req.guest_cid = Some(*c);
                req.required_features |= features::CONNECTION_FILTER;
            }
            let mut l: ConnectionList =
                reply("listConnections", svc.listConnections(&encode(&req)))?;
            if let Some(c) = cid {
                // Also correct against a server that could not filter.
                l.connections.retain(|x| x.guest_cid == *c);
            }
            show(json, &l, render_connections)?
        }
        Command::Metrics => {
            let m: Metrics = reply("getMetrics", svc.getMetrics(&[]))?;
            show(json, &m, render_metrics)?
        }
        Command::Routes => {
            let r: RouteList = reply("listRoutes", svc.listRoutes(&[]))?;
            show(json, &r, |r| render_routes(&r.routes))?
        }
        Command::Route { cid, port } => {
            let req = ExplainRouteRequest {
                guest_cid: *cid,
                host_port: *port,
                ..Default::default()
            };
            let r: RouteInfo = reply("explainRoute", svc.explainRoute(&encode(&req)))?;
            show(json, &r, |r| render_routes(std::slice::from_ref(r)))?
        }
        Command::Policy(PolicyCommand::List) => {
            let p: PolicyList = reply("getPolicy", svc.getPolicy(&[]))?;
            show(json, &p, render_policy)?
        }
        Command::Policy(PolicyCommand::Allow(rule))
        | Command::Policy(PolicyCommand::Deny(rule)) => {
            let action = if matches!(cmd, Command::Policy(PolicyCommand::Allow(_))) {
                PolicyAction::POLICY_ACTION_ALLOW
            } else {
                PolicyAction::POLICY_ACTION_DENY
            };
            set_rule(svc, action, rule, has(features::POLICY_LIMITS))?;
            ok(json)
        }
        Command::Policy(PolicyCommand::Clear) => {
            let req = SetPolicyRequest {
                replace_all: true,
                ..Default::default()
            };
            svc.setPolicy(&encode(&req))
                .map_err(call_err("setPolicy"))?;
            ok(json)
        }
        Command::Reset {
            cid,
            guest_port,
            host_port,
        } => {
            svc.resetConnection(*cid as i64, *guest_port as i32, *host_port as i32)
                .map_err(call_err("resetConnection"))?;
            ok(json)
        }
    };
    Ok(out)
}

/// Run `args` (as [`run`], `--uri` ignored) against an already connected service.
pub fn run_on<S: AsRef<str>>(
    svc: &Strong<dyn IDeviceControl>,
    args: &[S],
) -> Result<String, CtlError> {
    match parse(args)? {
        Parsed::Run(a) => execute(&**svc, &a.command, a.json),
        Parsed::Help(text) => Ok(text),
    }
}

/// Adds one allow/deny rule; limits only to a server that enforces them.
fn set_rule(
    svc: &dyn IDeviceControl,
    action: PolicyAction,
    r: &RuleArgs,
    limits_supported: bool,
) -> Result<(), CtlError> {
    let mut req = SetPolicyRequest::new();
    let mut rule = PolicyRule {
        guest_cid: r.cid,
        host_port: r.port,
        action: action.into(),
        reason: r.reason.clone(),
        ..Default::default()
    };
    if let Some(n) = r.max_connections {
        if !limits_supported {
            return Err(CtlError::Call(
                "the server does not enforce policy limits (no FEATURE_POLICY_LIMITS)".into(),
            ));
        }
        rule.limits = Some(PolicyLimits {
            max_connections: n,
            ..Default::default()
        })
        .into();
        req.required_features |= features::POLICY_LIMITS;
    }
    req.rules.push(rule);
    svc.setPolicy(&encode(&req))
        .map_err(call_err("setPolicy"))?;
    Ok(())
}

fn ok(json: bool) -> String {
    if json {
        "{}\n".into()
    } else {
        "ok\n".into()
    }
}

fn enum_name<E: Enum + std::fmt::Debug>(v: protobuf::EnumOrUnknown<E>, prefix: &str) -> String {
    match v.enum_value() {
        Ok(e) => format!("{e:?}")
            .trim_start_matches(prefix)
            .to_ascii_lowercase(),
        Err(n) => format!("unknown({n})"),
    }
}

/// Left-aligned columns separated by two spaces; trailing spaces trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<width$}  ", c, width = w[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn feature_names(bits: u64) -> String {
    let mut names: Vec<String> = [
        (features::POLICY_LIMITS, "policy-limits"),
        (features::CONNECTION_FILTER, "connection-filter"),
        (features::EVENTS, "events"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n.to_string())
    .collect();
    let unknown = bits & !features::ALL;
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn render_caps(c: &Capabilities) -> String {
    format!(
        "protocol {}.{}\nfeatures {} ({:#x})\nserver {}\n",
        c.protocol_major,
        c.protocol_minor,
        feature_names(c.supported_features),
        c.supported_features,
        c.server_version
    )
}

fn render_status(s: &DevStatus) -> String {
    let rows: Vec<Vec<String>> = s
        .vms
        .iter()
        .map(|v| {
            vec![
                v.guest_cid.to_string(),
                enum_name(v.state, "DEVICE_STATE_"),
                enum_name(v.iotlb_mode, "IOTLB_MODE_"),
                format!("{:#018x}", v.negotiated_features),
                v.connections.to_string(),
                v.generation.to_string(),
                v.config.socket.clone(),
            ]
        })
        .collect();
    format!(
        "uptime {}.{:03}s  version {}\n{}",
        s.uptime_ms / 1000,
        s.uptime_ms % 1000,
        s.version,
        table(
            &["CID", "STATE", "IOTLB", "FEATURES", "CONNS", "GEN", "SOCKET"],
            &rows
        )
    )
}

fn render_connections(l: &ConnectionList) -> String {
    let rows: Vec<Vec<String>> = l
        .connections
        .iter()
        .map(|c| {
            // Bytes we may still send: the guest's buffer minus what is in flight.
            let in_flight = (c.bytes_to_guest as u32).wrapping_sub(c.peer_fwd_cnt);
            let credit = c.peer_buf_alloc.saturating_sub(in_flight);
            vec![
                c.guest_cid.to_string(),
                c.guest_port.to_string(),
                c.host_port.to_string(),
                enum_name(c.state, "CONNECTION_STATE_"),
                enum_name(c.route, "ROUTE_KIND_"),
                if c.host_initiated { "host" } else { "guest" }.to_string(),
                c.bytes_from_guest.to_string(),
                c.bytes_to_guest.to_string(),
                credit.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "CID",
            "GUEST_PORT",
            "HOST_PORT",
            "STATE",
            "ROUTE",
            "OPENED_BY",
            "FROM_GUEST",
            "TO_GUEST",
            "CREDIT",
        ],
        &rows,
    )
}

fn render_metrics(m: &Metrics) -> String {
    let rows: Vec<Vec<String>> = m
        .counters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.guest_cid == 0 {
                    "-".into()
                } else {
                    c.guest_cid.to_string()
                },
                c.value.to_string(),
            ]
        })
        .collect();
    table(&["COUNTER", "CID", "VALUE"], &rows)
}

fn any<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "*".into())
}

fn render_routes(r: &[RouteInfo]) -> String {
    let rows: Vec<Vec<String>> = r
        .iter()
        .map(|i| {
            vec![
                if i.guest_cid == 0 {
                    "*".into()
                } else {
                    i.guest_cid.to_string()
                },
                if i.host_port == 0 {
                    "*".into()
                } else {
                    i.host_port.to_string()
                },
                enum_name(i.kind, "ROUTE_KIND_"),
                i.detail.clone(),
            ]
        })
        .collect();
    table(&["CID", "PORT", "ROUTE", "DETAIL"], &rows)
}

fn render_policy(p: &PolicyList) -> String {
    let rows: Vec<Vec<String>> = p
        .rules
        .iter()
        .map(|r| {
            let action = match r.action.enum_value() {
                Ok(PolicyAction::POLICY_ACTION_DENY) => "deny".to_string(),
                Ok(_) => "allow".to_string(),
                Err(n) => format!("unknown({n})"),
            };
            vec![
                any(r.guest_cid),
                any(r.host_port),
                action,
                r.limits
                    .as_ref()
                    .map(|l| l.max_connections.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.reason.clone(),
            ]
        })
        .collect();
    table(&["CID", "PORT", "ACTION", "MAX_CONNS", "REASON"], &rows)
}
