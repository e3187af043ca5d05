//! Control plane of vsock-plugin (AIDL interfaces over binder). The interfaces and services arrive
//! with the control-plane issue; this crate is in the workspace so the layout builds from day one.
