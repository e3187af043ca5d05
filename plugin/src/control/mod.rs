//! The plugin's side of the control plane (`vsock-plugin-ipc`): what binder callers see of the
//! device, and how their decisions reach it.
//!
//! The data path stays lock-free: binder threads never touch a VM's state. They post a
//! [`Request`] to that VM's [`VmControl`] inbox and wake its worker, which answers between two
//! event-loop rounds. Route lookups (which may wait seconds for a registered host service) run on
//! a small resolver pool, and their answers come back the same way.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vsock_plugin_ipc::policy::PolicyTable;
use vsock_plugin_ipc::proto::control::{
    ConnectionInfo, ConnectionState, Counter, DeviceState, IotlbMode, Metrics, PolicyRule,
    RouteKind, Status, VmStatus,
};
use vsock_plugin_ipc::{ControlError, ControlPlane, DeviceControl, PortResolver, Route};

use crate::config::{MAX_TX_BUFFER_SIZE, MIN_TX_BUFFER_SIZE};
use crate::host::route::{
    ConnectionEvents, ConnectionLimits, HostRoute, PortLimits, RouteRequests,
};
use crate::vsock::status::{ConnKey, ConnSnapshot, State, Stats};

/// How long a binder caller waits for a VM's worker to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Route lookups running at once (each may wait for a host service).
const RESOLVER_THREADS: usize = 4;

/// What a VM's worker reports about itself.
#[derive(Debug, Clone)]
pub struct VmReport {
    pub state: DeviceState,
    pub features: u64,
    pub protocol_features: u64,
    pub translated: bool,
    pub connections: Vec<ConnSnapshot>,
    pub stats: Stats,
    /// Restores the device's state has been through (`crate::snapshot`).
    pub generation: u64,
}

pub enum Request {
    Report(SyncSender<VmReport>),
    Reset {
        key: ConnKey,
        reply: SyncSender<bool>,
    },
    Routed {
        key: ConnKey,
        route: HostRoute,
    },
}

/// One VM's mailbox, shared by its worker and the control threads.
pub struct VmControl {
    pub cid: u64,
    inbox: Mutex<VecDeque<Request>>,
    wake: Arc<EventFd>,
    plane: OnceLock<Arc<ControlPlane>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue stays a valid queue even if a holder panicked; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmControl {
    pub fn new(cid: u64, wake: Arc<EventFd>) -> Arc<VmControl> {
        Arc::new(VmControl {
            cid,
            inbox: Mutex::new(VecDeque::new()),
            wake,
            plane: OnceLock::new(),
        })
    }

    pub fn post(&self, r: Request) {
        lock(&self.inbox).push_back(r);
        let _ = self.wake.write(1);
    }

    /// Everything posted since the last call (worker side).
    pub fn take(&self) -> Vec<Request> {
        lock(&self.inbox).drain(..).collect()
    }

    /// Reports a device state change as an event.
    pub fn state_changed(&self, state: DeviceState) {
        if let Some(p) = self.plane.get() {
            p.device_state_changed(self.cid, state);
        }
    }

    /// Reports that the device runs a restored state.
    pub fn restored(&self, generation: u64) {
        if let Some(p) = self.plane.get() {
            p.device_restored(self.cid, generation);
        }
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> Request) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.post(make(tx));
        rx.recv_timeout(ANSWER_TIMEOUT).ok()
    }
}

/// The policy table as last applied, shared with every VM's device for per-port limits
/// (allow/deny itself is decided by the resolver).
pub type SharedPolicy = Arc<RwLock<PolicyTable>>;

/// `DeviceControl` over every VM of this process.
pub struct PluginControl {
    vms: Vec<Arc<VmControl>>,
    started: Instant,
    policy: SharedPolicy,
}

impl PluginControl {
    pub fn new(vms: Vec<Arc<VmControl>>, policy: SharedPolicy) -> PluginControl {
        PluginControl {
            vms,
            started: Instant::now(),
            policy,
        }
    }

    fn reports(&self) -> Vec<(u64, Option<VmReport>)> {
        self.vms
            .iter()
            .map(|vm| (vm.cid, vm.ask(Request::Report)))
            .collect()
    }
}

fn conn_state(s: State) -> ConnectionState {
    match s {
        State::LocalInit { .. } | State::PeerInit { .. } => {
            ConnectionState::CONNECTION_STATE_CONNECTING
        }
        State::Established => ConnectionState::CONNECTION_STATE_ESTABLISHED,
        State::Closing { .. } => ConnectionState::CONNECTION_STATE_CLOSING,
    }
}

impl DeviceControl for PluginControl {
    fn status(&self) -> Status {
        let vms = self
            .reports()
            .into_iter()
            .map(|(cid, r)| match r {
                Some(r) => VmStatus {
                    guest_cid: cid,
                    state: r.state.into(),
                    negotiated_features: r.features,
                    protocol_features: r.protocol_features,
                    iotlb_mode: if r.translated {
                        IotlbMode::IOTLB_MODE_TRANSLATING
                    } else {
                        IotlbMode::IOTLB_MODE_OFF
                    }
                    .into(),
                    connections: r.connections.len() as u32,
                    generation: r.generation,
                    ..Default::default()
                },
                None => VmStatus {
                    guest_cid: cid,
                    ..Default::default()
                },
            })
            .collect();
        Status {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            vms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    fn connections(&self) -> Vec<ConnectionInfo> {
        let mut out = Vec::new();
        for (cid, r) in self.reports() {
            for c in r.map(|r| r.connections).unwrap_or_default() {
                out.push(ConnectionInfo {
                    guest_cid: cid,
                    guest_port: c.key.guest_port,
                    host_port: c.key.host_port,
                    state: conn_state(c.state).into(),
                    host_initiated: c.host_initiated,
                    bytes_from_guest: c.bytes_from_guest,
                    bytes_to_guest: c.bytes_to_guest,
                    buf_alloc: c.buf_alloc,
                    fwd_cnt: c.fwd_cnt,
                    peer_buf_alloc: c.peer_buf_alloc,
                    peer_fwd_cnt: c.peer_fwd_cnt,
                    route: if c.via_service {
                        RouteKind::ROUTE_KIND_BINDER_SERVICE
                    } else {
                        RouteKind::ROUTE_KIND_UNIX
                    }
                    .into(),
                    ..Default::default()
                });
            }
        }
        out
    }

    fn metrics(&self) -> Metrics {
        let mut counters = Vec::new();
        for (cid, r) in self.reports() {
            let Some(r) = r else { continue };
            let s = r.stats;
            for (name, value) in [
                ("tx_packets", s.tx_packets),
                ("rx_packets", s.rx_packets),
                ("dropped_packets", s.dropped_packets),
                ("rst_sent", s.rst_sent),
                ("connections_opened", s.connections_opened),
                ("connections_open", r.connections.len() as u64),
            ] {
                counters.push(Counter {
                    name: name.to_string(),
                    value,
                    guest_cid: cid,
                    ..Default::default()
                });
            }
        }
        Metrics {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            counters,
            ..Default::default()
        }
    }

    /// Allow/deny is enforced by the resolver; the limits by each VM's device on new guest
    /// connections (existing ones keep what they had).
    fn apply_policy(&self, rules: &[PolicyRule]) -> Result<(), ControlError> {
        for r in rules {
            let b = r.limits.buf_alloc;
            if b != 0 && !(MIN_TX_BUFFER_SIZE..=MAX_TX_BUFFER_SIZE).contains(&b) {
                return Err(ControlError::InvalidArgument(format!(
                    "limits.buf_alloc {b} is outside {MIN_TX_BUFFER_SIZE}..={MAX_TX_BUFFER_SIZE} (0 = the VM's default)"
                )));
            }
        }
        let mut table = PolicyTable::default();
        table
            .apply(rules, true)
            .map_err(ControlError::InvalidArgument)?;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }

    fn enforces_policy_limits(&self) -> bool {
        true
    }

    fn reset_connection(
        &self,
        cid: u64,
        guest_port: u32,
        host_port: u32,
    ) -> Result<(), ControlError> {
        let vm = self
            .vms
            .iter()
            .find(|v| v.cid == cid)
            .ok_or_else(|| ControlError::NotFound(format!("no VM with guest CID {cid}")))?;
        let key = ConnKey {
            host_port,
            guest_port,
        };
        match vm.ask(|reply| Request::Reset { key, reply }) {
            Some(true) => Ok(()),
            Some(false) => Err(ControlError::NotFound(format!(
                "no connection {cid}:{guest_port} <-> 2:{host_port}"
            ))),
            None => Err(ControlError::Refused(format!("VM {cid} did not answer"))),
        }
    }
}

struct Job {
    vm: Arc<VmControl>,
    key: ConnKey,
}

/// The device's route requests for one VM, served by the shared resolver pool.
pub struct Router {
    vm: Arc<VmControl>,
    jobs: Sender<Job>,
}

impl RouteRequests for Router {
    fn request(&self, key: ConnKey) {
        if self
            .jobs
            .send(Job {
                vm: self.vm.clone(),
                key,
            })
            .is_err()
        {
            self.vm.post(Request::Routed {
                key,
                route: HostRoute::Deny("the control plane is gone".into()),
            });
        }
    }
}

/// Connection events of one VM, forwarded to the control plane's listeners.
pub struct Events {
    vm: Arc<VmControl>,
}

impl ConnectionEvents for Events {
    fn opened(&self, key: ConnKey, host_initiated: bool, via_service: bool) {
        if let Some(p) = self.vm.plane.get() {
            let kind = if via_service {
                RouteKind::ROUTE_KIND_BINDER_SERVICE
            } else {
                RouteKind::ROUTE_KIND_UNIX
            };
            p.connection_opened(
                self.vm.cid,
                key.guest_port,
                key.host_port,
                host_initiated,
                kind,
            );
        }
    }

    fn closed(&self, key: ConnKey, reason: &str) {
        if let Some(p) = self.vm.plane.get() {
            p.connection_closed(self.vm.cid, key.guest_port, key.host_port, reason);
        }
    }
}

/// Per-port limits of one VM, from the shared policy table.
pub struct Limits {
    cid: u64,
    policy: SharedPolicy,
}

impl ConnectionLimits for Limits {
    fn limits(&self, port: u32) -> PortLimits {
        let table = self.policy.read().unwrap_or_else(|p| p.into_inner());
        table
            .lookup(self.cid, port)
            .map(|r| PortLimits {
                max_connections: r.limits.max_connections,
                buf_alloc: r.limits.buf_alloc,
            })
            .unwrap_or_default()
    }
}

/// What the control plane plugs into one VM's device.
pub struct Hooks {
    pub router: Box<dyn RouteRequests>,
    pub events: Box<dyn ConnectionEvents>,
    pub limits: Box<dyn ConnectionLimits>,
}

/// The control plane with its resolver pool, ready to hand each VM its hooks.
pub struct Control {
    pub plane: Arc<ControlPlane>,
    jobs: Sender<Job>,
    policy: SharedPolicy,
}

impl Control {
    pub fn new(plane: ControlPlane, vms: &[Arc<VmControl>], policy: SharedPolicy) -> Control {
        let plane = Arc::new(plane);
        for vm in vms {
            let _ = vm.plane.set(plane.clone());
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let resolver = plane.resolver();
        for _ in 0..RESOLVER_THREADS {
            let (rx, resolver) = (rx.clone(), resolver.clone());
            let _ = std::thread::Builder::new()
                .name("vsock-route".into())
                .spawn(move || resolve_loop(&rx, resolver.as_ref()));
        }
        Control {
            plane,
            jobs,
            policy,
        }
    }

    pub fn hooks(&self, vm: &Arc<VmControl>) -> Hooks {
        Hooks {
            router: Box::new(Router {
                vm: vm.clone(),
                jobs: self.jobs.clone(),
            }),
            events: Box::new(Events { vm: vm.clone() }),
            limits: Box::new(Limits {
                cid: vm.cid,
                policy: self.policy.clone(),
            }),
        }
    }
}

fn resolve_loop(rx: &Mutex<Receiver<Job>>, resolver: &dyn PortResolver) {
    loop {
        let job = match lock(rx).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let route = match resolver.route(job.vm.cid, job.key.guest_port, job.key.host_port) {
            Route::Unix => HostRoute::Unix,
            Route::Fd(s) => HostRoute::Stream(s),
            Route::Deny(why) => HostRoute::Deny(why),
        };
        job.vm.post(Request::Routed {
            key: job.key,
            route,
        });
    }
}
