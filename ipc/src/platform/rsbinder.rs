//! Cargo backend: rsbinder 0.12 (kernel binder, or binder RPC over a Unix socket).
//!
//! RPC specifics handled here: the android-13+ wire is forced (fd passing and callbacks need it),
//! fd passing is negotiated (`FileDescriptorTransportMode::Unix`), registry clients open one
//! incoming connection so the plugin can call their callbacks from its device thread, and the peer
//! uid (`SO_PEERCRED`) is checked against the allow-list at connect time as well as per call.

use std::sync::Arc;
use std::time::Duration;

use android_vsockplugin::aidl::android::vsockplugin::{
    IDeviceControl::{BnDeviceControl, IDeviceControl},
    IDeviceEventListener::{BnDeviceEventListener, IDeviceEventListener},
    IHostServiceCallback::{BnHostServiceCallback, IHostServiceCallback},
    IHostServiceRegistry::{BnHostServiceRegistry, IHostServiceRegistry},
};
use android_vsockplugin::binder::{ExceptionCode, Status, StatusCode, Strong};
use rsbinder::rpc::{FileDescriptorTransportMode, PeerIdentity};
use rsbinder::{Endpoint, SIBinder, Uri};

use super::ServeConfig;
use crate::auth::AllowList;

/// Where the control services live: `binder://NAME` (kernel binder + servicemanager) or
/// `unix:///path#NAME` (binder RPC on a Unix socket; `unix-abstract://name#NAME` too).
/// `NAME` is the instance: see [`super::service_names`].
#[derive(Clone, Debug)]
pub struct ControlUri {
    uri: Uri,
    instance: String,
}

impl ControlUri {
    /// Parse and validate a control URI. An RPC URI without `?profile=` gets the android-13+ wire.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri = Uri::parse(s).map_err(|e| format!("bad control URI {s:?}: {e}"))?;
        let instance = uri
            .service()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                format!("control URI {s:?} names no instance (binder://NAME or unix:///path#NAME)")
            })?
            .to_string();
        if !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "instance name {instance:?} must use [A-Za-z0-9._-]"
            ));
        }
        let uri = match (uri.endpoint().is_kernel(), uri.wire()) {
            (false, rsbinder::entry::WireProfile::R34) => uri.with_wire(
                rsbinder::entry::WireProfile::Android13Plus(rsbinder::entry::WireVersion::MAX),
            ),
            _ => uri,
        };
        Ok(ControlUri { uri, instance })
    }

    /// The instance name (`NAME`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// True for kernel binder (`binder://`).
    pub fn is_kernel(&self) -> bool {
        self.uri.endpoint().is_kernel()
    }

    fn endpoint_uri(&self) -> Uri {
        // `service` is ignored by `serve`; `Client::open` refuses one, so rebuild without it.
        Uri::new(self.uri.endpoint().clone()).with_wire(self.uri.wire())
    }

    fn fd_capable(&self) -> bool {
        matches!(
            self.uri.endpoint(),
            Endpoint::Unix(_) | Endpoint::UnixAbstract(_)
        )
    }
}

impl std::fmt::Display for ControlUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// Uid of the caller of the binder transaction being handled: kernel-vouched on kernel binder,
/// `SO_PEERCRED` on a Unix RPC socket, `u32::MAX` (never allowed) on uid-less transports.
pub fn calling_uid() -> u32 {
    rsbinder::get_calling_uid()
}

/// A binder error, split the way `ctl` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// `EX_SERVICE_SPECIFIC` with its code (an `ErrorCode`) and message.
    ServiceSpecific(i32, String),
    /// `EX_SECURITY` with its message.
    Security(String),
    /// A transport failure (dead peer, unknown transaction, bad parcel ...).
    Transaction(String),
    /// Any other exception.
    Other(String),
}

/// Classify a binder error.
pub fn error_kind(s: &Status) -> ErrorKind {
    let msg = s.message().unwrap_or("").to_string();
    match s.exception_code() {
        ExceptionCode::ServiceSpecific => {
            ErrorKind::ServiceSpecific(s.service_specific_error(), msg)
        }
        ExceptionCode::Security => ErrorKind::Security(msg),
        ExceptionCode::TransactionFailed => {
            ErrorKind::Transaction(format!("{:?}", s.transaction_error()))
        }
        e => ErrorKind::Other(format!("{e:?}: {msg}")),
    }
}

/// A service-specific error with a message.
pub fn service_error(code: i32, msg: impl Into<String>) -> Status {
    Status::new_service_specific_error(code, Some(msg.into()))
}

/// An `EX_SECURITY` exception.
pub fn security_error(msg: &str) -> Status {
    Status::from((ExceptionCode::Security, msg))
}

pub fn new_control_binder<T: IDeviceControl + Sync + 'static>(s: T) -> Strong<dyn IDeviceControl> {
    BnDeviceControl::new_binder(s)
}
pub fn new_registry_binder<T: IHostServiceRegistry + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceRegistry> {
    BnHostServiceRegistry::new_binder(s)
}
pub fn new_callback_binder<T: IHostServiceCallback + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceCallback> {
    BnHostServiceCallback::new_binder(s)
}
pub fn new_listener_binder<T: IDeviceEventListener + Sync + 'static>(
    s: T,
) -> Strong<dyn IDeviceEventListener> {
    BnDeviceEventListener::new_binder(s)
}

/// A running control server; dropping it stops an RPC server (kernel: inert, the process
/// thread pool keeps serving).
pub struct ServerHandle {
    _guard: rsbinder::ServerGuard,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

/// Publish both services at `uri` and start serving in the background.
pub fn serve(
    uri: &ControlUri,
    control: Strong<dyn IDeviceControl>,
    registry: Strong<dyn IHostServiceRegistry>,
    allow: &AllowList,
    cfg: &ServeConfig,
) -> Result<ServerHandle, StatusCode> {
    let (control_name, registry_name) = super::service_names(uri.instance());
    let mut server = rsbinder::serve(uri.endpoint_uri())?
        .add(&control_name, control.as_binder())?
        .add(&registry_name, registry.as_binder())?;
    if !uri.is_kernel() {
        let allow = allow.clone();
        let fd_capable = uri.fd_capable();
        let timeout = cfg.callback_timeout;
        let max = cfg.max_connections;
        server = server.with(move |o| {
            o.authorizer = Some(Box::new(move |peer: &PeerIdentity| match peer {
                PeerIdentity::Local { uid, pid } => {
                    let ok = allow.allows(*uid);
                    if !ok {
                        log::warn!("control: refusing connection from uid {uid} pid {pid}");
                    }
                    ok
                }
                other => {
                    log::warn!("control: refusing peer without a uid: {other:?}");
                    false
                }
            }));
            if fd_capable {
                o.fd_modes = Some(vec![FileDescriptorTransportMode::Unix]);
            }
            o.reply_timeout = Some(timeout);
            o.max_connections = Some(max);
        });
    }
    let guard = server.spawn()?;
    log::info!("control: serving {control_name} and {registry_name} at {uri}");
    Ok(ServerHandle { _guard: guard })
}

/// A client connection; closes its RPC session (and the callback threads) on drop.
pub struct ClientHandle {
    client: Option<rsbinder::Client>,
}

impl ClientHandle {
    /// End the session now (RPC): the server sees this client die.
    pub fn close(&mut self) {
        if let Some(c) = self.client.take() {
            if let Some(s) = c.session() {
                s.close_session();
            }
        }
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("open", &self.client.is_some())
            .finish()
    }
}

/// Looks `name` up. Kernel binder's `get` waits for the service without limit (AOSP
/// `waitForService`); with a `timeout` the wait is bounded instead, so a caller such as `ctl`
/// fails with NameNotFound rather than hanging when no plugin serves that name.
fn resolve<T: rsbinder::FromIBinder + ?Sized>(
    client: &rsbinder::Client,
    name: &str,
    timeout: Option<Duration>,
) -> Result<Strong<T>, StatusCode> {
    let Some(timeout) = timeout else {
        return client.get::<T>(name);
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(svc) = client.try_get::<T>(name)? {
            return Ok(svc);
        }
        if std::time::Instant::now() >= deadline {
            return Err(StatusCode::NameNotFound);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn open(
    uri: &ControlUri,
    callbacks: bool,
    timeout: Option<Duration>,
) -> Result<rsbinder::Client, StatusCode> {
    let (kernel, fd_capable) = (uri.is_kernel(), uri.fd_capable());
    rsbinder::Client::open_with(uri.endpoint_uri(), move |o, _| {
        if !kernel {
            if fd_capable {
                o.fd_mode = Some(FileDescriptorTransportMode::Unix);
            }
            if callbacks {
                o.incoming_connections = Some(1);
            }
            o.timeout = timeout;
        }
    })
}

/// Connect to the device-control service at `uri`. `listen` opens the incoming connection event
/// listeners need over RPC.
pub fn connect_control(
    uri: &ControlUri,
    listen: bool,
    timeout: Option<Duration>,
) -> Result<(Strong<dyn IDeviceControl>, ClientHandle), StatusCode> {
    let client = open(uri, listen, timeout)?;
    let (name, _) = super::service_names(uri.instance());
    let svc = resolve::<dyn IDeviceControl>(&client, &name, timeout)?;
    Ok((
        svc,
        ClientHandle {
            client: Some(client),
        },
    ))
}

/// Connect to the host-service registry at `uri`, ready to receive callbacks.
pub fn connect_registry(
    uri: &ControlUri,
    timeout: Option<Duration>,
) -> Result<(Strong<dyn IHostServiceRegistry>, ClientHandle), StatusCode> {
    let client = open(uri, true, timeout)?;
    let (_, name) = super::service_names(uri.instance());
    let svc = resolve::<dyn IHostServiceRegistry>(&client, &name, timeout)?;
    Ok((
        svc,
        ClientHandle {
            client: Some(client),
        },
    ))
}

/// Watch `binder` for death; `on_death` runs once when it dies. Keep the returned token: dropping
/// it cancels the watch.
pub fn watch_death(
    binder: &SIBinder,
    on_death: impl Fn() + Send + Sync + 'static,
) -> Result<DeathWatch, StatusCode> {
    let r: Arc<dyn rsbinder::DeathRecipient> = Arc::new(OnDeath(Box::new(on_death)));
    binder.link_to_death(Arc::downgrade(&r))?;
    Ok(DeathWatch { _recipient: r })
}

/// Keeps a death recipient alive (see [`watch_death`]).
pub struct DeathWatch {
    _recipient: Arc<dyn rsbinder::DeathRecipient>,
}

struct OnDeath(Box<dyn Fn() + Send + Sync>);

impl rsbinder::DeathRecipient for OnDeath {
    fn binder_died(&self, _who: &rsbinder::WIBinder) {
        (self.0)()
    }
}

/// The binder of an interface proxy, for identity comparison and death watches.
pub fn binder_of<I: rsbinder::Interface + ?Sized>(i: &I) -> SIBinder {
    i.as_binder()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_uris() {
        let u = ControlUri::parse("unix:///run/x/ctl.sock#default").unwrap();
        assert_eq!(u.instance(), "default");
        assert!(!u.is_kernel());
        assert!(u.fd_capable());
        // The android-13+ wire is added for RPC (fd passing and callbacks need it).
        assert_eq!(
            u.uri.wire(),
            rsbinder::entry::WireProfile::Android13Plus(rsbinder::entry::WireVersion::MAX)
        );
        let k = ControlUri::parse("binder://vsock").unwrap();
        assert_eq!(k.instance(), "vsock");
        assert!(k.is_kernel());
        assert_eq!(
            super::super::service_names("vsock").0,
            "android.vsockplugin.IDeviceControl/vsock"
        );
        assert_eq!(
            super::super::service_names("vsock").1,
            "android.vsockplugin.IHostServiceRegistry/vsock"
        );
        assert!(ControlUri::parse("unix:///run/x/ctl.sock")
            .unwrap_err()
            .contains("names no instance"));
        assert!(ControlUri::parse("binder://a b").is_err());
        assert!(ControlUri::parse("/run/x").is_err());
    }
}
