//! Control plane of vsock-plugin: binder (AIDL `android.vsockplugin`) services that proxy control
//! to host services and expose the device's status, connections, metrics and policy.
//!
//! - [`api`]: what the plugin implements ([`DeviceControl`]) and asks ([`PortResolver`] →
//!   [`Route`]).
//! - [`service::ControlPlane`]: the shared state and both services (`IDeviceControl`,
//!   `IHostServiceRegistry`), transport-neutral.
//! - [`platform`]: the only transport-specific module (rsbinder for cargo, libbinder_rs under
//!   `cfg(soong)`); URIs `binder://NAME` or `unix:///path#NAME`.
//! - [`ctl`]: the `vsock-plugin ctl ...` client (tables or `--json`).
//! - [`host`]: helpers for host services (register a port, answer with a socket).
//!
//! Binder carries control only: a guest connection's bytes flow through the socket a host
//! service hands back, never through binder.

pub mod api;
pub mod auth;
pub mod ctl;
pub mod host;
pub mod platform;
pub mod policy;
pub mod service;
pub mod testing;

pub use android_vsockplugin as aidl_crate;
pub use android_vsockplugin::aidl::android::vsockplugin as aidl;
pub use api::{ControlError, DeviceControl, PortResolver, Route};
pub use auth::AllowList;
pub use service::ControlPlane;
/// The protobuf payloads (`vsock-plugin-proto`).
pub use vsock_plugin_proto as proto;
