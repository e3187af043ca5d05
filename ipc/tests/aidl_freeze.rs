//! Cargo-side stable-AIDL freeze check (Soong does this itself for versioned aidl_interface).
//!
//! `ipc/aidl/aidl_api/android.vsockplugin/<N>/` holds the frozen dump of version N and its
//! `.hash` (sha256 over the sorted files, see `dump_hash`). While `VERSION` in `ipc/aidl/build.rs`
//! equals the latest frozen N, the sources must equal that dump. To change an interface: bump
//! VERSION to N+1 (append-only edits), then freeze with `UPDATE_AIDL_API=1`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vsock_plugin_ipc::aidl::IDeviceControl;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "aidl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn dump_hash(files: &[(String, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (name, body) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update((body.len() as u64).to_le_bytes());
        h.update(body);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sources_match_the_frozen_dump() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aidl");
    let version = IDeviceControl::VERSION;
    let dump = root.join(format!("aidl_api/android.vsockplugin/{version}"));
    let current = files(&root.join("android/vsockplugin"));
    let hash_file = dump.join(".hash");
    if std::env::var_os("UPDATE_AIDL_API").is_some() && !hash_file.exists() {
        let d = dump.join("android/vsockplugin");
        std::fs::create_dir_all(&d).unwrap();
        for (name, body) in &current {
            std::fs::write(d.join(name), body).unwrap();
        }
        std::fs::write(&hash_file, dump_hash(&current) + "\n").unwrap();
    }
    let frozen = files(&dump.join("android/vsockplugin"));
    let want = std::fs::read_to_string(&hash_file)
        .unwrap_or_else(|e| panic!("{}: {e}", hash_file.display()));
    assert_eq!(
        dump_hash(&frozen),
        want.trim(),
        "frozen dump of version {version} was edited"
    );
    assert_eq!(
        dump_hash(&current),
        want.trim(),
        "AIDL sources differ from frozen version {version}: bump VERSION in ipc/aidl/build.rs and freeze"
    );
}
