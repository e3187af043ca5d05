//! `vsock-plugin ctl ...`: a client of `IDeviceControl` that prints tables or JSON.
//!
//! ```text
//! ctl [--uri URI] [--json] COMMAND
//!   caps                               protocol version and supported features
//!   status                             VMs, negotiated features, IOTLB mode, uptime
//!   connections [--cid CID]            live connections
//!   metrics                            counters
//!   routes                             which mapping serves which port
//!   route CID PORT                     the mapping a guest connection would get now
//!   policy list
//!   policy allow|deny [--cid CID] [--port PORT] [--reason TEXT] [--max-connections N]
//!   policy clear
//!   reset CID GUEST_PORT HOST_PORT     reset one connection
//! ```
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

/// Usage text.
pub const USAGE: &str = "usage: ctl [--uri URI] [--json] COMMAND
  caps | status | connections [--cid CID] | metrics | routes | route CID PORT
  policy list | policy allow|deny [--cid CID] [--port PORT] [--reason TEXT] [--max-connections N]
  policy clear | reset CID GUEST_PORT HOST_PORT
URI: binder://NAME or unix:///path#NAME (default: $VSOCK_PLUGIN_CONTROL, else binder://default)";

/// Why a ctl command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlError {
    /// Bad command line (exit status 2).
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
            CtlError::Usage(m) => write!(f, "{m}\n{USAGE}"),
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

fn usage(m: impl Into<String>) -> CtlError {
    CtlError::Usage(m.into())
}

fn num<T: std::str::FromStr>(what: &str, v: Option<&String>) -> Result<T, CtlError> {
    let v = v.ok_or_else(|| usage(format!("missing {what}")))?;
    v.parse()
        .map_err(|_| usage(format!("{what} {v:?} is not a number")))
}

/// The control URI used when `--uri` is absent.
pub fn default_uri() -> String {
    std::env::var(URI_ENV).unwrap_or_else(|_| DEFAULT_URI.to_string())
}

/// Run `ctl` with `args` (without the program and `ctl` words). Returns the text to print.
pub fn run<S: AsRef<str>>(args: &[S]) -> Result<String, CtlError> {
    let mut uri = None;
    let mut json = false;
    let mut rest: Vec<String> = Vec::new();
    let mut it = args.iter().map(|a| a.as_ref().to_string());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--uri" => uri = Some(it.next().ok_or_else(|| usage("--uri needs a value"))?),
            "--json" => json = true,
            "-h" | "--help" => return Ok(USAGE.to_string()),
            _ => rest.push(a),
        }
    }
    let Some(cmd) = rest.first().cloned() else {
        return Err(usage("no command"));
    };
    let uri = ControlUri::parse(&uri.unwrap_or_else(default_uri)).map_err(usage)?;
    // Check the command line before connecting.
    let cmd = Command::parse(&cmd, &rest[1..])?;
    let (svc, _session) = platform::connect_control(&uri, false, Some(Duration::from_secs(10)))
        .map_err(|e| CtlError::Connect(format!("{uri}: {e:?}")))?;
    execute(&*svc, &cmd, json)
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Caps,
    Status,
    Connections {
        cid: Option<u64>,
    },
    Metrics,
    Routes,
    Route {
        cid: u64,
        port: u32,
    },
    PolicyList,
    PolicySet {
        action: PolicyAction,
        cid: Option<u64>,
        port: Option<u32>,
        reason: String,
        max_connections: Option<u32>,
    },
    PolicyClear,
    Reset {
        cid: u64,
        guest_port: u32,
        host_port: u32,
    },
}

fn opts(args: &[String], allowed: &[&str]) -> Result<Vec<(String, String)>, CtlError> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !allowed.contains(&a.as_str()) {
            return Err(usage(format!("unexpected argument {a:?}")));
        }
        let v = it
            .next()
            .ok_or_else(|| usage(format!("{a} needs a value")))?;
        out.push((a.clone(), v.clone()));
    }
    Ok(out)
}

impl Command {
    fn parse(cmd: &str, args: &[String]) -> Result<Command, CtlError> {
        let positional = |n: usize| -> Result<(), CtlError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(usage(format!("{cmd} takes {n} argument(s)")))
            }
        };
        Ok(match cmd {
            "caps" => positional(0).map(|_| Command::Caps)?,
            "status" => positional(0).map(|_| Command::Status)?,
            "metrics" => positional(0).map(|_| Command::Metrics)?,
            "routes" => positional(0).map(|_| Command::Routes)?,
            "connections" => {
                let mut cid = None;
                for (_, v) in opts(args, &["--cid"])? {
                    cid = Some(num("--cid", Some(&v))?);
                }
                Command::Connections { cid }
            }
            "route" => {
                positional(2)?;
                Command::Route {
                    cid: num("CID", args.first())?,
                    port: num("PORT", args.get(1))?,
                }
            }
            "reset" => {
                positional(3)?;
                Command::Reset {
                    cid: num("CID", args.first())?,
                    guest_port: num("GUEST_PORT", args.get(1))?,
                    host_port: num("HOST_PORT", args.get(2))?,
                }
            }
            "policy" => match args.first().map(String::as_str) {
                Some("list") if args.len() == 1 => Command::PolicyList,
                Some("clear") if args.len() == 1 => Command::PolicyClear,
                Some(a @ ("allow" | "deny")) => {
                    let action = if a == "allow" {
                        PolicyAction::POLICY_ACTION_ALLOW
                    } else {
                        PolicyAction::POLICY_ACTION_DENY
                    };
                    let (mut cid, mut port, mut reason, mut max_connections) =
                        (None, None, String::new(), None);
                    for (k, v) in opts(
                        &args[1..],
                        &["--cid", "--port", "--reason", "--max-connections"],
                    )? {
                        match k.as_str() {
                            "--cid" => cid = Some(num("--cid", Some(&v))?),
                            "--port" => port = Some(num("--port", Some(&v))?),
                            "--reason" => reason = v,
                            _ => max_connections = Some(num("--max-connections", Some(&v))?),
                        }
                    }
                    Command::PolicySet {
                        action,
                        cid,
                        port,
                        reason,
                        max_connections,
                    }
                }
                _ => return Err(usage("policy list|clear|allow|deny ...")),
            },
            other => return Err(usage(format!("unknown command {other:?}"))),
        })
    }
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
        Command::PolicyList => {
            let p: PolicyList = reply("getPolicy", svc.getPolicy(&[]))?;
            show(json, &p, render_policy)?
        }
        Command::PolicySet {
            action,
            cid,
            port,
            reason,
            max_connections,
        } => {
            let mut req = SetPolicyRequest::new();
            let mut rule = PolicyRule {
                guest_cid: *cid,
                host_port: *port,
                action: (*action).into(),
                reason: reason.clone(),
                ..Default::default()
            };
            if let Some(n) = max_connections {
                if !has(features::POLICY_LIMITS) {
                    return Err(CtlError::Call(
                        "the server does not enforce policy limits (no FEATURE_POLICY_LIMITS)"
                            .into(),
                    ));
                }
                rule.limits = Some(PolicyLimits {
                    max_connections: *n,
                    ..Default::default()
                })
                .into();
                req.required_features |= features::POLICY_LIMITS;
            }
            req.rules.push(rule);
            svc.setPolicy(&encode(&req))
                .map_err(call_err("setPolicy"))?;
            ok(json)
        }
        Command::PolicyClear => {
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
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.iter().map(|a| a.as_ref().to_string());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--uri" => {
                it.next();
            }
            _ => rest.push(a),
        }
    }
    let Some(cmd) = rest.first().cloned() else {
        return Err(usage("no command"));
    };
    let cmd = Command::parse(&cmd, &rest[1..])?;
    execute(&**svc, &cmd, json)
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
