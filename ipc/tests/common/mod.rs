#![allow(dead_code)]
//! Shared helpers: a control plane served over binder RPC on a Unix socket in a temp dir.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vsock_plugin_ipc::platform::{self, ControlUri, ServeConfig, ServerHandle};
use vsock_plugin_ipc::testing::FakeDevice;
use vsock_plugin_ipc::{AllowList, ControlPlane};

pub struct Fixture {
    pub plane: ControlPlane,
    pub device: Arc<FakeDevice>,
    pub uri: ControlUri,
    pub server: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
}

pub fn my_uid() -> u32 {
    unsafe { libc::geteuid() }
}

pub fn serve_with(device: FakeDevice, allow: AllowList) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let uri = ControlUri::parse(&format!(
        "unix://{}#test",
        dir.path().join("ctl.sock").display()
    ))
    .unwrap();
    let device = Arc::new(device);
    let plane = ControlPlane::new(device.clone(), allow);
    let cfg = ServeConfig {
        callback_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let server = plane.serve(&uri, &cfg).unwrap();
    Fixture {
        plane,
        device,
        uri,
        server: Some(server),
        dir,
    }
}

pub fn serve() -> Fixture {
    serve_with(FakeDevice::sample(), AllowList::new([my_uid()]))
}

/// Poll `f` until true or 10 s pass.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connected pair whose first end echoes everything back upper-cased, on a thread.
pub fn echo_upper_socket() -> Result<UnixStream, String> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut mine = mine;
        let mut buf = [0u8; 4096];
        loop {
            match mine.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let up: Vec<u8> = buf[..n].iter().map(|b| b.to_ascii_uppercase()).collect();
                    if mine.write_all(&up).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(theirs)
}

/// Write `msg` on `s` and read back exactly as many bytes.
pub fn roundtrip(s: &mut UnixStream, msg: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg).unwrap();
    let mut out = vec![0u8; msg.len()];
    s.read_exact(&mut out).unwrap();
    out
}

pub fn control(f: &Fixture) -> (binder_types::Control, platform::ClientHandle) {
    platform::connect_control(&f.uri, false, Some(Duration::from_secs(5))).unwrap()
}

pub mod binder_types {
    use vsock_plugin_ipc::aidl::IDeviceControl::IDeviceControl;
    pub type Control = vsock_plugin_ipc::aidl_crate::binder::Strong<dyn IDeviceControl>;
}
