//! A scriptable [`DeviceControl`] for tests of the control plane (and of the plugin's wiring).

use std::sync::Mutex;

use crate::api::{ControlError, DeviceControl};
use crate::proto::config::{IotlbPolicy, VmConfig};
use crate::proto::control::{
    ConnectionInfo, ConnectionState, Counter, DeviceState, IotlbMode, Metrics, PolicyRule,
    RouteKind, Status, VmStatus,
};

/// A device with fixed contents; records policy and reset calls.
#[derive(Debug, Default)]
pub struct FakeDevice {
    /// Returned by `status()`.
    pub status: Mutex<Status>,
    /// Returned by `connections()`.
    pub connections: Mutex<Vec<ConnectionInfo>>,
    /// Returned by `metrics()`.
    pub metrics: Mutex<Metrics>,
    /// The last table given to `apply_policy`.
    pub policy: Mutex<Vec<PolicyRule>>,
    /// Every `reset_connection` call that found its connection.
    pub resets: Mutex<Vec<(u64, u32, u32)>>,
    /// Whether `enforces_policy_limits` says yes.
    pub limits: bool,
}

impl FakeDevice {
    /// Two VMs (CIDs 3 and 4) and three connections with known values.
    pub fn sample() -> Self {
        let vm = |cid: u64, state: DeviceState, iotlb: IotlbMode, conns: u32| VmStatus {
            guest_cid: cid,
            state: state.into(),
            negotiated_features: 0x1_0000_0003,
            protocol_features: 0x8000,
            iotlb_mode: iotlb.into(),
            connections: conns,
            config: Some(VmConfig {
                guest_cid: cid,
                socket: format!("/run/vm{cid}/vhost.sock"),
                uds_path: format!("/run/vm{cid}/vsock"),
                iotlb: if iotlb == IotlbMode::IOTLB_MODE_TRANSLATING {
                    IotlbPolicy::IOTLB_POLICY_AUTO.into()
                } else {
                    IotlbPolicy::IOTLB_POLICY_UNSPECIFIED.into()
                },
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let conn =
            |cid, gp, hp, state: ConnectionState, from, to, route: RouteKind| ConnectionInfo {
                guest_cid: cid,
                guest_port: gp,
                host_port: hp,
                state: state.into(),
                bytes_from_guest: from,
                bytes_to_guest: to,
                buf_alloc: 262144,
                fwd_cnt: from as u32,
                peer_buf_alloc: 65536,
                peer_fwd_cnt: to as u32,
                route: route.into(),
                ..Default::default()
            };
        FakeDevice {
            status: Mutex::new(Status {
                uptime_ms: 61_000,
                vms: vec![
                    vm(
                        3,
                        DeviceState::DEVICE_STATE_RUNNING,
                        IotlbMode::IOTLB_MODE_OFF,
                        2,
                    ),
                    vm(
                        4,
                        DeviceState::DEVICE_STATE_WAITING_FRONTEND,
                        IotlbMode::IOTLB_MODE_TRANSLATING,
                        1,
                    ),
                ],
                version: "test".into(),
                ..Default::default()
            }),
            connections: Mutex::new(vec![
                conn(
                    3,
                    1024,
                    5000,
                    ConnectionState::CONNECTION_STATE_ESTABLISHED,
                    100,
                    200,
                    RouteKind::ROUTE_KIND_UNIX,
                ),
                conn(
                    3,
                    1025,
                    6000,
                    ConnectionState::CONNECTION_STATE_CONNECTING,
                    0,
                    0,
                    RouteKind::ROUTE_KIND_BINDER_SERVICE,
                ),
                conn(
                    4,
                    2048,
                    5000,
                    ConnectionState::CONNECTION_STATE_CLOSING,
                    4096,
                    8192,
                    RouteKind::ROUTE_KIND_UNIX,
                ),
            ]),
            metrics: Mutex::new(Metrics {
                uptime_ms: 61_000,
                counters: vec![
                    Counter {
                        name: "rx_packets".into(),
                        value: 42,
                        guest_cid: 3,
                        ..Default::default()
                    },
                    Counter {
                        name: "tx_packets".into(),
                        value: 7,
                        guest_cid: 3,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl DeviceControl for FakeDevice {
    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn connections(&self) -> Vec<ConnectionInfo> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn metrics(&self) -> Metrics {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn apply_policy(&self, rules: &[PolicyRule]) -> Result<(), ControlError> {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = rules.to_vec();
        Ok(())
    }
    fn reset_connection(
        &self,
        cid: u64,
        guest_port: u32,
        host_port: u32,
    ) -> Result<(), ControlError> {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let before = conns.len();
        conns.retain(|c| {
            !(c.guest_cid == cid && c.guest_port == guest_port && c.host_port == host_port)
        });
        if conns.len() == before {
            return Err(ControlError::NotFound(format!(
                "no connection cid {cid} {guest_port}->{host_port}"
            )));
        }
        self.resets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((cid, guest_port, host_port));
        Ok(())
    }
    fn enforces_policy_limits(&self) -> bool {
        self.limits
    }
}
