//! The control services, backend-neutral: [`ControlPlane`] holds the shared state (policy table,
//! host-service registrations, event listeners) and implements [`PortResolver`]; the binder
//! services `IDeviceControl` and `IHostServiceRegistry` are thin views of it.
//!
//! Only `android_vsockplugin::{aidl, binder}` and [`crate::platform`] are used here, so the same
//! code builds against libbinder_rs under Soong.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use android_vsockplugin::aidl::android::vsockplugin::{
    ErrorCode::ErrorCode, GuestConnectRequest::GuestConnectRequest, IDeviceControl::IDeviceControl,
    IDeviceEventListener::IDeviceEventListener, IHostServiceCallback::IHostServiceCallback,
    IHostServiceRegistry::IHostServiceRegistry, ServiceRegistration::ServiceRegistration,
};
use android_vsockplugin::binder::{Interface, Result as BinderResult, Status, Strong};
use protobuf::MessageFull;

use crate::api::{ControlError, DeviceControl, PortResolver, Route};
use crate::auth::AllowList;
use crate::platform;
use crate::policy::{PolicyTable, MAX_RULES};
use crate::proto::config::IotlbPolicy;
use crate::proto::control::{
    capability, Capabilities, Capability, ConnectionEvent, ConnectionList, Counter,
    DeviceRestoredEvent, DeviceState, DeviceStateEvent, Event, ExplainRouteRequest,
    IotlbCapability, ListConnectionsRequest, MetricsRequest, PolicyAction, PolicyCapability,
    PolicyList, PolicyRequest, RouteInfo, RouteKind, RouteList, RoutesRequest, SetPolicyRequest,
    StatusRequest,
};
use crate::proto::{check_required_features, decode, encode, features, PayloadError};

/// Most host-service registrations at once.
pub const MAX_REGISTRATIONS: usize = 1024;
/// Most event listeners at once.
pub const MAX_LISTENERS: usize = 64;
/// Events queued for listeners before new ones are dropped (and counted).
pub const EVENT_QUEUE: usize = 1024;
/// Longest registration name / policy reason, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Feature bits the registry implements for `ServiceRegistration::requiredFeatures`.
pub const REGISTRY_FEATURES: u64 = 0;

/// First guest CID / last guest CID (0-2 reserved, `u32::MAX` is `VMADDR_CID_ANY`).
const FIRST_GUEST_CID: u64 = 3;
const LAST_GUEST_CID: u64 = 0xFFFF_FFFE;

struct Registration {
    id: i64,
    host_port: u32,
    cid: Option<u64>,
    name: String,
    uid: u32,
    callback: Strong<dyn IHostServiceCallback>,
    _death: Option<platform::DeathWatch>,
}

/// What is left of a registration whose service died: the port stays refused (rather than falling
/// back to the hybrid Unix path, where another process could be listening) until a service
/// registers it again.
struct Tombstone {
    host_port: u32,
    cid: Option<u64>,
    name: String,
}

enum Found {
    Live(String, Strong<dyn IHostServiceCallback>),
    Dead(String),
}

struct Listener {
    id: u64,
    listener: Strong<dyn IDeviceEventListener>,
    _death: Option<platform::DeathWatch>,
}

#[derive(Default)]
struct Counters {
    routes_unix: AtomicU64,
    routes_binder: AtomicU64,
    routes_denied_policy: AtomicU64,
    routes_denied_service: AtomicU64,
    callback_failures: AtomicU64,
    events_sent: AtomicU64,
    events_dropped: AtomicU64,
    registrations_died: AtomicU64,
    rejected_callers: AtomicU64,
}

struct Shared {
    device: Arc<dyn DeviceControl>,
    allow: AllowList,
    started: Instant,
    policy: RwLock<PolicyTable>,
    /// Held for a whole policy change (not the `policy` lock: readers never wait on it).
    policy_update: Mutex<()>,
    registrations: Mutex<Vec<Registration>>,
    tombstones: Mutex<Vec<Tombstone>>,
    listeners: Mutex<Vec<Listener>>,
    next_id: AtomicI64,
    events: Mutex<Option<SyncSender<Vec<u8>>>>,
    counters: Counters,
}

/// The control plane of one plugin process. Create it with the plugin's [`DeviceControl`],
/// [`serve`](Self::serve) it, give [`resolver`](Self::resolver) to the device and report
/// events with [`emit`](Self::emit) and its helpers.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("allow", &self.shared.allow)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_of(code: ErrorCode, msg: impl Into<String>) -> Status {
    let msg = msg.into();
    log::debug!("control: error {:?}: {msg}", code);
    platform::service_error(code.0, msg)
}

fn payload_status(e: PayloadError) -> Status {
    match e {
        PayloadError::UnsupportedFeatures(_) => {
            status_of(ErrorCode::UNSUPPORTED_FEATURE, e.to_string())
        }
        _ => status_of(ErrorCode::INVALID_ARGUMENT, e.to_string()),
    }
}

fn control_status(e: ControlError) -> Status {
    let code = match &e {
        ControlError::NotFound(_) => ErrorCode::NOT_FOUND,
        ControlError::InvalidArgument(_) => ErrorCode::INVALID_ARGUMENT,
        ControlError::Refused(_) => ErrorCode::REFUSED,
    };
    status_of(code, e.to_string())
}

/// Decode a request and apply the `required_features` rule.
fn request<M: MessageFull>(
    bytes: &[u8],
    supported: u64,
    required: impl Fn(&M) -> u64,
) -> BinderResult<M> {
    let m: M = decode(bytes).map_err(payload_status)?;
    check_required_features(required(&m), supported).map_err(payload_status)?;
    Ok(m)
}

impl ControlPlane {
    /// A control plane steering `device`, callable by the uids in `allow`.
    pub fn new(device: Arc<dyn DeviceControl>, allow: AllowList) -> Self {
        ControlPlane {
            shared: Arc::new(Shared {
                device,
                allow,
                started: Instant::now(),
                policy: RwLock::new(PolicyTable::default()),
                policy_update: Mutex::new(()),
                registrations: Mutex::new(Vec::new()),
                tombstones: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                next_id: AtomicI64::new(1),
                events: Mutex::new(None),
                counters: Counters::default(),
            }),
        }
    }

    /// Publish `IDeviceControl` and `IHostServiceRegistry` at `uri` (see
    /// [`platform::service_names`]). Keep the handle: dropping it stops an RPC server.
    pub fn serve(
        &self,
        uri: &platform::ControlUri,
        cfg: &platform::ServeConfig,
    ) -> Result<platform::ServerHandle, String> {
        platform::serve(
            uri,
            platform::new_control_binder(self.control_service()),
            platform::new_registry_binder(self.registry_service()),
            &self.shared.allow,
            cfg,
        )
        .map_err(|e| format!("cannot serve control at {uri}: {e:?}"))
    }

    /// The `IDeviceControl` implementation (wrap with `platform::new_control_binder`).
    pub fn control_service(&self) -> ControlService {
        ControlService {
            shared: self.shared.clone(),
        }
    }

    /// The `IHostServiceRegistry` implementation (wrap with `platform::new_registry_binder`).
    pub fn registry_service(&self) -> RegistryService {
        RegistryService {
            shared: self.shared.clone(),
        }
    }

    /// The resolver the device asks for every guest->host connection.
    pub fn resolver(&self) -> Arc<dyn PortResolver> {
        Arc::new(self.clone())
    }

    /// Feature bits this control plane implements (what `getCapabilities` advertises).
    pub fn supported_features(&self) -> u64 {
        self.shared.supported_features()
    }

    /// Number of live host-service registrations.
    pub fn registration_count(&self) -> usize {
        lock(&self.shared.registrations).len()
    }

    /// Number of registered event listeners.
    pub fn listener_count(&self) -> usize {
        lock(&self.shared.listeners).len()
    }

    /// Queue `event` for every listener; never blocks (a full queue drops and counts it).
    pub fn emit(&self, mut event: Event) {
        if event.uptime_ms == 0 {
            event.uptime_ms = self.shared.uptime_ms();
        }
        self.shared.emit(encode(&event));
    }

    /// Report a connection that opened (`route` = the mapping it uses).
    pub fn connection_opened(
        &self,
        cid: u64,
        guest_port: u32,
        host_port: u32,
        host_initiated: bool,
        route: RouteKind,
    ) {
        let mut e = Event::new();
        e.set_connection_opened(ConnectionEvent {
            guest_cid: cid,
            guest_port,
            host_port,
            route: route.into(),
            host_initiated,
            ..Default::default()
        });
        self.emit(e);
    }

    /// Report a connection that closed, with a reason.
    pub fn connection_closed(&self, cid: u64, guest_port: u32, host_port: u32, reason: &str) {
        let mut e = Event::new();
        e.set_connection_closed(ConnectionEvent {
            guest_cid: cid,
            guest_port,
            host_port,
            reason: reason.to_string(),
            ..Default::default()
        });
        self.emit(e);
    }

    /// Report a device state change of VM `cid`.
    pub fn device_state_changed(&self, cid: u64, state: DeviceState) {
        let mut e = Event::new();
        e.set_device_state(DeviceStateEvent {
            guest_cid: cid,
            state: state.into(),
            ..Default::default()
        });
        self.emit(e);
    }

    /// Report that VM `cid` now runs a restored device state ("restored, generation N").
    pub fn device_restored(&self, cid: u64, generation: u64) {
        let mut e = Event::new();
        e.set_device_restored(DeviceRestoredEvent {
            guest_cid: cid,
            generation,
            ..Default::default()
        });
        self.emit(e);
    }
}

impl Shared {
    fn supported_features(&self) -> u64 {
        let mut f = features::CONNECTION_FILTER | features::EVENTS;
        if self.device.enforces_policy_limits() {
            f |= features::POLICY_LIMITS;
        }
        f
    }

    fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn check_caller(&self) -> BinderResult<u32> {
        let uid = platform::calling_uid();
        if self.allow.allows(uid) {
            Ok(uid)
        } else {
            self.counters
                .rejected_callers
                .fetch_add(1, Ordering::Relaxed);
            log::warn!("control: rejected call from uid {uid}");
            Err(platform::security_error(&format!(
                "uid {uid} is not allowed to use the vsock control services"
            )))
        }
    }

    /// The registration (exact CID first, then any-CID) or tombstone serving `port` for `cid`.
    fn find_registration(&self, cid: u64, port: u32) -> Option<Found> {
        let regs = lock(&self.registrations);
        let tombs = lock(&self.tombstones);
        for want in [Some(cid), None] {
            if let Some(r) = regs.iter().find(|r| r.host_port == port && r.cid == want) {
                return Some(Found::Live(r.name.clone(), r.callback.clone()));
            }
            if let Some(t) = tombs.iter().find(|t| t.host_port == port && t.cid == want) {
                return Some(Found::Dead(t.name.clone()));
            }
        }
        None
    }

    /// Remove registration `id`; `died` leaves a tombstone. False if there was none.
    fn remove_registration(&self, id: i64, died: bool) -> bool {
        let mut regs = lock(&self.registrations);
        let Some(i) = regs.iter().position(|r| r.id == id) else {
            return false;
        };
        let r = regs.remove(i);
        if died {
            let mut tombs = lock(&self.tombstones);
            tombs.retain(|t| !(t.host_port == r.host_port && t.cid == r.cid));
            if tombs.len() >= MAX_REGISTRATIONS {
                tombs.remove(0);
            }
            tombs.push(Tombstone {
                host_port: r.host_port,
                cid: r.cid,
                name: r.name.clone(),
            });
        }
        true
    }

    fn emit(&self, bytes: Vec<u8>) {
        let tx = lock(&self.events).clone();
        let Some(tx) = tx else { return };
        match tx.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Start the event dispatcher thread (once, on the first listener).
    fn ensure_dispatcher(self: &Arc<Self>) {
        let mut events = lock(&self.events);
        if events.is_some() {
            return;
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(EVENT_QUEUE);
        let weak = Arc::downgrade(self);
        match std::thread::Builder::new()
            .name("vsock-ctl-events".into())
            .spawn(move || dispatch(weak, rx))
        {
            Ok(_) => *events = Some(tx),
            Err(e) => log::error!("control: cannot start the event thread: {e}"),
        }
    }

    fn explain(&self, cid: u64, port: u32) -> RouteInfo {
        let mut info = RouteInfo {
            guest_cid: cid,
            host_port: port,
            ..Default::default()
        };
        if let Some(reason) = self
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .denies(cid, port)
        {
            info.kind = RouteKind::ROUTE_KIND_DENIED.into();
            info.detail = reason;
        } else if let Some(found) = self.find_registration(cid, port) {
            match found {
                Found::Live(name, _) => {
                    info.kind = RouteKind::ROUTE_KIND_BINDER_SERVICE.into();
                    info.detail = name;
                }
                Found::Dead(name) => {
                    info.kind = RouteKind::ROUTE_KIND_DENIED.into();
                    info.detail = died_reason(&name, port);
                }
            }
        } else {
            info.kind = RouteKind::ROUTE_KIND_UNIX.into();
            let uds = self
                .device
                .status()
                .vms
                .iter()
                .find(|v| v.guest_cid == cid)
                .map(|v| v.config.uds_path.clone())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "<uds-path>".to_string());
            info.detail = format!("{uds}_{port}");
        }
        info
    }
}

fn dispatch(shared: Weak<Shared>, rx: Receiver<Vec<u8>>) {
    while let Ok(bytes) = rx.recv() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let targets: Vec<(u64, Strong<dyn IDeviceEventListener>)> = lock(&shared.listeners)
            .iter()
            .map(|l| (l.id, l.listener.clone()))
            .collect();
        for (id, l) in targets {
            match l.onEvent(&bytes) {
                Ok(()) => {
                    shared.counters.events_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    log::info!("control: dropping event listener {id}: {e:?}");
                    lock(&shared.listeners).retain(|x| x.id != id);
                }
            }
        }
    }
}

fn died_reason(name: &str, port: u32) -> String {
    format!("host service {name:?} for port {port} died")
}

fn valid_cid(cid: u64) -> bool {
    (FIRST_GUEST_CID..=LAST_GUEST_CID).contains(&cid)
}

/// Checks that the fd a service returned is a connected `AF_UNIX` `SOCK_STREAM` socket.
fn stream_socket(fd: OwnedFd) -> Result<UnixStream, String> {
    let get = |opt: libc::c_int| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointer to an int of the size given.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(format!(
                "not a socket ({})",
                std::io::Error::last_os_error()
            ))
        }
    };
    let (domain, ty) = (get(libc::SO_DOMAIN)?, get(libc::SO_TYPE)?);
    if domain != libc::AF_UNIX || ty != libc::SOCK_STREAM {
        return Err(format!(
            "socket domain {domain} type {ty} is not AF_UNIX SOCK_STREAM"
        ));
    }
    let s = UnixStream::from(fd);
    s.peer_addr()
        .map_err(|e| format!("socket is not connected: {e}"))?;
    Ok(s)
}

impl PortResolver for ControlPlane {
    /// Policy deny first; then a registered service (exact CID before any-CID), asked for a
    /// connected socket; else the hybrid Unix mapping.
    fn route(&self, cid: u64, guest_port: u32, host_port: u32) -> Route {
        let c = &self.shared.counters;
        if let Some(reason) = self
            .shared
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .denies(cid, host_port)
        {
            c.routes_denied_policy.fetch_add(1, Ordering::Relaxed);
            return Route::Deny(reason);
        }
        let (name, callback) = match self.shared.find_registration(cid, host_port) {
            None => {
                c.routes_unix.fetch_add(1, Ordering::Relaxed);
                return Route::Unix;
            }
            Some(Found::Dead(name)) => {
                c.routes_denied_service.fetch_add(1, Ordering::Relaxed);
                return Route::Deny(died_reason(&name, host_port));
            }
            Some(Found::Live(name, callback)) => (name, callback),
        };
        let req = GuestConnectRequest {
            guestCid: cid as i64,
            guestPort: guest_port as i32,
            hostPort: host_port as i32,
        };
        match callback.onGuestConnect(&req) {
            Ok(reply) => match reply.socket {
                Some(pfd) => {
                    // SAFETY: into_raw_fd hands over sole ownership of a valid fd.
                    let fd = unsafe { OwnedFd::from_raw_fd(pfd.into_raw_fd()) };
                    match stream_socket(fd) {
                        Ok(s) => {
                            c.routes_binder.fetch_add(1, Ordering::Relaxed);
                            log::debug!("control: cid {cid} port {host_port} -> service {name:?}");
                            Route::Fd(s)
                        }
                        Err(e) => {
                            c.callback_failures.fetch_add(1, Ordering::Relaxed);
                            Route::Deny(format!("service {name:?} returned an unusable fd: {e}"))
                        }
                    }
                }
                None => {
                    c.routes_denied_service.fetch_add(1, Ordering::Relaxed);
                    let why = if reply.refusalReason.is_empty() {
                        "no reason given".into()
                    } else {
                        reply.refusalReason
                    };
                    Route::Deny(format!("refused by service {name:?}: {why}"))
                }
            },
            Err(e) => {
                c.callback_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "control: service {name:?} failed for cid {cid} port {host_port}: {e:?}"
                );
                Route::Deny(format!("service {name:?} failed: {e}"))
            }
        }
    }
}

/// `IHostServiceRegistry` over a [`ControlPlane`].
pub struct RegistryService {
    shared: Arc<Shared>,
}

impl Interface for RegistryService {}

impl IHostServiceRegistry for RegistryService {
    fn registerService(
        &self,
        reg: &ServiceRegistration,
        callback: &Strong<dyn IHostServiceCallback>,
    ) -> BinderResult<i64> {
        let uid = self.shared.check_caller()?;
        check_required_features(reg.requiredFeatures as u64, REGISTRY_FEATURES)
            .map_err(payload_status)?;
        let host_port = reg.hostPort as u32;
        let cid = match reg.guestCid {
            -1 => None,
            c if c >= 0 && valid_cid(c as u64) => Some(c as u64),
            c => {
                return Err(status_of(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("guestCid {c} is not a guest CID (3..=4294967294) or CID_ANY (-1)"),
                ))
            }
        };
        if reg.name.len() > MAX_NAME_LEN {
            return Err(status_of(
                ErrorCode::INVALID_ARGUMENT,
                format!("name is longer than {MAX_NAME_LEN} bytes"),
            ));
        }
        let name = if reg.name.is_empty() {
            format!("uid{uid}:port{host_port}")
        } else {
            reg.name.clone()
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut regs = lock(&self.shared.registrations);
        if regs.len() >= MAX_REGISTRATIONS {
            return Err(status_of(
                ErrorCode::REFUSED,
                format!("at most {MAX_REGISTRATIONS} registrations"),
            ));
        }
        if let Some(r) = regs
            .iter()
            .find(|r| r.host_port == host_port && r.cid == cid)
        {
            return Err(status_of(
                ErrorCode::ALREADY_REGISTERED,
                format!(
                    "port {host_port} (cid {cid:?}) is registered by {:?}",
                    r.name
                ),
            ));
        }
        let weak = Arc::downgrade(&self.shared);
        let dead_name = name.clone();
        let death = match platform::watch_death(&platform::binder_of(&**callback), move || {
            if let Some(s) = weak.upgrade() {
                if s.remove_registration(id, true) {
                    s.counters
                        .registrations_died
                        .fetch_add(1, Ordering::Relaxed);
                    log::info!("control: service {dead_name:?} died; registration {id} removed");
                }
            }
        }) {
            Ok(w) => Some(w),
            Err(e) if platform::binder_of(&**callback).is_remote() => {
                return Err(status_of(
                    ErrorCode::REFUSED,
                    format!("cannot watch the callback for death: {e:?}"),
                ));
            }
            // An in-process callback cannot die separately from us.
            Err(_) => None,
        };
        lock(&self.shared.tombstones).retain(|t| !(t.host_port == host_port && t.cid == cid));
        regs.push(Registration {
            id,
            host_port,
            cid,
            name: name.clone(),
            uid,
            callback: callback.clone(),
            _death: death,
        });
        log::info!(
            "control: uid {uid} registered {name:?} for port {host_port} cid {cid:?} (id {id})"
        );
        Ok(id)
    }

    fn unregisterService(&self, id: i64) -> BinderResult<()> {
        let uid = self.shared.check_caller()?;
        let mut regs = lock(&self.shared.registrations);
        match regs
            .iter()
            .position(|r| r.id == id && (r.uid == uid || uid == 0))
        {
            Some(i) => {
                let r = regs.remove(i);
                log::info!("control: unregistered {:?} (id {id})", r.name);
                Ok(())
            }
            None => Err(status_of(
                ErrorCode::NOT_FOUND,
                format!("no registration {id} of uid {uid}"),
            )),
        }
    }
}

/// `IDeviceControl` over a [`ControlPlane`].
pub struct ControlService {
    shared: Arc<Shared>,
}

impl Interface for ControlService {}

impl IDeviceControl for ControlService {
    fn getCapabilities(&self) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let mut caps = Capabilities {
            protocol_major: crate::proto::PROTOCOL_MAJOR,
            protocol_minor: crate::proto::PROTOCOL_MINOR,
            supported_features: self.shared.supported_features(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        let mut policy = Capability::new();
        policy.cap = Some(capability::Cap::Policy(PolicyCapability {
            version: 1,
            max_rules: MAX_RULES as u32,
            ..Default::default()
        }));
        let mut iotlb = Capability::new();
        iotlb.cap = Some(capability::Cap::Iotlb(IotlbCapability {
            version: 1,
            policies: [
                IotlbPolicy::IOTLB_POLICY_OFF,
                IotlbPolicy::IOTLB_POLICY_REQUIRED,
                IotlbPolicy::IOTLB_POLICY_AUTO,
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
            ..Default::default()
        }));
        caps.caps = vec![policy, iotlb];
        Ok(encode(&caps))
    }

    fn getStatus(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let _: StatusRequest = request(
            req,
            self.shared.supported_features(),
            |m: &StatusRequest| m.required_features,
        )?;
        let mut s = self.shared.device.status();
        if s.uptime_ms == 0 {
            s.uptime_ms = self.shared.uptime_ms();
        }
        if s.version.is_empty() {
            s.version = env!("CARGO_PKG_VERSION").to_string();
        }
        Ok(encode(&s))
    }

    fn listConnections(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let r: ListConnectionsRequest = request(
            req,
            self.shared.supported_features(),
            |m: &ListConnectionsRequest| m.required_features,
        )?;
        if r.guest_cid.is_some() && r.required_features & features::CONNECTION_FILTER == 0 {
            return Err(status_of(
                ErrorCode::INVALID_ARGUMENT,
                "guest_cid filter set without FEATURE_CONNECTION_FILTER in required_features",
            ));
        }
        let mut conns = self.shared.device.connections();
        if let Some(cid) = r.guest_cid {
            conns.retain(|c| c.guest_cid == cid);
        }
        Ok(encode(&ConnectionList {
            connections: conns,
            ..Default::default()
        }))
    }

    fn getMetrics(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let _: MetricsRequest = request(
            req,
            self.shared.supported_features(),
            |m: &MetricsRequest| m.required_features,
        )?;
        let mut m = self.shared.device.metrics();
        if m.uptime_ms == 0 {
            m.uptime_ms = self.shared.uptime_ms();
        }
        let c = &self.shared.counters;
        let regs = lock(&self.shared.registrations).len() as u64;
        let listeners = lock(&self.shared.listeners).len() as u64;
        for (name, value) in [
            ("control.routes.unix", c.routes_unix.load(Ordering::Relaxed)),
            (
                "control.routes.binder_service",
                c.routes_binder.load(Ordering::Relaxed),
            ),
            (
                "control.routes.denied_policy",
                c.routes_denied_policy.load(Ordering::Relaxed),
            ),
            (
                "control.routes.denied_service",
                c.routes_denied_service.load(Ordering::Relaxed),
            ),
            (
                "control.callback_failures",
                c.callback_failures.load(Ordering::Relaxed),
            ),
            ("control.registrations", regs),
            (
                "control.registrations_died",
                c.registrations_died.load(Ordering::Relaxed),
            ),
            ("control.listeners", listeners),
            ("control.events_sent", c.events_sent.load(Ordering::Relaxed)),
            (
                "control.events_dropped",
                c.events_dropped.load(Ordering::Relaxed),
            ),
            (
                "control.rejected_callers",
                c.rejected_callers.load(Ordering::Relaxed),
            ),
        ] {
            m.counters.push(Counter {
                name: name.to_string(),
                value,
                ..Default::default()
            });
        }
        Ok(encode(&m))
    }

    /// Validates and applies a policy change. Limits first (F5): a request with more rules
    /// than a table can hold is refused before any per-rule work; matching is indexed; the
    /// policy lock is taken only to copy the table and to swap in the new one, so routing
    /// (`route()` reads the policy) never waits for validation or for the device. Changes are
    /// serialised by `policy_update`, so two concurrent calls cannot lose each other's rules.
    fn setPolicy(&self, req: &[u8]) -> BinderResult<()> {
        let uid = self.shared.check_caller()?;
        let r: SetPolicyRequest = request(
            req,
            self.shared.supported_features(),
            |m: &SetPolicyRequest| m.required_features,
        )?;
        if r.rules.len() > MAX_RULES {
            return Err(status_of(
                ErrorCode::INVALID_ARGUMENT,
                format!(
                    "request holds {} rules; a policy holds at most {MAX_RULES}",
                    r.rules.len()
                ),
            ));
        }
        for (i, rule) in r.rules.iter().enumerate() {
            let bad = |m: String| {
                Err(status_of(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("rule {i}: {m}"),
                ))
            };
            if rule.action.enum_value().is_err() {
                return bad(format!("unknown action {}", rule.action.value()));
            }
            if let Some(c) = rule.guest_cid {
                if !valid_cid(c) {
                    return bad(format!("guest_cid {c} is not a guest CID"));
                }
            }
            if rule.limits.is_some() && r.required_features & features::POLICY_LIMITS == 0 {
                return bad("limits set without FEATURE_POLICY_LIMITS in required_features".into());
            }
            if rule.reason.len() > MAX_NAME_LEN {
                return bad(format!("reason is longer than {MAX_NAME_LEN} bytes"));
            }
        }
        let _update = self
            .shared
            .policy_update
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut next = self
            .shared
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        next.apply(&r.rules, r.replace_all)
            .map_err(|e| status_of(ErrorCode::INVALID_ARGUMENT, e))?;
        self.shared
            .device
            .apply_policy(next.rules())
            .map_err(control_status)?;
        let denies = next
            .rules()
            .iter()
            .filter(|r| r.action.enum_value() == Ok(PolicyAction::POLICY_ACTION_DENY))
            .count();
        let total = next.rules().len();
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(|p| p.into_inner()) = next;
        log::info!("control: uid {uid} set policy ({total} rules, {denies} deny)");
        Ok(())
    }

    fn getPolicy(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let _: PolicyRequest = request(
            req,
            self.shared.supported_features(),
            |m: &PolicyRequest| m.required_features,
        )?;
        let rules = self
            .shared
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules()
            .to_vec();
        Ok(encode(&PolicyList {
            rules,
            ..Default::default()
        }))
    }

    fn listRoutes(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let _: RoutesRequest = request(
            req,
            self.shared.supported_features(),
            |m: &RoutesRequest| m.required_features,
        )?;
        let mut routes = Vec::new();
        for vm in self.shared.device.status().vms {
            routes.push(RouteInfo {
                guest_cid: vm.guest_cid,
                host_port: 0,
                kind: RouteKind::ROUTE_KIND_UNIX.into(),
                detail: format!("{}_<port> (default)", vm.config.uds_path),
                ..Default::default()
            });
        }
        for r in lock(&self.shared.registrations).iter() {
            routes.push(RouteInfo {
                guest_cid: r.cid.unwrap_or(0),
                host_port: r.host_port,
                kind: RouteKind::ROUTE_KIND_BINDER_SERVICE.into(),
                detail: r.name.clone(),
                ..Default::default()
            });
        }
        for t in lock(&self.shared.tombstones).iter() {
            routes.push(RouteInfo {
                guest_cid: t.cid.unwrap_or(0),
                host_port: t.host_port,
                kind: RouteKind::ROUTE_KIND_DENIED.into(),
                detail: died_reason(&t.name, t.host_port),
                ..Default::default()
            });
        }
        for p in self
            .shared
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules()
        {
            if p.action.enum_value() == Ok(PolicyAction::POLICY_ACTION_DENY) {
                routes.push(RouteInfo {
                    guest_cid: p.guest_cid.unwrap_or(0),
                    host_port: p.host_port.unwrap_or(0),
                    kind: RouteKind::ROUTE_KIND_DENIED.into(),
                    detail: if p.reason.is_empty() {
                        "policy".into()
                    } else {
                        p.reason.clone()
                    },
                    ..Default::default()
                });
            }
        }
        Ok(encode(&RouteList {
            routes,
            ..Default::default()
        }))
    }

    fn explainRoute(&self, req: &[u8]) -> BinderResult<Vec<u8>> {
        self.shared.check_caller()?;
        let r: ExplainRouteRequest = request(
            req,
            self.shared.supported_features(),
            |m: &ExplainRouteRequest| m.required_features,
        )?;
        Ok(encode(&self.shared.explain(r.guest_cid, r.host_port)))
    }

    fn resetConnection(&self, cid: i64, guest_port: i32, host_port: i32) -> BinderResult<()> {
        let uid = self.shared.check_caller()?;
        if cid < 0 {
            return Err(status_of(
                ErrorCode::INVALID_ARGUMENT,
                format!("cid {cid} is negative"),
            ));
        }
        self.shared
            .device
            .reset_connection(cid as u64, guest_port as u32, host_port as u32)
            .map_err(control_status)?;
        log::info!(
            "control: uid {uid} reset connection cid {cid} {}->{}",
            guest_port as u32,
            host_port as u32
        );
        Ok(())
    }

    fn registerEventListener(
        &self,
        listener: &Strong<dyn IDeviceEventListener>,
    ) -> BinderResult<()> {
        self.shared.check_caller()?;
        let binder = platform::binder_of(&**listener);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        {
            let ls = lock(&self.shared.listeners);
            if ls.len() >= MAX_LISTENERS {
                return Err(status_of(
                    ErrorCode::REFUSED,
                    format!("at most {MAX_LISTENERS} listeners"),
                ));
            }
            if ls
                .iter()
                .any(|l| platform::binder_of(&*l.listener) == binder)
            {
                return Ok(());
            }
        }
        let weak = Arc::downgrade(&self.shared);
        let death = platform::watch_death(&binder, move || {
            if let Some(s) = weak.upgrade() {
                lock(&s.listeners).retain(|l| l.id != id);
            }
        })
        .ok();
        self.shared.ensure_dispatcher();
        lock(&self.shared.listeners).push(Listener {
            id,
            listener: listener.clone(),
            _death: death,
        });
        Ok(())
    }

    fn unregisterEventListener(
        &self,
        listener: &Strong<dyn IDeviceEventListener>,
    ) -> BinderResult<()> {
        self.shared.check_caller()?;
        let binder = platform::binder_of(&**listener);
        let mut ls = lock(&self.shared.listeners);
        let before = ls.len();
        ls.retain(|l| platform::binder_of(&*l.listener) != binder);
        if ls.len() == before {
            return Err(status_of(
                ErrorCode::NOT_FOUND,
                "listener is not registered",
            ));
        }
        Ok(())
    }
}

/// Convenience for tests and the ctl client: `RouteKind` of a decoded `RouteInfo`.
pub fn route_kind(info: &RouteInfo) -> RouteKind {
    info.kind.enum_value_or_default()
}
