//! Config files (`--config`): a PluginConfig as binary protobuf or as JSON, read from a file.
//! Invariants: no panic; what loads converts into VmConfigs whose validation never panics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vsock_plugin::config::file::load;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("vsock-fuzz-config-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if std::fs::write(path(), data).is_err() {
        return;
    }
    if let Ok(vms) = load(path()) {
        for vm in &vms {
            let _ = vm.validate();
        }
    }
});
