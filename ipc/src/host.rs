//! For host services: register a port with the plugin's registry and answer guest connections
//! with a connected socket.
//!
//! ```no_run
//! # use vsock_plugin_ipc::{host, platform::ControlUri};
//! let uri = ControlUri::parse("unix:///run/vsock-plugin/control.sock#default").unwrap();
//! let svc = host::HostService::register(&uri, 5000, None, "adb", |req| {
//!     let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
//!     std::thread::spawn(move || { /* serve guest req.guestCid over `mine` */ drop(mine) });
//!     Ok(theirs)
//! }).unwrap();
//! // ... guests connecting to host port 5000 reach the closure; drop `svc` to unregister.
//! ```

use std::os::unix::net::UnixStream;
use std::time::Duration;

use android_vsockplugin::aidl::android::vsockplugin::{
    ConnectReply::ConnectReply, GuestConnectRequest::GuestConnectRequest,
    IHostServiceCallback::IHostServiceCallback, IHostServiceRegistry::IHostServiceRegistry,
    ServiceRegistration::ServiceRegistration,
};
use android_vsockplugin::binder::{
    Interface, ParcelFileDescriptor, Result as BinderResult, Status, Strong,
};

use crate::platform::{self, ClientHandle, ControlUri};

/// Decides one guest connection: a connected stream socket (the plugin gets a copy of this end)
/// or a refusal reason.
pub type ConnectHandler = dyn Fn(&GuestConnectRequest) -> Result<UnixStream, String> + Send + Sync;

struct Callback(Box<ConnectHandler>);

impl Interface for Callback {}

impl IHostServiceCallback for Callback {
    fn onGuestConnect(&self, req: &GuestConnectRequest) -> BinderResult<ConnectReply> {
        Ok(match (self.0)(req) {
            Ok(s) => ConnectReply {
                socket: Some(ParcelFileDescriptor::new(s)),
                refusalReason: String::new(),
            },
            Err(reason) => ConnectReply {
                socket: None,
                refusalReason: reason,
            },
        })
    }
}

/// Wrap a handler as an `IHostServiceCallback` binder.
pub fn callback(
    handler: impl Fn(&GuestConnectRequest) -> Result<UnixStream, String> + Send + Sync + 'static,
) -> Strong<dyn IHostServiceCallback> {
    platform::new_callback_binder(Callback(Box::new(handler)))
}

/// A registered host service. Dropping it unregisters and closes the session.
pub struct HostService {
    registry: Strong<dyn IHostServiceRegistry>,
    id: i64,
    // Keeps the callback binder alive while registered.
    _callback: Strong<dyn IHostServiceCallback>,
    session: ClientHandle,
}

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HostService {
    /// Register `handler` for guests (all, or only `cid`) connecting to `host_port`.
    pub fn register(
        uri: &ControlUri,
        host_port: u32,
        cid: Option<u64>,
        name: &str,
        handler: impl Fn(&GuestConnectRequest) -> Result<UnixStream, String> + Send + Sync + 'static,
    ) -> Result<HostService, Status> {
        let (registry, session) = platform::connect_registry(uri, Some(Duration::from_secs(10)))?;
        let cb = callback(handler);
        let reg = ServiceRegistration {
            hostPort: host_port as i32,
            guestCid: cid.map(|c| c as i64).unwrap_or(-1),
            name: name.to_string(),
            requiredFeatures: 0,
        };
        let id = registry.registerService(&reg, &cb)?;
        Ok(HostService {
            registry,
            id,
            _callback: cb,
            session,
        })
    }

    /// The registration id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// End the session without unregistering: the plugin sees this service die (binder RPC only:
    /// on kernel binder the plugin sees the death only when this process exits).
    pub fn abandon(mut self) {
        self.session.close();
        self.id = 0;
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        if self.id != 0 {
            if let Err(e) = self.registry.unregisterService(self.id) {
                log::debug!("host service: unregister {} failed: {e:?}", self.id);
            }
        }
        self.session.close();
    }
}
