//! Type-only stand-in for the crate Soong's aidl_interface generates for android.vsockplugin
//! (Rust backend shape from system/tools/aidl golden outputs: explicit lifetimes, r# idents,
//! parcelables `#[derive(Debug)]` + Default only, enums via declare_binder_enum).
#![allow(non_snake_case, missing_docs, dead_code, clippy::all, non_upper_case_globals)]

#[deprecated(note = "Please access via libbinder_rs binder::")]
pub use binder;

macro_rules! iface {
    ($iface:ident, $bn:ident, $bp:ident) => {
        pub struct $bp {
            binder: binder::SpIBinder,
        }
        impl binder::Interface for $bp {
            fn as_binder(&self) -> binder::SpIBinder {
                self.binder.clone()
            }
        }
        #[repr(transparent)]
        pub struct $bn(Box<dyn $iface + Sync + Send + 'static>);
        impl $bn {
            pub fn new_binder<T: $iface + Sync + Send + 'static>(
                inner: T,
                features: binder::BinderFeatures,
            ) -> binder::Strong<dyn $iface> {
                let _ = ($bn(Box::new(inner)), features);
                unimplemented!()
            }
        }
        impl binder::FromIBinder for dyn $iface {
            fn try_from(
                _ibinder: binder::SpIBinder,
            ) -> core::result::Result<binder::Strong<dyn $iface>, binder::StatusCode> {
                unimplemented!()
            }
        }
        impl core::fmt::Debug for dyn $iface + '_ {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.pad(stringify!($iface))
            }
        }
    };
}

pub mod aidl {
    pub mod android {
        pub mod vsockplugin {
            pub mod ErrorCode {
                #[derive(Default, Copy, Clone, PartialOrd, Ord, PartialEq, Eq, Hash)]
                #[repr(C)]
                pub struct r#ErrorCode(pub i32);
                impl r#ErrorCode {
                    pub const r#NONE: Self = Self(0);
                    pub const r#UNSUPPORTED_FEATURE: Self = Self(1);
                    pub const r#INVALID_ARGUMENT: Self = Self(2);
                    pub const r#NOT_FOUND: Self = Self(3);
                    pub const r#ALREADY_REGISTERED: Self = Self(4);
                    pub const r#REFUSED: Self = Self(5);
                    pub const fn get(&self) -> i32 {
                        self.0
                    }
                }
                impl core::fmt::Debug for r#ErrorCode {
                    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        write!(f, "{}", self.0)
                    }
                }
            }
            pub mod GuestConnectRequest {
                #[derive(Debug)]
                pub struct r#GuestConnectRequest {
                    pub r#guestCid: i64,
                    pub r#guestPort: i32,
                    pub r#hostPort: i32,
                }
                impl Default for r#GuestConnectRequest {
                    fn default() -> Self {
                        Self { r#guestCid: 0, r#guestPort: 0, r#hostPort: 0 }
                    }
                }
            }
            pub mod ConnectReply {
                #[derive(Debug)]
                pub struct r#ConnectReply {
                    pub r#socket: Option<binder::ParcelFileDescriptor>,
                    pub r#refusalReason: String,
                }
                impl Default for r#ConnectReply {
                    fn default() -> Self {
                        Self { r#socket: Default::default(), r#refusalReason: Default::default() }
                    }
                }
            }
            pub mod ServiceRegistration {
                #[derive(Debug)]
                pub struct r#ServiceRegistration {
                    pub r#hostPort: i32,
                    pub r#guestCid: i64,
                    pub r#name: String,
                    pub r#requiredFeatures: i64,
                }
                impl Default for r#ServiceRegistration {
                    fn default() -> Self {
                        Self {
                            r#hostPort: 0,
                            r#guestCid: -1,
                            r#name: Default::default(),
                            r#requiredFeatures: 0,
                        }
                    }
                }
            }
            pub mod IHostServiceCallback {
                use super::ConnectReply::ConnectReply;
                use super::GuestConnectRequest::GuestConnectRequest;
                pub trait IHostServiceCallback: binder::Interface + Send {
                    fn get_descriptor() -> &'static str
                    where
                        Self: Sized,
                    {
                        "android.vsockplugin.IHostServiceCallback"
                    }
                    fn r#onGuestConnect<'a, 'l1>(
                        &'a self,
                        _arg_request: &'l1 GuestConnectRequest,
                    ) -> binder::Result<ConnectReply>;
                    fn r#getInterfaceVersion<'a>(&'a self) -> binder::Result<i32> {
                        Ok(VERSION)
                    }
                    fn r#getInterfaceHash<'a>(&'a self) -> binder::Result<String> {
                        Ok(HASH.into())
                    }
                }
                pub const VERSION: i32 = 1;
                pub const HASH: &str = "0";
                iface!(IHostServiceCallback, BnHostServiceCallback, BpHostServiceCallback);
            }
            pub mod IHostServiceRegistry {
                use super::IHostServiceCallback::IHostServiceCallback;
                use super::ServiceRegistration::ServiceRegistration;
                pub const r#CID_ANY: i64 = -1;
                pub trait IHostServiceRegistry: binder::Interface + Send {
                    fn r#registerService<'a, 'l1, 'l2>(
                        &'a self,
                        _arg_registration: &'l1 ServiceRegistration,
                        _arg_callback: &'l2 binder::Strong<dyn IHostServiceCallback>,
                    ) -> binder::Result<i64>;
                    fn r#unregisterService<'a>(&'a self, _arg_registrationId: i64)
                        -> binder::Result<()>;
                    fn r#getInterfaceVersion<'a>(&'a self) -> binder::Result<i32> {
                        Ok(VERSION)
                    }
                    fn r#getInterfaceHash<'a>(&'a self) -> binder::Result<String> {
                        Ok(HASH.into())
                    }
                }
                pub const VERSION: i32 = 1;
                pub const HASH: &str = "0";
                iface!(IHostServiceRegistry, BnHostServiceRegistry, BpHostServiceRegistry);
            }
            pub mod IDeviceEventListener {
                pub trait IDeviceEventListener: binder::Interface + Send {
                    fn r#onEvent<'a, 'l1>(&'a self, _arg_event: &'l1 [u8]) -> binder::Result<()>;
                    fn r#getInterfaceVersion<'a>(&'a self) -> binder::Result<i32> {
                        Ok(VERSION)
                    }
                    fn r#getInterfaceHash<'a>(&'a self) -> binder::Result<String> {
                        Ok(HASH.into())
                    }
                }
                pub const VERSION: i32 = 1;
                pub const HASH: &str = "0";
                iface!(IDeviceEventListener, BnDeviceEventListener, BpDeviceEventListener);
            }
            pub mod IDeviceControl {
                use super::IDeviceEventListener::IDeviceEventListener;
                pub trait IDeviceControl: binder::Interface + Send {
                    fn r#getCapabilities<'a>(&'a self) -> binder::Result<Vec<u8>>;
                    fn r#getStatus<'a, 'l1>(&'a self, _arg_request: &'l1 [u8])
                        -> binder::Result<Vec<u8>>;
                    fn r#listConnections<'a, 'l1>(
                        &'a self,
                        _arg_request: &'l1 [u8],
                    ) -> binder::Result<Vec<u8>>;
                    fn r#getMetrics<'a, 'l1>(&'a self, _arg_request: &'l1 [u8])
                        -> binder::Result<Vec<u8>>;
                    fn r#setPolicy<'a, 'l1>(&'a self, _arg_request: &'l1 [u8]) -> binder::Result<()>;
                    fn r#getPolicy<'a, 'l1>(&'a self, _arg_request: &'l1 [u8])
                        -> binder::Result<Vec<u8>>;
                    fn r#listRoutes<'a, 'l1>(&'a self, _arg_request: &'l1 [u8])
                        -> binder::Result<Vec<u8>>;
                    fn r#explainRoute<'a, 'l1>(
                        &'a self,
                        _arg_request: &'l1 [u8],
                    ) -> binder::Result<Vec<u8>>;
                    fn r#resetConnection<'a>(
                        &'a self,
                        _arg_guestCid: i64,
                        _arg_guestPort: i32,
                        _arg_hostPort: i32,
                    ) -> binder::Result<()>;
                    fn r#registerEventListener<'a, 'l1>(
                        &'a self,
                        _arg_listener: &'l1 binder::Strong<dyn IDeviceEventListener>,
                    ) -> binder::Result<()>;
                    fn r#unregisterEventListener<'a, 'l1>(
                        &'a self,
                        _arg_listener: &'l1 binder::Strong<dyn IDeviceEventListener>,
                    ) -> binder::Result<()>;
                    fn r#getInterfaceVersion<'a>(&'a self) -> binder::Result<i32> {
                        Ok(VERSION)
                    }
                    fn r#getInterfaceHash<'a>(&'a self) -> binder::Result<String> {
                        Ok(HASH.into())
                    }
                }
                pub const VERSION: i32 = 1;
                pub const HASH: &str = "0";
                iface!(IDeviceControl, BnDeviceControl, BpDeviceControl);
            }
        }
    }
}
