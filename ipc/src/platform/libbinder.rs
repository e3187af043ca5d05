//! Soong backend (`cfg(soong)`): libbinder_rs (crate `binder`) + servicemanager, kernel binder
//! only. Same functions as `rsbinder.rs`.
//!
//! NOT compiled by cargo (no AOSP tree here). Checked against AOSP sources read through a code
//! index, and type-checked (`--cfg soong`, Soong's default "android" rustc + clippy lint set of
//! build/soong `rust/config/lints.go`, incl. `-D missing-docs -D warnings`) together with
//! `service.rs`, `host.rs` and `ctl.rs` against hand-written stand-ins transcribing:
//! - libbinder_rs: `yaap/frameworks_native` `libs/binder/rust/src/{lib,service,state,error,proxy,
//!   binder}.rs`, `src/parcel/file_descriptor.rs`, `sys/lib.rs`
//!   @ 4cdda61bb6c6e97322d2b93369191609378d286f: `check_interface`, `wait_for_interface`,
//!   `add_service`, `ProcessState`, `ThreadState`, `Status`, `ExceptionCode`/`StatusCode`
//!   (bindgen enums, SCREAMING_CASE variants), `IBinder::link_to_death(&mut self, &mut
//!   DeathRecipient)` (a trait method: called by path here), `SpIBinder::is_remote` (inherent),
//!   `BnFoo::new_binder(inner, BinderFeatures)`;
//! - the aidl Rust backend: `msft-mirror-aosp/platform.system.tools.aidl` golden outputs
//!   `tests/golden_output/aidl-test-interface-rust-source/gen/android/aidl/tests/ITestService.rs`
//!   @ 89059865cb44ec6eacaa72f10749380cbd55b1a8 and `tests/golden_output/frozen/
//!   aidl-test-versioned-interface-V1-rust-source/gen/android/aidl/versioned/tests/
//!   IFooInterface.rs` @ f7646585643e388bea05af70058431aa961b739e, `build/aidl_rust_glue.py`
//!   @ 470415446941d59a6f3b5508c3dacf808d74b827 (crate root `#[deprecated] pub use binder;`).
//!
//! Needs a libbinder_rs with `check_interface` (`src/service.rs`; e.g. omnirom
//! `android_frameworks_native` `libs/binder/rust/src/lib.rs`
//! @ 8859b131c6603fc3c80c5a93ac5fa36236843d70). Older trees (LineageOS
//! `libs/binder/rust/src/proxy.rs` @ f56c8b1e0614442e55432e39ca1bf13215dcb988) had only
//! `get_interface`/`wait_for_interface`, and a `File`-based `ParcelFileDescriptor` that
//! `host.rs` cannot use either. `librpcbinder_rs` is visibility-restricted, so only
//! `binder://NAME` is accepted; a `unix://` URI is refused.

use std::sync::Once;
use std::time::{Duration, Instant};

use android_vsockplugin::aidl::android::vsockplugin::{
    IDeviceControl::{BnDeviceControl, IDeviceControl},
    IDeviceEventListener::{BnDeviceEventListener, IDeviceEventListener},
    IHostServiceCallback::{BnHostServiceCallback, IHostServiceCallback},
    IHostServiceRegistry::{BnHostServiceRegistry, IHostServiceRegistry},
};
use binder::{BinderFeatures, ExceptionCode, FromIBinder, SpIBinder, Status, StatusCode, Strong};

use super::ServeConfig;
use crate::auth::AllowList;

/// How often a bounded lookup asks servicemanager again.
const LOOKUP_POLL: Duration = Duration::from_millis(100);

/// Where the control services live: `binder://NAME` only (see the module doc). `NAME` is the
/// instance: see [`super::service_names`].
#[derive(Clone, Debug)]
pub struct ControlUri {
    instance: String,
}

impl ControlUri {
    /// Parse and validate a control URI (`binder://NAME`, `NAME` of `[A-Za-z0-9._-]`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let instance = s.strip_prefix("binder://").ok_or_else(|| {
            format!("control URI {s:?}: only binder://NAME is available on Android")
        })?;
        if instance.is_empty()
            || !instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "instance name {instance:?} must use [A-Za-z0-9._-]"
            ));
        }
        Ok(ControlUri {
            instance: instance.to_string(),
        })
    }

    /// The instance name (`NAME`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// True for kernel binder, i.e. always here.
    pub fn is_kernel(&self) -> bool {
        true
    }
}

impl std::fmt::Display for ControlUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "binder://{}", self.instance)
    }
}

/// Starts the process's binder thread pool once (libbinder_rs asks for it before any binder
/// client or server is created; callbacks and death notifications need it).
fn start_thread_pool() {
    static START: Once = Once::new();
    START.call_once(binder::ProcessState::start_thread_pool);
}

/// Uid of the caller of the binder transaction being handled (kernel-vouched).
pub fn calling_uid() -> u32 {
    binder::ThreadState::get_calling_uid()
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
    /// Any other exception (its full description).
    Other(String),
}

/// The message of `s`. libbinder_rs has no accessor for it, so it is cut out of the description,
/// which libbinder renders as `Status(<ex>, <EX_NAME>): '[<code>: ]<message>'`
/// (`Status::toString8`); any other shape is returned whole.
fn status_message(s: &Status) -> String {
    let description = s.get_description();
    let Some(inner) = description
        .split_once("): '")
        .and_then(|(_, rest)| rest.strip_suffix('\''))
    else {
        return description;
    };
    let code = format!("{}: ", s.service_specific_error());
    match s.exception_code() {
        ExceptionCode::SERVICE_SPECIFIC => inner.strip_prefix(code.as_str()).unwrap_or(inner),
        _ => inner,
    }
    .to_string()
}

/// Classify a binder error.
pub fn error_kind(s: &Status) -> ErrorKind {
    match s.exception_code() {
        ExceptionCode::SERVICE_SPECIFIC => {
            ErrorKind::ServiceSpecific(s.service_specific_error(), status_message(s))
        }
        ExceptionCode::SECURITY => ErrorKind::Security(status_message(s)),
        ExceptionCode::TRANSACTION_FAILED => {
            ErrorKind::Transaction(format!("{:?}", s.transaction_error()))
        }
        _ => ErrorKind::Other(s.get_description()),
    }
}

/// A service-specific error with a message.
pub fn service_error(code: i32, msg: impl Into<String>) -> Status {
    let msg: String = msg.into();
    Status::new_service_specific_error_str(code, Some(msg))
}

/// An `EX_SECURITY` exception.
pub fn security_error(msg: &str) -> Status {
    Status::new_exception_str(ExceptionCode::SECURITY, Some(msg))
}

/// Wrap an `IDeviceControl` implementation as a binder.
pub fn new_control_binder<T: IDeviceControl + Sync + 'static>(s: T) -> Strong<dyn IDeviceControl> {
    start_thread_pool();
    BnDeviceControl::new_binder(s, BinderFeatures::default())
}

/// Wrap an `IHostServiceRegistry` implementation as a binder.
pub fn new_registry_binder<T: IHostServiceRegistry + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceRegistry> {
    start_thread_pool();
    BnHostServiceRegistry::new_binder(s, BinderFeatures::default())
}

/// Wrap an `IHostServiceCallback` implementation as a binder.
pub fn new_callback_binder<T: IHostServiceCallback + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceCallback> {
    start_thread_pool();
    BnHostServiceCallback::new_binder(s, BinderFeatures::default())
}

/// Wrap an `IDeviceEventListener` implementation as a binder.
pub fn new_listener_binder<T: IDeviceEventListener + Sync + 'static>(
    s: T,
) -> Strong<dyn IDeviceEventListener> {
    start_thread_pool();
    BnDeviceEventListener::new_binder(s, BinderFeatures::default())
}

/// A running control server. Inert: the process thread pool keeps serving and servicemanager
/// keeps the registrations for the life of the process.
#[derive(Debug)]
pub struct ServerHandle;

/// Publish both services with servicemanager (names from [`super::service_names`]) and start
/// the binder thread pool. Callers are not checked here but per call (`calling_uid`).
pub fn serve(
    uri: &ControlUri,
    control: Strong<dyn IDeviceControl>,
    registry: Strong<dyn IHostServiceRegistry>,
    _allow: &AllowList,
    _cfg: &ServeConfig,
) -> Result<ServerHandle, StatusCode> {
    let (control_name, registry_name) = super::service_names(uri.instance());
    start_thread_pool();
    binder::add_service(&control_name, binder::Interface::as_binder(&*control))?;
    binder::add_service(&registry_name, binder::Interface::as_binder(&*registry))?;
    log::info!("control: serving {control_name} and {registry_name}");
    Ok(ServerHandle)
}

/// A client connection. Nothing to close on kernel binder: the proxies are the connection.
#[derive(Debug)]
pub struct ClientHandle;

impl ClientHandle {
    /// No-op on kernel binder (the server sees this process die when it exits).
    pub fn close(&mut self) {}
}

/// Looks `name` up. With a `timeout`, polls `check_interface` (non-blocking) until the service
/// appears or the deadline passes, then fails with `NAME_NOT_FOUND`, so a caller such as `ctl`
/// does not hang when no plugin serves that name. Without one, `wait_for_interface` waits
/// without limit (AOSP `waitForService`), as in `rsbinder.rs`.
fn resolve<T: FromIBinder + ?Sized>(
    name: &str,
    timeout: Option<Duration>,
) -> Result<Strong<T>, StatusCode> {
    let Some(deadline) = timeout.and_then(|t| Instant::now().checked_add(t)) else {
        return binder::wait_for_interface::<T>(name);
    };
    loop {
        match binder::check_interface::<T>(name) {
            Err(StatusCode::NAME_NOT_FOUND) if Instant::now() < deadline => {
                std::thread::sleep(LOOKUP_POLL);
            }
            found => return found,
        }
    }
}

/// Connect to the device-control service at `uri`. `listen` is for RPC only (kernel binder
/// delivers event-listener callbacks on the thread pool this starts).
pub fn connect_control(
    uri: &ControlUri,
    _listen: bool,
    timeout: Option<Duration>,
) -> Result<(Strong<dyn IDeviceControl>, ClientHandle), StatusCode> {
    start_thread_pool();
    let (name, _) = super::service_names(uri.instance());
    Ok((resolve::<dyn IDeviceControl>(&name, timeout)?, ClientHandle))
}

/// Connect to the host-service registry at `uri`, ready to receive callbacks.
pub fn connect_registry(
    uri: &ControlUri,
    timeout: Option<Duration>,
) -> Result<(Strong<dyn IHostServiceRegistry>, ClientHandle), StatusCode> {
    start_thread_pool();
    let (_, name) = super::service_names(uri.instance());
    Ok((
        resolve::<dyn IHostServiceRegistry>(&name, timeout)?,
        ClientHandle,
    ))
}

/// Keeps a death recipient alive (see [`watch_death`]); dropping it unlinks it.
pub struct DeathWatch {
    _recipient: binder::DeathRecipient,
}

/// Watch `ibinder` for death; `on_death` runs when it dies. Keep the returned token: dropping
/// it cancels the watch. Fails with `INVALID_OPERATION` for a local binder.
pub fn watch_death(
    ibinder: &SpIBinder,
    on_death: impl Fn() + Send + Sync + 'static,
) -> Result<DeathWatch, StatusCode> {
    let mut recipient = binder::DeathRecipient::new(on_death);
    let mut target = ibinder.clone();
    binder::IBinder::link_to_death(&mut target, &mut recipient)?;
    Ok(DeathWatch {
        _recipient: recipient,
    })
}

/// The binder of an interface proxy, for identity comparison and death watches.
pub fn binder_of<I: binder::Interface + ?Sized>(i: &I) -> SpIBinder {
    binder::Interface::as_binder(i)
}
