//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

pub use vsock_plugin_tests::frontend::host_side::*;
pub use vsock_plugin_tests::frontend::vhost_user_client::*;
pub use vsock_plugin_tests::frontend::*;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Starts a single-VM plugin (guest CID 3) with extra options.
pub fn plugin(extra: &[&str]) -> PluginProcess {
    PluginProcess::single(extra).expect("start vsock-plugin")
}

/// A QEMU-style VM on the plugin's first socket.
pub fn qemu_vm(p: &PluginProcess) -> Vm {
    Vm::qemu(&p.vm().socket).expect("QEMU handshake")
}

/// After RESET_DEVICE: the event the guest reads, either on the running rings (within 1 s) or,
/// if none came there, once the frontend re-activates the device with fresh rings as crosvm does
/// after a reset (a new driver built with `opts`, so its interrupt handling is that of `opts`).
pub fn event_after_reset(vm: &mut Vm, opts: &VmOptions) -> Option<u32> {
    if let Some(ev) = vm.driver.recv_event(secs(1)).unwrap() {
        return Some(ev);
    }
    let mem = std::sync::Arc::new(GuestMemory::new(&opts.mem_layout).unwrap());
    mem.alloc(4096, 4096);
    let mut d = VsockDriver::new(mem.clone(), opts.queue_size, opts.driver.clone()).unwrap();
    vm.client
        .activate_crosvm(&mem, &d.vring_setups(), vm.negotiated.features)
        .unwrap();
    d.kick_all();
    d.recv_event(secs(2)).unwrap()
}

pub fn vm_with(p: &PluginProcess, opts: VmOptions) -> Vm {
    Vm::start(&p.vm().socket, opts).expect("handshake")
}

/// Guest → host stream connection to `port`: returns the guest conn and the accepted host socket.
pub fn guest_to_host(
    vm: &mut Vm,
    p: &PluginProcess,
    port: u32,
) -> (ConnId, UnixStream, UnixListener) {
    let l = listen(&p.vm().port_path(port));
    let id = vm
        .driver
        .connect(HOST_CID, port, TYPE_STREAM)
        .expect("guest connect");
    let s = accept_timeout(&l, secs(5)).expect("plugin connects to the host listener");
    (id, s, l)
}

/// Host → guest stream connection to guest `port` with the usual `connect` line; returns the
/// guest conn and the host socket after reading `OK <port>\n`.
pub fn host_to_guest(vm: &mut Vm, p: &PluginProcess, port: u32) -> (ConnId, UnixStream) {
    vm.driver.listen(port);
    let line = format!("connect {port}\n");
    let mut s = hybrid_connect_raw(&p.vm().uds, &[line.as_bytes()]).expect("connect to uds");
    let req = vm
        .driver
        .wait_request(port, secs(5))
        .unwrap()
        .expect("REQUEST from the plugin");
    let id = vm.driver.accept_request(&req).unwrap();
    let ok = read_line(&mut s, secs(5)).expect("OK line");
    assert_eq!(ok, format!("OK {port}\n"));
    (id, s)
}

/// Checks the plugin is alive and serves a brand-new frontend on the same socket: full QEMU
/// handshake, then a guest REQUEST to an unused port must be answered by RST.
pub fn assert_serves_new_frontend(p: &PluginProcess) {
    p.assert_alive();
    let mut vm = qemu_vm(p);
    assert_eq!(
        vm.negotiated.config.as_deref(),
        Some(&3u64.to_le_bytes()[..])
    );
    let id = vm
        .driver
        .connect_start(HOST_CID, 39999, TYPE_STREAM)
        .unwrap();
    let st = vm.driver.wait_connected(id, secs(2)).unwrap();
    assert_eq!(
        st,
        ConnState::Reset,
        "REQUEST to a port without listener must be RST"
    );
    p.assert_alive();
}

/// A deterministic pseudo-random byte stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A frontend that negotiated protocol features (REPLY_ACK on) QEMU-style (GET_FEATURES,
/// GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES), ready for single messages with NEED_REPLY.
pub fn negotiated_client(p: &PluginProcess) -> VhostUserClient {
    let mut c = VhostUserClient::connect(&p.vm().socket).unwrap();
    let f = c.get_features().unwrap();
    assert_ne!(f & F_PROTOCOL_FEATURES, 0);
    let pf = c.get_protocol_features().unwrap();
    c.set_protocol_features(pf, false).unwrap();
    c.reply_ack = true;
    c
}

/// [`negotiated_client`] followed by SET_OWNER (QEMU's realize order).
pub fn owned_client(p: &PluginProcess) -> VhostUserClient {
    let mut c = negotiated_client(p);
    c.set_owner(false).unwrap();
    c
}

/// After a malformed message sent with NEED_REPLY: the plugin either answers with a non-zero
/// ack or closes the connection; a zero ack or silence is a failure.
pub fn expect_rejected(c: &mut VhostUserClient, what: &str) {
    match c.recv_timeout(secs(2)) {
        Ok(r) => {
            let v = r.u64();
            assert!(
                v.is_some_and(|v| v != 0),
                "{what}: expected a non-zero ack or a closed connection, got request {} flags {:#x} payload {:02x?}",
                r.request,
                r.flags,
                r.payload
            );
        }
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{what}: no reply and no close within 2 s"
        ),
    }
}

/// Device inode of a path (to check the socket is not re-created).
pub fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// As [`guest_to_host`], for any VM of a multi-VM plugin.
pub fn guest_to_host_at(
    vm: &mut Vm,
    paths: &VmPaths,
    port: u32,
) -> (ConnId, UnixStream, UnixListener) {
    let l = listen(&paths.port_path(port));
    let id = vm
        .driver
        .connect(HOST_CID, port, TYPE_STREAM)
        .expect("guest connect");
    let s = accept_timeout(&l, secs(5)).expect("plugin connects to the host listener");
    (id, s, l)
}

/// A stream header from guest `src_cid` to the host.
pub fn hdr(src_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// Asserts that the plugin's log (its stderr) mentions `needle`; shows the log tail otherwise.
pub fn assert_logged(p: &PluginProcess, needle: &str) {
    let tail = p.stderr_tail(8000);
    assert!(
        tail.contains(needle),
        "plugin log lacks {needle:?}:\n{tail}"
    );
}

pub mod measure;
