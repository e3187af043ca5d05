//! Cargo-side stable-AIDL freeze check, the same rules Soong applies to a versioned
//! `aidl_interface` (ipc/aidl/Android.bp):
//!
//! - `ipc/aidl/aidl_api/android.vsockplugin/<N>/` holds the frozen dump of version N, and its
//!   `.hash` is AOSP's: sha1 over the `sha1sum` lines of the sorted `.aidl` files followed by the
//!   previous version's name (`latest-version` for 1), see system/tools/aidl/build/aidl_api.go.
//! - `current/` is the tip; while `VERSION` in `ipc/aidl/build.rs` equals the latest frozen N, the
//!   sources, `current/` and the dump of N are identical.
//!
//! To change an interface: append-only edits, bump VERSION to N+1, then freeze (AOSP:
//! `m android.vsockplugin-freeze-api`).

use std::path::{Path, PathBuf};
use std::process::Command;

use vsock_plugin_ipc::aidl::IDeviceControl;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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

/// AOSP's `.hash` of a dump directory.
fn aosp_hash(dump: &Path, previous: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "cd '{}' && {{ find ./ -name '*.aidl' -print0 | LC_ALL=C sort -z | xargs -0 sha1sum && echo {previous}; }} \
             | sha1sum | cut -d ' ' -f 1",
            dump.display()
        ))
        .output()
        .expect("bash and sha1sum");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sources_match_the_frozen_dump_and_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aidl");
    let version = IDeviceControl::VERSION;
    let api = root.join("aidl_api/android.vsockplugin");
    let dump = api.join(version.to_string());
    let previous = if version > 1 {
        (version - 1).to_string()
    } else {
        "latest-version".to_string()
    };
    let hash_file = dump.join(".hash");
    let want = std::fs::read_to_string(&hash_file)
        .unwrap_or_else(|e| panic!("{}: {e}", hash_file.display()));
    assert_eq!(
        aosp_hash(&dump, &previous),
        want.trim(),
        "frozen dump of version {version} was edited"
    );
    let sources = files(&root.join("android/vsockplugin"));
    assert_eq!(
        sources,
        files(&dump.join("android/vsockplugin")),
        "AIDL sources differ from frozen version {version}: bump VERSION in ipc/aidl/build.rs and freeze"
    );
    assert_eq!(
        sources,
        files(&api.join("current/android/vsockplugin")),
        "aidl_api/.../current is stale"
    );
}
