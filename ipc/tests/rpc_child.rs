//! A host service in another process: killing it removes its registration.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vsock_plugin_ipc::host::HostService;
use vsock_plugin_ipc::platform::ControlUri;
use vsock_plugin_ipc::{PortResolver, Route};

const CHILD_ENV: &str = "VSOCK_CTL_TEST_CHILD_URI";

/// Runs as the child when CHILD_ENV is set (re-executed by the test below); otherwise a no-op.
#[test]
fn child_host_service() {
    let Ok(uri) = std::env::var(CHILD_ENV) else {
        return;
    };
    let uri = ControlUri::parse(&uri).unwrap();
    let svc = HostService::register(&uri, 7000, Some(3), "child", |_| echo_upper_socket()).unwrap();
    println!("READY {}", svc.id());
    std::thread::sleep(Duration::from_secs(60));
    panic!("child was not killed");
}

#[test]
fn killed_service_process_loses_its_registration() {
    let f = serve();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_host_service",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, f.uri.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints "test child_host_service ... " before the test's own output on that line.
    let ready = lines
        .find_map(|l| {
            l.ok()
                .and_then(|l| l.find("READY ").map(|i| l[i..].to_string()))
        })
        .expect("child READY");
    assert_eq!(ready, "READY 1");
    assert_eq!(f.plane.registration_count(), 1);

    // Only CID 3 is registered: CID 4 gets the default mapping.
    assert!(matches!(f.plane.route(4, 99, 7000), Route::Unix));
    let Route::Fd(mut s) = f.plane.route(3, 99, 7000) else {
        panic!("expected Fd")
    };
    assert_eq!(roundtrip(&mut s, b"across processes"), b"ACROSS PROCESSES");

    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("registration removed after kill", || {
        f.plane.registration_count() == 0
    });
    match f.plane.route(3, 99, 7000) {
        Route::Deny(r) => assert_eq!(r, "host service \"child\" for port 7000 died"),
        other => panic!("expected Deny, got {other:?}"),
    }
    // The socket handed over before the death still works: the bytes never went through binder.
    // (Its peer end lived in the child and is gone now: reading gives EOF.)
    use std::io::Read;
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
}
