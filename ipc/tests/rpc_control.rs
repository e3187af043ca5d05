//! IDeviceControl over binder RPC on a Unix socket: capabilities, status, policy, routes, events,
//! caller allow-list, `ctl` output.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use vsock_plugin_ipc::aidl::ErrorCode::ErrorCode;
use vsock_plugin_ipc::aidl::IDeviceControl::IDeviceControl;
use vsock_plugin_ipc::aidl::IDeviceEventListener::IDeviceEventListener;
use vsock_plugin_ipc::aidl_crate::binder::{
    ExceptionCode, Interface, Result as BinderResult, Status, StatusCode,
};
use vsock_plugin_ipc::ctl;
use vsock_plugin_ipc::host::HostService;
use vsock_plugin_ipc::platform;
use vsock_plugin_ipc::proto::control::*;
use vsock_plugin_ipc::proto::{decode, encode, features};
use vsock_plugin_ipc::testing::FakeDevice;
use vsock_plugin_ipc::{AllowList, PortResolver, Route};

fn service_error(s: &Status) -> (ExceptionCode, i32, String) {
    (
        s.exception_code(),
        s.service_specific_error(),
        s.message().unwrap_or("").to_string(),
    )
}

#[test]
fn capabilities_are_exact() {
    let f = serve();
    let (c, _h) = control(&f);
    assert_eq!(c.getInterfaceVersion().unwrap(), 1);
    let caps: Capabilities = decode(&c.getCapabilities().unwrap()).unwrap();
    assert_eq!((caps.protocol_major, caps.protocol_minor), (1, 0));
    assert_eq!(
        caps.supported_features,
        features::CONNECTION_FILTER | features::EVENTS
    );
    assert_eq!(caps.server_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(caps.caps.len(), 2);
    match &caps.caps[0].cap {
        Some(capability::Cap::Policy(p)) => assert_eq!((p.version, p.max_rules), (1, 4096)),
        other => panic!("{other:?}"),
    }
    match &caps.caps[1].cap {
        Some(capability::Cap::Iotlb(i)) => assert_eq!(
            i.policies.iter().map(|p| p.value()).collect::<Vec<_>>(),
            vec![1, 2, 3]
        ),
        other => panic!("{other:?}"),
    }
    // A device enforcing limits advertises FEATURE_POLICY_LIMITS too.
    let f2 = serve_with(
        FakeDevice {
            limits: true,
            ..FakeDevice::sample()
        },
        AllowList::new([my_uid()]),
    );
    let (c2, _h2) = control(&f2);
    let caps2: Capabilities = decode(&c2.getCapabilities().unwrap()).unwrap();
    assert_eq!(caps2.supported_features, features::ALL);
}

#[test]
fn status_connections_metrics_round_trip() {
    let f = serve();
    let (c, _h) = control(&f);
    let s: vsock_plugin_ipc::proto::control::Status = decode(&c.getStatus(&[]).unwrap()).unwrap();
    assert_eq!(s, *f.device.status.lock().unwrap());
    let l: ConnectionList = decode(&c.listConnections(&[]).unwrap()).unwrap();
    assert_eq!(l.connections, *f.device.connections.lock().unwrap());
    // Filter, announced as required.
    let req = ListConnectionsRequest {
        required_features: features::CONNECTION_FILTER,
        guest_cid: Some(4),
        ..Default::default()
    };
    let l: ConnectionList = decode(&c.listConnections(&encode(&req)).unwrap()).unwrap();
    assert_eq!(
        l.connections
            .iter()
            .map(|c| (c.guest_cid, c.guest_port))
            .collect::<Vec<_>>(),
        vec![(4, 2048)]
    );
    let m: Metrics = decode(&c.getMetrics(&[]).unwrap()).unwrap();
    assert_eq!(m.uptime_ms, 61_000);
    assert_eq!(
        (
            m.counters[0].name.as_str(),
            m.counters[0].value,
            m.counters[0].guest_cid
        ),
        ("rx_packets", 42, 3)
    );
    assert!(m
        .counters
        .iter()
        .any(|c| c.name == "control.registrations" && c.value == 0));
}

#[test]
fn reset_connection() {
    let f = serve();
    let (c, _h) = control(&f);
    c.resetConnection(3, 1024, 5000).unwrap();
    assert_eq!(*f.device.resets.lock().unwrap(), vec![(3, 1024, 5000)]);
    let e = c.resetConnection(3, 1024, 5000).unwrap_err();
    assert_eq!(
        service_error(&e),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::NOT_FOUND.0,
            "not found: no connection cid 3 1024->5000".into()
        )
    );
}

#[test]
fn policy_deny_routes_deny_and_is_reported() {
    let f = serve();
    let (c, _h) = control(&f);
    let _svc = HostService::register(&f.uri, 5000, None, "echo", |_| echo_upper_socket()).unwrap();
    let req = SetPolicyRequest {
        rules: vec![PolicyRule {
            guest_cid: Some(3),
            host_port: Some(5000),
            action: PolicyAction::POLICY_ACTION_DENY.into(),
            reason: "blocked for cid 3".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.setPolicy(&encode(&req)).unwrap();
    assert_eq!(f.device.policy.lock().unwrap().len(), 1);
    match f.plane.route(3, 1, 5000) {
        Route::Deny(r) => assert_eq!(r, "blocked for cid 3"),
        other => panic!("expected Deny, got {other:?}"),
    }
    // Other guests still reach the service.
    assert!(matches!(f.plane.route(4, 1, 5000), Route::Fd(_)));
    // A wildcard-port deny for cid 4 applies to unregistered ports, but the exact registration
    // rule order is policy first: cid 4 port 5000 is denied too.
    let req = SetPolicyRequest {
        rules: vec![PolicyRule {
            guest_cid: Some(4),
            action: PolicyAction::POLICY_ACTION_DENY.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.setPolicy(&encode(&req)).unwrap();
    match f.plane.route(4, 1, 6000) {
        Route::Deny(r) => assert_eq!(r, "denied by policy for cid 4 port 6000"),
        other => panic!("{other:?}"),
    }
    let explain = |cid, port| -> RouteInfo {
        let r = ExplainRouteRequest {
            guest_cid: cid,
            host_port: port,
            ..Default::default()
        };
        decode(&c.explainRoute(&encode(&r)).unwrap()).unwrap()
    };
    let e = explain(3, 5000);
    assert_eq!(
        (e.kind.value(), e.detail.as_str()),
        (RouteKind::ROUTE_KIND_DENIED as i32, "blocked for cid 3")
    );
    let e = explain(5, 5000);
    assert_eq!(
        (e.kind.value(), e.detail.as_str()),
        (RouteKind::ROUTE_KIND_BINDER_SERVICE as i32, "echo")
    );
    let e = explain(3, 22);
    assert_eq!(
        (e.kind.value(), e.detail.as_str()),
        (RouteKind::ROUTE_KIND_UNIX as i32, "/run/vm3/vsock_22")
    );

    let p: PolicyList = decode(&c.getPolicy(&[]).unwrap()).unwrap();
    assert_eq!(p.rules.len(), 2);
    // Clear: replace_all with no rules.
    c.setPolicy(&encode(&SetPolicyRequest {
        replace_all: true,
        ..Default::default()
    }))
    .unwrap();
    assert!(matches!(f.plane.route(3, 1, 5000), Route::Fd(_)));
    assert!(matches!(f.plane.route(4, 1, 6000), Route::Unix));
}

#[test]
fn policy_validation_errors_are_specific() {
    let f = serve();
    let (c, _h) = control(&f);
    let set = |rule: PolicyRule, required: u64| {
        let req = SetPolicyRequest {
            required_features: required,
            rules: vec![rule],
            ..Default::default()
        };
        service_error(&c.setPolicy(&encode(&req)).unwrap_err())
    };
    let mut r = PolicyRule::new();
    r.action = protobuf::EnumOrUnknown::from_i32(9);
    assert_eq!(
        set(r, 0),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::INVALID_ARGUMENT.0,
            "rule 0: unknown action 9".into()
        )
    );
    let r = PolicyRule {
        guest_cid: Some(2),
        ..Default::default()
    };
    assert_eq!(set(r, 0).2, "rule 0: guest_cid 2 is not a guest CID");
    // Limits without the feature bit: refused (an old server would have ignored them silently).
    let r = PolicyRule {
        limits: Some(PolicyLimits {
            max_connections: 1,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    assert_eq!(
        set(r.clone(), 0).2,
        "rule 0: limits set without FEATURE_POLICY_LIMITS in required_features"
    );
    // With the bit, against a device that does not enforce limits: UNSUPPORTED_FEATURE.
    assert_eq!(
        set(r, features::POLICY_LIMITS),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::UNSUPPORTED_FEATURE.0,
            "unsupported required features 0x1".into()
        )
    );
    assert!(
        f.device.policy.lock().unwrap().is_empty(),
        "nothing applied"
    );
}

#[test]
fn routes_list_reports_every_mapping() {
    let f = serve();
    let (c, _h) = control(&f);
    let svc = HostService::register(&f.uri, 5000, Some(3), "adb", |_| echo_upper_socket()).unwrap();
    let dead = HostService::register(&f.uri, 6000, None, "gone", |_| echo_upper_socket()).unwrap();
    dead.abandon();
    wait_until("death", || f.plane.registration_count() == 1);
    let req = SetPolicyRequest {
        rules: vec![PolicyRule {
            host_port: Some(22),
            action: PolicyAction::POLICY_ACTION_DENY.into(),
            reason: "no ssh".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.setPolicy(&encode(&req)).unwrap();
    let out = ctl::run_on(&c, &["routes"]).unwrap();
    assert_eq!(
        out,
        "CID  PORT  ROUTE           DETAIL\n\
         3    *     unix            /run/vm3/vsock_<port> (default)\n\
         4    *     unix            /run/vm4/vsock_<port> (default)\n\
         3    5000  binder_service  adb\n\
         *    6000  denied          host service \"gone\" for port 6000 died\n\
         *    22    denied          no ssh\n"
    );
    // Re-registering the dead port replaces the tombstone.
    let _again =
        HostService::register(&f.uri, 6000, None, "back", |_| echo_upper_socket()).unwrap();
    assert!(matches!(f.plane.route(3, 1, 6000), Route::Fd(_)));
    drop(svc);
}

#[test]
fn duplicate_registration_is_refused() {
    let f = serve();
    let _a = HostService::register(&f.uri, 5000, None, "a", |_| echo_upper_socket()).unwrap();
    let e = HostService::register(&f.uri, 5000, None, "b", |_| echo_upper_socket()).unwrap_err();
    assert_eq!(
        service_error(&e),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::ALREADY_REGISTERED.0,
            "port 5000 (cid None) is registered by \"a\"".into()
        )
    );
    // Same port for one CID only is a different key, and wins for that CID.
    let _c =
        HostService::register(&f.uri, 5000, Some(3), "c", |_| Err("c refuses".into())).unwrap();
    match f.plane.route(3, 1, 5000) {
        Route::Deny(r) => assert_eq!(r, "refused by service \"c\": c refuses"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.plane.route(4, 1, 5000), Route::Fd(_)));
    let e =
        HostService::register(&f.uri, 5000, Some(2), "bad", |_| echo_upper_socket()).unwrap_err();
    assert_eq!(service_error(&e).1, ErrorCode::INVALID_ARGUMENT.0);
}

#[test]
fn caller_outside_allow_list_is_rejected() {
    let other = my_uid().wrapping_add(4242);
    let f = serve_with(FakeDevice::sample(), AllowList::new([other]));
    // Over RPC the peer uid (SO_PEERCRED) is checked when the connection is set up.
    // rsbinder's server closes a refused connection: the client sees DEAD_OBJECT.
    let e = platform::connect_control(&f.uri, false, Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(e, StatusCode::DeadObject);
    let e = HostService::register(&f.uri, 5000, None, "x", |_| echo_upper_socket()).unwrap_err();
    assert_eq!(
        (e.exception_code(), e.transaction_error()),
        (ExceptionCode::TransactionFailed, StatusCode::DeadObject)
    );
    let out = ctl::run(&["--uri", &f.uri.to_string(), "status"]).unwrap_err();
    assert_eq!(
        out,
        ctl::CtlError::Connect(format!("{}: DeadObject", f.uri))
    );
    assert_eq!(f.plane.registration_count(), 0);
}

#[test]
fn per_call_check_without_transport_gate() {
    // Called directly (no transaction): the calling uid is our own, which is not allowed.
    let other = my_uid().wrapping_add(4242);
    let plane = vsock_plugin_ipc::ControlPlane::new(
        std::sync::Arc::new(FakeDevice::sample()),
        AllowList::new([other]),
    );
    let e = plane.control_service().getCapabilities().unwrap_err();
    assert_eq!(e.exception_code(), ExceptionCode::Security);
    assert_eq!(
        e.message().unwrap(),
        format!(
            "uid {} is not allowed to use the vsock control services",
            my_uid()
        )
    );
}

struct Collect(std::sync::Mutex<mpsc::Sender<Vec<u8>>>);
impl Interface for Collect {}
impl IDeviceEventListener for Collect {
    fn onEvent(&self, e: &[u8]) -> BinderResult<()> {
        self.0.lock().unwrap().send(e.to_vec()).unwrap();
        Ok(())
    }
}

#[test]
fn events_reach_a_oneway_listener() {
    let f = serve();
    let (c, mut h) = platform::connect_control(&f.uri, true, Some(Duration::from_secs(5))).unwrap();
    let (tx, rx) = mpsc::channel();
    let l = platform::new_listener_binder(Collect(std::sync::Mutex::new(tx)));
    c.registerEventListener(&l).unwrap();
    assert_eq!(f.plane.listener_count(), 1);
    f.plane
        .connection_opened(3, 1024, 5000, false, RouteKind::ROUTE_KIND_BINDER_SERVICE);
    f.plane
        .device_state_changed(3, DeviceState::DEVICE_STATE_STOPPED);
    let e1: Event = decode(&rx.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    let Some(event::Kind::ConnectionOpened(o)) = &e1.kind else {
        panic!("{e1:?}")
    };
    assert_eq!(
        (o.guest_cid, o.guest_port, o.host_port, o.route.value()),
        (3, 1024, 5000, 2)
    );
    let e2: Event = decode(&rx.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    let Some(event::Kind::DeviceState(d)) = &e2.kind else {
        panic!("{e2:?}")
    };
    assert_eq!(
        (d.guest_cid, d.state.value()),
        (3, DeviceState::DEVICE_STATE_STOPPED as i32)
    );
    c.unregisterEventListener(&l).unwrap();
    assert_eq!(f.plane.listener_count(), 0);
    assert_eq!(
        service_error(&c.unregisterEventListener(&l).unwrap_err()).1,
        ErrorCode::NOT_FOUND.0
    );
    // A listener whose process goes away is dropped (death notification).
    c.registerEventListener(&l).unwrap();
    h.close();
    wait_until("listener death", || f.plane.listener_count() == 0);
}

/// F5 (fuzz finding): the 4096-rule limit was checked only after matching every rule (a linear
/// search each, under the policy write lock): 80k rules took 45 s. The count is now checked
/// before any per-rule work: a request of 4097 rules whose last rule is invalid gets the count
/// error, not that rule's error, and the table is unchanged.
#[test]
fn set_policy_refuses_too_many_rules_before_any_work() {
    let f = serve();
    let (c, _h) = control(&f);
    let mut rules: Vec<PolicyRule> = (0..4096u32)
        .map(|p| PolicyRule {
            host_port: Some(p),
            action: PolicyAction::POLICY_ACTION_DENY.into(),
            ..Default::default()
        })
        .collect();
    let mut bad = PolicyRule::new();
    bad.action = protobuf::EnumOrUnknown::from_i32(9);
    rules.push(bad);
    let req = SetPolicyRequest {
        rules,
        ..Default::default()
    };
    assert_eq!(
        service_error(&c.setPolicy(&encode(&req)).unwrap_err()),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::INVALID_ARGUMENT.0,
            "request holds 4097 rules; a policy holds at most 4096".into()
        )
    );
    assert!(f.device.policy.lock().unwrap().is_empty());
    // Exactly 4096 distinct rules fit; one more distinct key on top does not.
    let full = SetPolicyRequest {
        rules: req.rules[..4096].to_vec(),
        ..Default::default()
    };
    c.setPolicy(&encode(&full)).unwrap();
    assert_eq!(f.device.policy.lock().unwrap().len(), 4096);
    assert!(matches!(f.plane.route(3, 1, 4095), Route::Deny(_)));
    let one_more = SetPolicyRequest {
        rules: vec![PolicyRule {
            guest_cid: Some(3),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        service_error(&c.setPolicy(&encode(&one_more)).unwrap_err()).2,
        "policy would hold more than 4096 rules; at most 4096"
    );
}

/// A device whose `apply_policy` checks that routing (which reads the policy) still answers
/// while a policy change is being applied.
struct RoutingProbe {
    inner: FakeDevice,
    plane: std::sync::OnceLock<vsock_plugin_ipc::ControlPlane>,
    routed_during_apply: std::sync::Mutex<Vec<bool>>,
}

impl vsock_plugin_ipc::DeviceControl for RoutingProbe {
    fn status(&self) -> vsock_plugin_ipc::proto::control::Status {
        self.inner.status()
    }
    fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner.connections()
    }
    fn metrics(&self) -> Metrics {
        self.inner.metrics()
    }
    fn apply_policy(&self, rules: &[PolicyRule]) -> Result<(), vsock_plugin_ipc::ControlError> {
        if let Some(plane) = self.plane.get().cloned() {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(plane.route(3, 1, 7));
            });
            // Generous: routing takes microseconds unless it is blocked on the policy lock.
            let answered = rx.recv_timeout(Duration::from_secs(10)).is_ok();
            self.routed_during_apply.lock().unwrap().push(answered);
        }
        self.inner.apply_policy(rules)
    }
    fn reset_connection(
        &self,
        cid: u64,
        guest_port: u32,
        host_port: u32,
    ) -> Result<(), vsock_plugin_ipc::ControlError> {
        self.inner.reset_connection(cid, guest_port, host_port)
    }
}

/// F5: setPolicy held the policy write lock while it matched rules and called the device, so
/// every guest connect (route) waited for it.
#[test]
fn routing_does_not_wait_for_a_policy_change() {
    let device = std::sync::Arc::new(RoutingProbe {
        inner: FakeDevice::sample(),
        plane: Default::default(),
        routed_during_apply: Default::default(),
    });
    let plane = vsock_plugin_ipc::ControlPlane::new(device.clone(), AllowList::new([my_uid()]));
    let _ = device.plane.set(plane.clone());
    let dir = tempfile::tempdir().unwrap();
    let uri = platform::ControlUri::parse(&format!(
        "unix://{}#test",
        dir.path().join("ctl.sock").display()
    ))
    .unwrap();
    let _server = plane.serve(&uri, &Default::default()).unwrap();
    let (c, _h) = platform::connect_control(&uri, false, Some(Duration::from_secs(5))).unwrap();
    let req = SetPolicyRequest {
        rules: vec![PolicyRule {
            guest_cid: Some(3),
            action: PolicyAction::POLICY_ACTION_DENY.into(),
            reason: "probe".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.setPolicy(&encode(&req)).unwrap();
    assert_eq!(*device.routed_during_apply.lock().unwrap(), [true]);
    // The change took effect once applied.
    assert!(matches!(plane.route(3, 1, 7), Route::Deny(r) if r == "probe"));
}
