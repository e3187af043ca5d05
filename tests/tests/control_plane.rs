//! The control plane end to end: the plugin binary serving binder RPC on a Unix socket, a host
//! service registered through it, guests connecting through the fd the service hands back,
//! policy, status and `vsock-plugin ctl`.

mod common;
use common::*;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::mpsc;

use vsock_plugin_ipc::host::HostService;
use vsock_plugin_ipc::platform::ControlUri;
use vsock_plugin_tests::frontend::plugin_process::plugin_binary;

struct Setup {
    p: PluginProcess,
    uri: String,
    _dir: TempDir,
}

fn plugin_with_control() -> Setup {
    let dir = TempDir::new().unwrap();
    let uri = format!("unix://{}#vsock", dir.join("ctl.sock").display());
    let p = plugin(&["--control", &uri]);
    // The control socket appears once the plugin serves it.
    let path = dir.join("ctl.sock");
    let deadline = std::time::Instant::now() + secs(5);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(ms(20));
    }
    assert!(
        path.exists(),
        "control socket {}: {}",
        path.display(),
        p.stderr_tail(4000)
    );
    Setup { p, uri, _dir: dir }
}

fn ctl(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(plugin_binary())
        .arg("ctl")
        .arg("--uri")
        .arg(uri)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_registered_service_gets_the_guest_connection_and_bytes_flow_through_its_fd() {
    let s = plugin_with_control();
    let (tx, rx) = mpsc::channel::<(u64, UnixStream)>();
    let tx = std::sync::Mutex::new(tx);
    let svc = HostService::register(
        &ControlUri::parse(&s.uri).unwrap(),
        6000,
        None,
        "echo",
        move |req| {
            let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
            tx.lock()
                .unwrap()
                .send((req.guestCid as u64, mine))
                .map_err(|e| e.to_string())?;
            Ok(theirs)
        },
    )
    .expect("register");
    let mut vm = qemu_vm(&s.p);
    let id = vm
        .driver
        .connect(2, 6000, TYPE_STREAM)
        .expect("connect routed to the service");
    let (cid, mut service_end) = rx.recv_timeout(secs(5)).expect("the service was asked");
    assert_eq!(cid, 3);
    vm.driver.send(id, b"to the service").unwrap();
    assert_eq!(
        read_exact_timeout(&mut service_end, 14, secs(5)).unwrap(),
        b"to the service"
    );
    service_end.write_all(b"from the service").unwrap();
    assert_eq!(
        vm.driver.recv_exact(id, 16, secs(5)).unwrap(),
        b"from the service"
    );

    let (ok, out) = ctl(&s.uri, &["connections"]);
    assert!(ok, "{out}");
    assert!(out.contains("6000"), "{out}");
    let (ok, out) = ctl(&s.uri, &["--json", "status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"guestCid\"") || out.contains("guest_cid"),
        "{out}"
    );

    // The service closes its end: the guest learns (SHUTDOWN both ways, then the device resets).
    drop(service_end);
    let done = vm
        .driver
        .pump_until(secs(5), |d| d.conn(id).peer_done())
        .unwrap();
    assert!(
        done,
        "the close reaches the guest: {}",
        s.p.stderr_tail(3000)
    );
    let c = vm.driver.conn(id);
    assert!(
        c.state == ConnState::Reset || c.peer_shutdown == 3,
        "{:?} {:?}",
        c.state,
        c.history.last()
    );
    drop(svc);
    s.p.assert_alive();
}

#[test]
fn policy_deny_resets_the_guest_connect_and_unregistered_ports_use_the_unix_mapping() {
    let s = plugin_with_control();
    let mut vm = qemu_vm(&s.p);
    // No registration: the hybrid <uds>_P mapping still works.
    let (_id, _host, _l) = guest_to_host(&mut vm, &s.p, 6001);
    let (ok, out) = ctl(&s.uri, &["policy", "deny", "--port", "6002"]);
    assert!(ok, "{out}");
    let _l2 = listen(&s.p.vm().port_path(6002));
    let err = vm.driver.connect(2, 6002, TYPE_STREAM).unwrap_err();
    assert!(
        err.to_string().contains("RST") || err.to_string().contains("reset"),
        "{err}"
    );
    assert_logged(&s.p, "denied");
}

#[test]
fn ctl_without_a_plugin_fails_cleanly() {
    let dir = TempDir::new().unwrap();
    let uri = format!("unix://{}#vsock", dir.join("nothing.sock").display());
    let (ok, out) = ctl(&uri, &["status"]);
    assert!(!ok);
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn a_policy_connection_limit_applies_to_new_guest_connections() {
    let s = plugin_with_control();
    let (ok, out) = ctl(
        &s.uri,
        &[
            "policy",
            "allow",
            "--port",
            "6003",
            "--max-connections",
            "1",
        ],
    );
    assert!(ok, "{out}");
    let (ok, caps) = ctl(&s.uri, &["caps"]);
    assert!(
        ok && caps.contains("policy-limits"),
        "limits are advertised: {caps}"
    );
    let mut vm = qemu_vm(&s.p);
    let l = listen(&s.p.vm().port_path(6003));
    let first = vm
        .driver
        .connect(2, 6003, TYPE_STREAM)
        .expect("first connection");
    let _h = accept_timeout(&l, secs(5)).unwrap();
    let err = vm.driver.connect(2, 6003, TYPE_STREAM).unwrap_err();
    assert!(
        err.to_string().contains("RST") || err.to_string().contains("reset"),
        "{err}"
    );
    assert_logged(&s.p, "policy limit 1");
    // Other ports are not limited; closing the first frees its place.
    let (_id, _host, _l2) = guest_to_host(&mut vm, &s.p, 6004);
    vm.driver.send_ctrl(first, OP_RST, 0).unwrap();
    std::thread::sleep(ms(200));
    vm.driver
        .connect(2, 6003, TYPE_STREAM)
        .expect("a place is free again");
}

struct CollectEvents(std::sync::Mutex<mpsc::Sender<Vec<u8>>>);
impl vsock_plugin_ipc::aidl_crate::binder::Interface for CollectEvents {}
impl vsock_plugin_ipc::aidl::IDeviceEventListener::IDeviceEventListener for CollectEvents {
    fn onEvent(&self, e: &[u8]) -> vsock_plugin_ipc::aidl_crate::binder::Result<()> {
        let _ = self.0.lock().unwrap().send(e.to_vec());
        Ok(())
    }
}

/// A DEVICE_STATE load of a generation-4 state: the control plane emits "restored, generation 5"
/// and `ctl status` shows generation 5 for the VM (0 before).
#[test]
fn a_restore_is_an_event_and_shows_its_generation_in_status() {
    use vsock_plugin::snapshot::format::{self, SavedState};
    use vsock_plugin::vsock::device::snapshot::DeviceSnapshot;
    use vsock_plugin_ipc::aidl::IDeviceControl::IDeviceControl;
    use vsock_plugin_ipc::proto::control::{event, Event};
    use vsock_plugin_tests::frontend::crosvm_snapshot as crosvm;

    let s = plugin_with_control();
    let (_, before) = ctl(&s.uri, &["status"]);
    assert!(before.contains(" GEN "), "{before}");
    let (c, _h) = vsock_plugin_ipc::platform::connect_control(
        &ControlUri::parse(&s.uri).unwrap(),
        true,
        Some(secs(5)),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let l =
        vsock_plugin_ipc::platform::new_listener_binder(CollectEvents(std::sync::Mutex::new(tx)));
    c.registerEventListener(&l).unwrap();

    let opts = VmOptions::crosvm();
    let mut client = VhostUserClient::connect(&s.p.vm().socket).unwrap();
    let (offered, _) = crosvm::new_frontend(&mut client, &opts.crosvm).unwrap();
    let features = offered & opts.crosvm.features_mask;
    let state = format::encode(
        &SavedState {
            guest_cid: 3,
            virtio_features: features,
            protocol_features: 0,
            device: DeviceSnapshot {
                generation: 4,
                ..Default::default()
            },
        },
        0,
    );
    assert_eq!(
        crosvm::restore(&mut client, features, false, &state, secs(5)).unwrap(),
        0
    );
    let deadline = std::time::Instant::now() + secs(5);
    let restored = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let bytes = rx.recv_timeout(left).expect("a device_restored event");
        let e: Event = vsock_plugin_ipc::proto::decode(&bytes).unwrap();
        if let Some(event::Kind::DeviceRestored(r)) = e.kind {
            break r;
        }
    };
    assert_eq!((restored.guest_cid, restored.generation), (3, 5));
    let (ok, status) = ctl(&s.uri, &["status"]);
    assert!(ok, "{status}");
    let row = status.lines().find(|l| l.starts_with("3 ")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[5], "5", "GEN column: {status}");
    let (_, json) = ctl(&s.uri, &["--json", "status"]);
    assert!(json.contains("\"generation\": \"5\""), "{json}");
    assert_logged(&s.p, "restored, generation 5");
}
