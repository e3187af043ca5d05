//! Robustness beyond the happy path: timeouts, unroutable requests, stuck host listeners, a
//! second frontend, inherited sockets, device reset under QEMU, a starved rx ring.

mod common;
use common::*;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

#[test]
fn host_connect_unanswered_by_guest_times_out() {
    let p = plugin(&["--connect-timeout-ms", "300"]);
    let mut vm = qemu_vm(&p);
    vm.driver.listen(11000);
    let mut s = hybrid_connect_raw(&p.vm().uds, &[b"connect 11000\n"]).unwrap();
    let req = vm
        .driver
        .wait_request(11000, secs(5))
        .unwrap()
        .expect("REQUEST");
    // The guest never answers.
    let t = Instant::now();
    let (bytes, ended) = read_to_eof(&mut s, secs(5));
    assert!(
        ended,
        "host client still open 5 s after an unanswered REQUEST"
    );
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(t.elapsed() >= ms(200), "closed after {:?}", t.elapsed());
    // The guest is told with RST for the same port pair.
    let (rst, skipped) = vm
        .driver
        .recv_until(secs(2), |p| {
            p.hdr.op == OP_RST && p.hdr.src_port == req.hdr.src_port
        })
        .unwrap();
    assert!(
        rst.is_some(),
        "no RST to the guest after the connect timeout; saw {skipped:?}"
    );
}

/// A host listener whose accept backlog is full must not stall the device: other connections
/// proceed, the stuck one is answered (RESPONSE once possible, or RST) within the connect timeout.
#[test]
fn full_host_backlog_does_not_stall_other_connections() {
    let p = plugin(&["--connect-timeout-ms", "500"]);
    let mut vm = qemu_vm(&p);
    let path = p.vm().port_path(11001);
    // listen(fd, 0) and fill the queue with our own connection attempts.
    // SAFETY: plain socket calls on fresh fds.
    let lfd = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    };
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as _;
    for (i, b) in path.as_os_str().as_encoded_bytes().iter().enumerate() {
        addr.sun_path[i] = *b as _;
    }
    let alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: valid sockaddr.
    unsafe {
        assert_eq!(
            libc::bind(
                lfd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                alen
            ),
            0
        );
        assert_eq!(libc::listen(lfd.as_raw_fd(), 0), 0);
    }
    let mut fillers = Vec::new();
    loop {
        // SAFETY: non-blocking connect attempts.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
        let r = unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, alen) };
        // SAFETY: fresh fd.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if r != 0 {
            break;
        }
        fillers.push(owned);
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let stuck = vm
        .driver
        .connect_start(HOST_CID, 11001, TYPE_STREAM)
        .unwrap();
    // Meanwhile a normal connection works promptly.
    let t = Instant::now();
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 11002);
    vm.driver.send(id, b"unblocked").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 9, secs(2)).unwrap(),
        b"unblocked"
    );
    assert!(
        t.elapsed() < secs(1),
        "other connection took {:?}",
        t.elapsed()
    );
    let st = vm.driver.wait_connected(stuck, secs(3)).unwrap();
    assert_ne!(
        st,
        ConnState::Connecting,
        "the stuck connection got no answer within 3 s"
    );
    drop(fillers);
}

#[test]
fn requests_the_device_cannot_route_get_rst() {
    let p = plugin(&["--seqpacket", "off"]);
    let mut vm = qemu_vm(&p);
    assert_eq!(vm.negotiated.features & F_SEQPACKET, 0);
    let l = listen(&p.vm().port_path(11003));
    let cases: [(&str, u64, u16); 4] = [
        ("dst_cid 1 (local)", 1, TYPE_STREAM),
        ("dst_cid 3 (itself)", 3, TYPE_STREAM),
        ("seqpacket not negotiated", HOST_CID, TYPE_SEQPACKET),
        ("unknown type 7", HOST_CID, 7),
    ];
    for (k, (what, cid, ty)) in cases.iter().enumerate() {
        let mut h = hdr(3, 51000 + k as u32, 11003, OP_REQUEST);
        h.dst_cid = *cid;
        h.type_ = *ty;
        vm.driver.send_packet(&h, &[]).unwrap();
        let (pkt, skipped) = vm
            .driver
            .recv_until(secs(2), |p| p.hdr.dst_port == 51000 + k as u32)
            .unwrap();
        let pkt = pkt.unwrap_or_else(|| panic!("{what}: no answer; saw {skipped:?}"));
        assert_eq!(pkt.hdr.op, OP_RST, "{what}: {pkt:?}");
        assert!(
            accept_timeout(&l, ms(50)).is_err(),
            "{what}: reached the host listener"
        );
    }
}

#[test]
fn a_second_frontend_does_not_disturb_the_first() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 11004);
    // Another client connects to the same vhost-user socket and tries to take over.
    let intruder = UnixStream::connect(&p.vm().socket);
    if let Ok(s) = intruder {
        let mut c = VhostUserClient::from_stream(s);
        c.timeout = ms(500);
        let _ = c.set_owner(false);
        let _ = c.get_features();
        let _ = c.reset_device();
        drop(c);
    }
    vm.driver.send(id, b"first still owns it").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 19, secs(5)).unwrap(),
        b"first still owns it"
    );
    host.write_all(b"ok").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 2, secs(5)).unwrap(), b"ok");
    assert_eq!(vm.client.get_features().unwrap() & F_VERSION_1, F_VERSION_1);
}

#[test]
fn inherited_connected_socket_fd() {
    let dir = TempDir::new().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let vm_paths = VmPaths {
        guest_cid: 3,
        socket: dir.join("unused.sock"),
        uds: dir.join("h.sock"),
    };
    let args = vec![
        "--guest-cid".to_string(),
        "3".to_string(),
        "--socket-fd".to_string(),
        "3".to_string(),
        "--uds-path".to_string(),
        vm_paths.uds.display().to_string(),
    ];
    let p = PluginProcess::spawn_inheriting(dir, args, vec![vm_paths], Some(theirs.as_raw_fd()))
        .unwrap();
    drop(theirs);
    let mut vm = Vm::start_with(VhostUserClient::from_stream(ours), VmOptions::qemu())
        .expect("handshake over the inherited fd");
    assert_eq!(
        vm.negotiated.config.as_deref(),
        Some(&3u64.to_le_bytes()[..])
    );
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 11005);
    vm.driver.send(id, b"via fd").unwrap();
    assert_eq!(
        read_exact_timeout(&mut host, 6, secs(5)).unwrap(),
        b"via fd"
    );
}

#[test]
fn reset_device_under_qemu_drops_connections_and_reactivates() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    assert_ne!(vm.negotiated.protocol_features & PF_RESET_DEVICE, 0);
    let (_id, mut host, _l) = guest_to_host(&mut vm, &p, 11006);
    assert_eq!(vm.client.reset_device().unwrap(), Some(0));
    let (_, ended) = read_to_eof(&mut host, secs(3));
    assert!(ended, "host socket survived RESET_DEVICE");
    // Re-activate with fresh rings (QEMU's "driver OK" again).
    let opts = VmOptions::qemu();
    let mem = Arc::new(GuestMemory::new(&opts.mem_layout).unwrap());
    mem.alloc(4096, 4096);
    let mut d = VsockDriver::new(mem.clone(), 128, opts.driver.clone()).unwrap();
    let pf = vm.negotiated.protocol_features;
    vm.client
        .qemu_driver_ok(&mem, &d.vring_setups(), vm.negotiated.features, pf)
        .unwrap();
    d.kick_all();
    let l = listen(&p.vm().port_path(11007));
    let id = d
        .connect(HOST_CID, 11007, TYPE_STREAM)
        .expect("connect after reset");
    let mut h = accept_timeout(&l, secs(2)).unwrap();
    d.send(id, b"reborn").unwrap();
    assert_eq!(read_exact_timeout(&mut h, 6, secs(5)).unwrap(), b"reborn");
}

#[test]
fn a_single_rx_buffer_still_delivers_everything() {
    let p = plugin(&[]);
    let mut opts = VmOptions::qemu();
    opts.driver.rx_buffers = 1;
    opts.driver.rx_layout = vec![44, 1000];
    let mut vm = vm_with(&p, opts);
    let (id, mut host, _l) = guest_to_host(&mut vm, &p, 11008);
    let data = pattern(41, 200_000);
    let d2 = data.clone();
    let w = std::thread::spawn(move || host.write_all(&d2).map(|_| host));
    let got = vm.driver.recv_exact(id, data.len(), secs(30)).unwrap();
    assert!(got == data);
    w.join().unwrap().unwrap();
    let max = vm
        .driver
        .conn(id)
        .history
        .iter()
        .map(|h| h.len)
        .max()
        .unwrap();
    assert!(max <= 1000, "packet of {max} bytes in a 1044-byte buffer");
}
