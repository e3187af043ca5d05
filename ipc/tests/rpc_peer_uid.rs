//! The caller allow-list against a real other uid: a child process drops to uid 65534 (needs
//! root; skipped with a message otherwise) and calls over the Unix socket. Its SO_PEERCRED uid
//! decides.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;
use vsock_plugin_ipc::testing::FakeDevice;
use vsock_plugin_ipc::{ctl, AllowList};

const CHILD_ENV: &str = "VSOCK_CTL_TEST_UID_CHILD_URI";
const NOBODY: u32 = 65534;

#[test]
fn uid_child() {
    let Ok(uri) = std::env::var(CHILD_ENV) else {
        return;
    };
    // SAFETY: plain syscalls; this process only runs this test.
    unsafe {
        assert_eq!(libc::setgid(NOBODY), 0);
        assert_eq!(libc::setuid(NOBODY), 0);
    }
    match ctl::run(&["--uri", uri.as_str(), "caps"]) {
        Ok(s) => println!("RESULT ok {}", s.lines().next().unwrap_or("")),
        Err(e) => println!("RESULT err {e:?}"),
    }
}

fn run_child(f: &Fixture) -> String {
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        f.dir.path().join("ctl.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "uid_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, f.uri.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .find_map(|l| {
            l.ok()
                .and_then(|l| l.find("RESULT ").map(|i| l[i + 7..].to_string()))
        })
        .expect("child RESULT");
    child.wait().unwrap();
    out
}

#[test]
fn peer_uid_decides() {
    if my_uid() != 0 {
        eprintln!("SKIP peer_uid_decides: needs root to run a child as uid {NOBODY}");
        return;
    }
    let denied = serve_with(FakeDevice::sample(), AllowList::new([0]));
    assert_eq!(
        run_child(&denied),
        format!("err Connect(\"{}: DeadObject\")", denied.uri)
    );
    let allowed = serve_with(FakeDevice::sample(), AllowList::new([0, NOBODY]));
    assert_eq!(run_child(&allowed), "ok protocol 1.0");
}
