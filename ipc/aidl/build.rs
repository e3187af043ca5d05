//! AIDL -> Rust with rsbinder-aidl. The `.aidl` files are the single source of truth; Soong builds
//! the same files with `aidl_interface` (Rust backend) instead.

use std::path::Path;

/// Version of the (not yet frozen) interfaces; getInterfaceVersion() returns it.
const VERSION: i32 = 1;

fn main() {
    let dir = Path::new("android/vsockplugin");
    let interfaces = [
        "IHostServiceRegistry.aidl",
        "IHostServiceCallback.aidl",
        "IDeviceControl.aidl",
        "IDeviceEventListener.aidl",
    ];
    let types = [
        "ErrorCode.aidl",
        "GuestConnectRequest.aidl",
        "ConnectReply.aidl",
        "ServiceRegistration.aidl",
    ];
    let mut b = rsbinder_aidl::Builder::new()
        .set_async_support(false)
        .include_dir(".")
        .output("android_vsockplugin.rs");
    for f in types {
        b = b.source(dir.join(f));
    }
    for f in interfaces {
        b = b.source(dir.join(f)).version(VERSION);
    }
    if let Err(e) = b.generate() {
        eprintln!("AIDL generation failed: {e:?}");
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed=android");
}
