//! Version skew and malformed input over binder RPC.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use protobuf::Message;
use rsbinder::rpc::RpcProxy;
use rsbinder::{Parcel, SIBinder, FIRST_CALL_TRANSACTION};
use vsock_plugin_ipc::aidl::ErrorCode::ErrorCode;
use vsock_plugin_ipc::aidl::IDeviceControl::IDeviceControl;
use vsock_plugin_ipc::aidl::IDeviceEventListener::IDeviceEventListener;
use vsock_plugin_ipc::aidl_crate::binder::{
    ExceptionCode, Interface, Result as BinderResult, Status, StatusCode, Strong,
};
use vsock_plugin_ipc::ctl;
use vsock_plugin_ipc::platform;
use vsock_plugin_ipc::proto::control::*;
use vsock_plugin_ipc::proto::testing::*;
use vsock_plugin_ipc::proto::{decode, encode, features};
use vsock_plugin_ipc::{PortResolver, Route};

fn err(s: Status) -> (ExceptionCode, i32, String) {
    (
        s.exception_code(),
        s.service_specific_error(),
        s.message().unwrap_or("").to_string(),
    )
}

#[test]
fn old_client_policy_is_accepted_by_new_server() {
    let f = serve();
    let (c, _h) = control(&f);
    let v0 = SetPolicyRequestV0 {
        rules: vec![PolicyRuleV0 {
            guest_cid: Some(3),
            host_port: Some(80),
            action: 2,
            reason: "v0 deny".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.setPolicy(&v0.write_to_bytes().unwrap()).unwrap();
    match f.plane.route(3, 1, 80) {
        Route::Deny(r) => assert_eq!(r, "v0 deny"),
        other => panic!("{other:?}"),
    }
    // And the reply a new server gives an old client decodes with the fields it knows.
    let bytes = c.listConnections(&[]).unwrap();
    let old: ConnectionListV0 = decode(&bytes).unwrap();
    assert_eq!(
        old.connections
            .iter()
            .map(|c| (c.guest_cid, c.guest_port, c.host_port, c.state))
            .collect::<Vec<_>>(),
        vec![(3, 1024, 5000, 2), (3, 1025, 6000, 1), (4, 2048, 5000, 3)]
    );
}

#[test]
fn unknown_required_feature_is_rejected_by_every_request() {
    let f = serve();
    let (c, _h) = control(&f);
    let unknown = 1u64 << 40;
    let want = (
        ExceptionCode::ServiceSpecific,
        ErrorCode::UNSUPPORTED_FEATURE.0,
        "unsupported required features 0x10000000000".to_string(),
    );
    let with = |m: &mut dyn FnMut(u64) -> Vec<u8>| m(unknown | features::EVENTS);
    assert_eq!(
        err(c
            .getStatus(&with(&mut |r| encode(&StatusRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .getMetrics(&with(&mut |r| encode(&MetricsRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .listConnections(&with(&mut |r| encode(&ListConnectionsRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .getPolicy(&with(&mut |r| encode(&PolicyRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .listRoutes(&with(&mut |r| encode(&RoutesRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .explainRoute(&with(&mut |r| encode(&ExplainRouteRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    assert_eq!(
        err(c
            .setPolicy(&with(&mut |r| encode(&SetPolicyRequest {
                required_features: r,
                ..Default::default()
            })))
            .unwrap_err()),
        want
    );
    // The registry applies the same rule to ServiceRegistration.requiredFeatures.
    let (reg, _rh) = platform::connect_registry(&f.uri, None).unwrap();
    let cb = vsock_plugin_ipc::host::callback(|_| echo_upper_socket());
    let r = vsock_plugin_ipc::aidl::ServiceRegistration::ServiceRegistration {
        hostPort: 1,
        guestCid: -1,
        name: "x".into(),
        requiredFeatures: 1,
    };
    assert_eq!(
        err(reg.registerService(&r, &cb).unwrap_err()),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::UNSUPPORTED_FEATURE.0,
            "unsupported required features 0x1".into()
        )
    );
}

#[test]
fn newer_client_optional_field_is_ignored() {
    let f = serve();
    let (c, _h) = control(&f);
    let next = ListConnectionsRequestNext {
        include_recently_closed: true,
        ..Default::default()
    };
    let with_hint = c.listConnections(&next.write_to_bytes().unwrap()).unwrap();
    let plain = c.listConnections(&[]).unwrap();
    assert_eq!(with_hint, plain);
    let l: ConnectionList = decode(&with_hint).unwrap();
    assert_eq!(l.connections.len(), 3);
    // But a filter without its required bit is refused rather than silently ignored.
    let req = ListConnectionsRequest {
        guest_cid: Some(3),
        ..Default::default()
    };
    assert_eq!(
        err(c.listConnections(&encode(&req)).unwrap_err()),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::INVALID_ARGUMENT.0,
            "guest_cid filter set without FEATURE_CONNECTION_FILTER in required_features".into()
        )
    );
}

/// An "old server": advertises no features, ignores fields it does not know (as an old build
/// would), rejects any required bit. Records what it was sent.
struct OldServer {
    inner: Strong<dyn IDeviceControl>,
    seen: Arc<Mutex<Vec<ListConnectionsRequest>>>,
}
impl Interface for OldServer {}
impl IDeviceControl for OldServer {
    fn getCapabilities(&self) -> BinderResult<Vec<u8>> {
        Ok(encode(&Capabilities {
            protocol_major: 1,
            ..Default::default()
        }))
    }
    fn getStatus(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        self.inner.getStatus(r)
    }
    fn listConnections(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        let req: ListConnectionsRequest = decode(r).unwrap();
        self.seen.lock().unwrap().push(req.clone());
        if req.required_features != 0 {
            return Err(platform::service_error(
                ErrorCode::UNSUPPORTED_FEATURE.0,
                "old",
            ));
        }
        self.inner.listConnections(&[])
    }
    fn getMetrics(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        self.inner.getMetrics(r)
    }
    fn setPolicy(&self, r: &[u8]) -> BinderResult<()> {
        self.inner.setPolicy(r)
    }
    fn getPolicy(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        self.inner.getPolicy(r)
    }
    fn listRoutes(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        self.inner.listRoutes(r)
    }
    fn explainRoute(&self, r: &[u8]) -> BinderResult<Vec<u8>> {
        self.inner.explainRoute(r)
    }
    fn resetConnection(&self, a: i64, b: i32, c: i32) -> BinderResult<()> {
        self.inner.resetConnection(a, b, c)
    }
    fn registerEventListener(&self, l: &Strong<dyn IDeviceEventListener>) -> BinderResult<()> {
        self.inner.registerEventListener(l)
    }
    fn unregisterEventListener(&self, l: &Strong<dyn IDeviceEventListener>) -> BinderResult<()> {
        self.inner.unregisterEventListener(l)
    }
}

#[test]
fn new_client_against_old_server_uses_only_advertised_features() {
    let f = serve();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let old = platform::new_control_binder(OldServer {
        inner: platform::new_control_binder(f.plane.control_service()),
        seen: seen.clone(),
    });
    let out = ctl::run_on(&old, &["connections", "--cid", "4"]).unwrap();
    assert_eq!(
        out,
        "CID  GUEST_PORT  HOST_PORT  STATE    ROUTE  OPENED_BY  FROM_GUEST  TO_GUEST  CREDIT\n\
         4    2048        5000       closing  unix   guest      4096        8192      65536\n"
    );
    // The client never sent the filter nor its feature bit to a server that did not offer it.
    assert_eq!(*seen.lock().unwrap(), vec![ListConnectionsRequest::new()]);
    // Against the new server the filter is sent (and applied by the server).
    let (c, _h) = control(&f);
    assert_eq!(
        ctl::run_on(&c, &["connections", "--cid", "4"]).unwrap(),
        out
    );
    // A client that needs limits gets a clear error before sending anything.
    assert_eq!(
        ctl::run_on(
            &old,
            &["policy", "deny", "--port", "1", "--max-connections", "1"]
        )
        .unwrap_err(),
        ctl::CtlError::Call(
            "the server does not enforce policy limits (no FEATURE_POLICY_LIMITS)".into()
        )
    );
}

fn proxy(c: &Strong<dyn IDeviceControl>) -> SIBinder {
    c.as_binder()
}

fn raw(
    b: &SIBinder,
    code: u32,
    fill: impl FnOnce(&mut Parcel),
) -> Result<Option<Parcel>, StatusCode> {
    let rp = (**b).as_any().downcast_ref::<RpcProxy>().expect("RpcProxy");
    let mut d = rp.build_request("android.vsockplugin.IDeviceControl")?;
    fill(&mut d);
    rp.transact(code, &d, 0)
}

/// AIDL methods are numbered from FIRST_CALL_TRANSACTION in declaration order.
const GET_STATUS: u32 = FIRST_CALL_TRANSACTION + 1;

#[test]
fn unknown_method_is_unknown_transaction() {
    // What a newer client sees calling a method an older server does not have.
    let f = serve();
    let (c, _h) = control(&f);
    let r = raw(&proxy(&c), FIRST_CALL_TRANSACTION + 50, |_| {});
    assert_eq!(r.err(), Some(StatusCode::UnknownTransaction));
}

#[test]
fn malformed_parcels_and_payloads_give_errors() {
    let f = serve();
    let (c, _h) = control(&f);
    let b = proxy(&c);
    // A well-formed parcel whose byte[] is not a StatusRequest: service-specific INVALID_ARGUMENT.
    let mut reply = raw(&b, GET_STATUS, |p| {
        p.write(&vec![0xffu8, 0xff, 0xff][..]).unwrap()
    })
    .unwrap()
    .unwrap();
    let st: Status = reply.read().unwrap();
    assert_eq!(
        (st.exception_code(), st.service_specific_error()),
        (
            ExceptionCode::ServiceSpecific,
            ErrorCode::INVALID_ARGUMENT.0
        )
    );
    // A byte[] length beyond the parcel: the stub fails the transaction.
    let r = raw(&b, GET_STATUS, |p| p.write_i32(1 << 30).unwrap());
    assert!(
        matches!(r, Err(StatusCode::NotEnoughData | StatusCode::BadValue)),
        "{:?}",
        r.as_ref().err()
    );
    // Random words into every method code: never a panic, the service stays up.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0;
    for round in 0..400u32 {
        let code = FIRST_CALL_TRANSACTION + (round % 11);
        if code == FIRST_CALL_TRANSACTION + 9 || code == FIRST_CALL_TRANSACTION + 10 {
            // (un)registerEventListener: random binder handles are refused by the parcel reader too,
            // but skip them to keep the sweep about payload decoding.
            continue;
        }
        let words = (next() % 8) as usize;
        let vals: Vec<i32> = (0..words).map(|_| next() as i32).collect();
        match raw(&b, code, |p| {
            vals.iter().for_each(|v| p.write_i32(*v).unwrap())
        }) {
            Ok(Some(mut reply)) => {
                let st: Status = reply.read().unwrap();
                if !st.is_ok() {
                    errors += 1;
                }
            }
            Ok(None) => panic!("two-way call without reply"),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 100, "{errors}");
    // Still serving.
    let caps: Capabilities = decode(&c.getCapabilities().unwrap()).unwrap();
    assert_eq!(caps.protocol_major, 1);
    // And the registry survived garbage as well: a regular registration still works.
    let _svc = vsock_plugin_ipc::host::HostService::register(&f.uri, 9, None, "after", |_| {
        echo_upper_socket()
    })
    .unwrap();
    assert!(matches!(f.plane.route(3, 1, 9), Route::Fd(_)));
}
