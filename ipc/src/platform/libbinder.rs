//! Soong backend (`cfg(soong)`): libbinder_rs + servicemanager. Same functions as `rsbinder.rs`.
//!
//! NOT compiled by cargo and not verified here (no Soong/AOSP tree on this machine); written
//! against the libbinder_rs API described in shared/reference/binder.md §2. On Android only
//! kernel binder is used (`binder://NAME`); `librpcbinder_rs` is visibility-restricted, so a
//! `unix://` URI is refused.

use std::time::Duration;

use android_vsockplugin::aidl::android::vsockplugin::{
    IDeviceControl::{BnDeviceControl, IDeviceControl},
    IDeviceEventListener::{BnDeviceEventListener, IDeviceEventListener},
    IHostServiceCallback::{BnHostServiceCallback, IHostServiceCallback},
    IHostServiceRegistry::{BnHostServiceRegistry, IHostServiceRegistry},
};
use binder::{BinderFeatures, ExceptionCode, SpIBinder, Status, StatusCode, Strong};

use crate::auth::AllowList;

/// `binder://NAME` only (see the module doc).
#[derive(Clone, Debug)]
pub struct ControlUri {
    instance: String,
}

impl ControlUri {
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
    pub fn instance(&self) -> &str {
        &self.instance
    }
    pub fn is_kernel(&self) -> bool {
        true
    }
}

impl std::fmt::Display for ControlUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "binder://{}", self.instance)
    }
}

pub fn calling_uid() -> u32 {
    binder::ThreadState::get_calling_uid()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    ServiceSpecific(i32, String),
    Security(String),
    Transaction(String),
    Other(String),
}

pub fn error_kind(s: &Status) -> ErrorKind {
    let msg = s.get_description();
    match s.exception_code() {
        ExceptionCode::SERVICE_SPECIFIC => {
            ErrorKind::ServiceSpecific(s.service_specific_error(), msg)
        }
        ExceptionCode::SECURITY => ErrorKind::Security(msg),
        ExceptionCode::TRANSACTION_FAILED => {
            ErrorKind::Transaction(format!("{:?}", s.transaction_error()))
        }
        _ => ErrorKind::Other(msg),
    }
}

pub fn service_error(code: i32, msg: impl Into<String>) -> Status {
    Status::new_service_specific_error_str(code, Some(msg.into()))
}

pub fn security_error(msg: &str) -> Status {
    Status::new_exception_str(ExceptionCode::SECURITY, Some(msg))
}

pub fn new_control_binder<T: IDeviceControl + Sync + 'static>(s: T) -> Strong<dyn IDeviceControl> {
    BnDeviceControl::new_binder(s, BinderFeatures::default())
}
pub fn new_registry_binder<T: IHostServiceRegistry + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceRegistry> {
    BnHostServiceRegistry::new_binder(s, BinderFeatures::default())
}
pub fn new_callback_binder<T: IHostServiceCallback + Sync + 'static>(
    s: T,
) -> Strong<dyn IHostServiceCallback> {
    BnHostServiceCallback::new_binder(s, BinderFeatures::default())
}
pub fn new_listener_binder<T: IDeviceEventListener + Sync + 'static>(
    s: T,
) -> Strong<dyn IDeviceEventListener> {
    BnDeviceEventListener::new_binder(s, BinderFeatures::default())
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Unused on kernel binder (no reply timeout for callbacks: a hung service blocks the
    /// resolving thread; the lead should resolve off the hot path).
    pub callback_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            callback_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

#[derive(Debug)]
pub struct ServerHandle;

pub fn serve(
    uri: &ControlUri,
    control: Strong<dyn IDeviceControl>,
    registry: Strong<dyn IHostServiceRegistry>,
    _allow: &AllowList,
    _cfg: &ServeConfig,
) -> Result<ServerHandle, StatusCode> {
    let (control_name, registry_name) = super::service_names(uri.instance());
    binder::ProcessState::start_thread_pool();
    binder::add_service(&control_name, control.as_binder())?;
    binder::add_service(&registry_name, registry.as_binder())?;
    log::info!("control: serving {control_name} and {registry_name}");
    Ok(ServerHandle)
}

#[derive(Debug)]
pub struct ClientHandle;

impl ClientHandle {
    pub fn close(&mut self) {}
}

pub fn connect_control(
    uri: &ControlUri,
    _listen: bool,
    _timeout: Option<Duration>,
) -> Result<(Strong<dyn IDeviceControl>, ClientHandle), StatusCode> {
    binder::ProcessState::start_thread_pool();
    let (name, _) = super::service_names(uri.instance());
    Ok((
        binder::wait_for_interface::<dyn IDeviceControl>(&name)?,
        ClientHandle,
    ))
}

pub fn connect_registry(
    uri: &ControlUri,
    _timeout: Option<Duration>,
) -> Result<(Strong<dyn IHostServiceRegistry>, ClientHandle), StatusCode> {
    binder::ProcessState::start_thread_pool();
    let (_, name) = super::service_names(uri.instance());
    Ok((
        binder::wait_for_interface::<dyn IHostServiceRegistry>(&name)?,
        ClientHandle,
    ))
}

pub struct DeathWatch {
    _recipient: binder::DeathRecipient,
}

pub fn watch_death(
    binder: &SpIBinder,
    on_death: impl Fn() + Send + Sync + 'static,
) -> Result<DeathWatch, StatusCode> {
    let mut r = binder::DeathRecipient::new(on_death);
    let mut b = binder.clone();
    b.link_to_death(&mut r)?;
    Ok(DeathWatch { _recipient: r })
}

pub fn binder_of<I: binder::Interface + ?Sized>(i: &I) -> SpIBinder {
    i.as_binder()
}
