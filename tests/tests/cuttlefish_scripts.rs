//! The Cuttlefish scripts that run without a Cuttlefish host, run: the swap script really swaps
//! and restores, and the e2e driver passes its cases against a fake guest (cuttlefish/README.md).
//! Checks that `cuttlefish/` agrees with itself and with the code (flags, configs, kernel
//! fragment) are in the `consistency` test target.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("cuttlefish")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vsock-cf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    d
}

fn write_exe(p: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn swap(pkg: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(cf().join("swap-host-binary.sh"))
        .arg("--host-package")
        .arg(pkg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn swap_script_installs_keeps_a_backup_and_restores() {
    let pkg = scratch("swap");
    let target = pkg.join("bin/vhost_device_vsock");
    let stock = "#!/bin/sh\necho stock\n";
    write_exe(&target, stock);
    let ours = pkg.join("vsock-plugin");
    write_exe(&ours, "#!/bin/sh\necho ours\n");
    let ours_s = ours.to_str().unwrap();

    let (ok, msg) = swap(&pkg, &["--status"]);
    assert!(ok && msg.contains("stock"), "{msg}");
    let (ok, msg) = swap(&pkg, &["--binary", ours_s]);
    assert!(ok, "{msg}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "#!/bin/sh\necho ours\n"
    );
    assert_eq!(
        std::fs::read_to_string(pkg.join("bin/vhost_device_vsock.stock")).unwrap(),
        stock
    );
    let (ok, msg) = swap(&pkg, &["--status"]);
    assert!(ok && msg.contains("vsock-plugin installed"), "{msg}");
    // Installing twice keeps the stock backup (never backs up our own binary).
    let (ok, msg) = swap(&pkg, &["--binary", ours_s]);
    assert!(ok, "{msg}");
    assert_eq!(
        std::fs::read_to_string(pkg.join("bin/vhost_device_vsock.stock")).unwrap(),
        stock
    );
    let (ok, msg) = swap(&pkg, &["--restore"]);
    assert!(ok, "{msg}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), stock);
    assert!(!pkg.join("bin/vhost_device_vsock.stock").exists());
    // Restoring again is an error, not a silent no-op; so is a package without the backend.
    assert!(!swap(&pkg, &["--restore"]).0);
    std::fs::remove_file(&target).unwrap();
    assert!(!swap(&pkg, &["--binary", ours_s]).0);
    let _ = std::fs::remove_dir_all(&pkg);
}

#[test]
fn e2e_driver_runs_its_cases_against_a_fake_guest() {
    // ci/fake_adb.py plays adb, the agent (same ops and control lines as vsock-guest-agent) and the
    // backend's hybrid sockets over plain Unix sockets: this checks the driver, not vsock.
    let dir = scratch("driver");
    let uds = dir.join("vm.vsock");
    let agent = dir.join("agent");
    std::fs::write(&agent, b"").unwrap();
    let ci = cf().join("ci");
    let out = Command::new("python3")
        .arg(ci.join("guest_agent_driver.py"))
        .arg("--adb")
        .arg(ci.join("fake_adb.py"))
        .arg("--uds-path")
        .arg(&uds)
        .arg("--agent")
        .arg(&agent)
        .env("FAKE_UDS", &uds)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the Cuttlefish driver check: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && stdout.contains("5 passed, 0 failed"),
        "driver against the fake guest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
