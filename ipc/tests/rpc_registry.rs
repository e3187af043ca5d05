//! Host-service registry over binder RPC on a Unix socket.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use vsock_plugin_ipc::host::HostService;
use vsock_plugin_ipc::{PortResolver, Route};

#[test]
fn registered_service_hands_back_connected_socket() {
    let f = serve();
    let (tx, rx) = mpsc::channel();
    let svc = HostService::register(&f.uri, 5000, None, "echo", move |req| {
        tx.send((req.guestCid, req.guestPort, req.hostPort))
            .unwrap();
        echo_upper_socket()
    })
    .unwrap();
    assert_eq!(f.plane.registration_count(), 1);
    let route = f.plane.route(3, 1234, 5000);
    let Route::Fd(mut s) = route else {
        panic!("expected Fd, got {route:?}")
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(1)).unwrap(),
        (3, 1234, 5000)
    );
    assert_eq!(
        roundtrip(&mut s, b"hello through binder"),
        b"HELLO THROUGH BINDER"
    );
    // Another port is untouched: the default hybrid mapping.
    assert!(matches!(f.plane.route(3, 1234, 5001), Route::Unix));
    drop(svc);
    wait_until("unregister", || f.plane.registration_count() == 0);
    // Explicit unregister leaves no tombstone: back to the default mapping.
    assert!(matches!(f.plane.route(3, 1234, 5000), Route::Unix));
}

#[test]
fn service_death_removes_registration_and_routes_deny() {
    let f = serve();
    let svc = HostService::register(&f.uri, 5000, None, "mortal", |_| echo_upper_socket()).unwrap();
    assert!(matches!(f.plane.route(3, 1, 5000), Route::Fd(_)));
    svc.abandon();
    wait_until("death notification", || f.plane.registration_count() == 0);
    match f.plane.route(3, 1, 5000) {
        Route::Deny(r) => assert_eq!(r, "host service \"mortal\" for port 5000 died"),
        other => panic!("expected Deny, got {other:?}"),
    }
}

#[test]
fn hung_service_is_bounded_by_the_callback_timeout() {
    let f = serve(); // callback_timeout = 3 s
    let svc = HostService::register(&f.uri, 5000, None, "slow", |_| {
        std::thread::sleep(Duration::from_secs(6));
        echo_upper_socket()
    })
    .unwrap();
    let t = std::time::Instant::now();
    let route = f.plane.route(3, 1, 5000);
    let took = t.elapsed();
    let Route::Deny(reason) = route else {
        panic!("expected Deny, got {route:?}")
    };
    assert!(reason.starts_with("service \"slow\" failed: "), "{reason}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // rsbinder ends the session of a peer that misses the reply deadline: the service is dead.
    wait_until("session end", || f.plane.registration_count() == 0);
    match f.plane.route(3, 1, 5000) {
        Route::Deny(r) => assert_eq!(r, "host service \"slow\" for port 5000 died"),
        other => panic!("{other:?}"),
    }
    drop(svc);
}
