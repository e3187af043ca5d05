//! The transport seam. Everything binder-runtime-specific lives in one backend module:
//!
//! - [`rsbinder`](self) (cargo builds, feature `rsbinder`): kernel binder or binder RPC over a Unix
//!   socket, chosen by a URI (`binder://NAME`, `unix:///path#NAME`);
//! - `libbinder.rs` (Soong builds, `cfg(soong)`): libbinder_rs + servicemanager.
//!
//! Both expose the same functions: [`calling_uid`], [`service_error`], [`security_error`],
//! [`new_*_binder`](new_control_binder), [`serve`], [`connect_control`], [`connect_registry`],
//! [`ControlUri`]. Service code outside this module names only `android_vsockplugin::binder::*`.

#[cfg(all(not(soong), feature = "rsbinder"))]
mod rsbinder;
#[cfg(all(not(soong), feature = "rsbinder"))]
pub use self::rsbinder::*;

#[cfg(soong)]
mod libbinder;
#[cfg(soong)]
pub use self::libbinder::*;

use std::time::Duration;

/// Transport options of `serve`. Binder RPC only: on kernel binder (and so in Soong builds)
/// neither applies — there is no reply timeout for a callback, so a hung host service blocks
/// the resolving thread, and the process thread pool serves every client.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The longest the plugin waits for a callback's reply (a host service's
    /// `onGuestConnect`); on expiry that service's session ends and its registrations go.
    pub callback_timeout: Duration,
    /// Most concurrent client connections.
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

/// The service names an instance `NAME` is published under (AIDL HAL convention
/// `<interface descriptor>/<instance>`).
pub fn service_names(instance: &str) -> (String, String) {
    (
        format!("android.vsockplugin.IDeviceControl/{instance}"),
        format!("android.vsockplugin.IHostServiceRegistry/{instance}"),
    )
}
