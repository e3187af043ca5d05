//! Protobuf control payloads: every message type a peer can send or answer with, through the
//! proto crate's `decode`, and every request through the control service's own decode paths
//! (`ControlService` methods, called directly as the plugin's own uid).
//! Invariants: no panic; whatever `decode` accepts re-encodes to bytes that decode to an equal
//! message (F4: rust-protobuf 3.7.2 corrupts packed negative enums on re-encoding).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use protobuf::MessageFull;
use vsock_plugin_ipc::aidl::IDeviceControl::IDeviceControl;
use vsock_plugin_ipc::proto::config::{PluginConfig, VmConfig};
use vsock_plugin_ipc::proto::control::*;
use vsock_plugin_ipc::proto::{decode, encode};
use vsock_plugin_ipc::service::ControlService;
use vsock_plugin_ipc::testing::FakeDevice;
use vsock_plugin_ipc::{AllowList, ControlPlane};

fn round_trip<M: MessageFull + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = decode::<M>(bytes) {
        let again = encode(&m);
        let back: M =
            decode(&again).unwrap_or_else(|e| panic!("re-encoding of {m:?} does not decode: {e}"));
        assert_eq!(back, m, "re-encoding changed the message");
    }
}

fn service() -> &'static ControlService {
    static SVC: OnceLock<ControlService> = OnceLock::new();
    SVC.get_or_init(|| {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        ControlPlane::new(Arc::new(FakeDevice::sample()), AllowList::new([me])).control_service()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 16 {
        0 => round_trip::<Capabilities>(bytes),
        1 => round_trip::<Status>(bytes),
        2 => round_trip::<ConnectionList>(bytes),
        3 => round_trip::<Metrics>(bytes),
        4 => round_trip::<SetPolicyRequest>(bytes),
        5 => round_trip::<PolicyList>(bytes),
        6 => round_trip::<RouteList>(bytes),
        7 => round_trip::<RouteInfo>(bytes),
        8 => round_trip::<Event>(bytes),
        9 => round_trip::<VmConfig>(bytes),
        10 => round_trip::<PluginConfig>(bytes),
        11 => round_trip::<ListConnectionsRequest>(bytes),
        _ => {
            let svc = service();
            let _ = match which % 4 {
                0 => svc.setPolicy(bytes).map(|()| Vec::new()),
                1 => svc.listConnections(bytes),
                2 => svc.explainRoute(bytes),
                _ => svc.getStatus(bytes),
            };
        }
    }
});
