//! Host → guest connections through the hybrid socket `<uds>` and its `connect P\n` line.

mod common;
use common::*;

use std::io::Write;
use std::os::unix::net::UnixStream;

/// Connects with `pieces`, waits for the REQUEST to `port` and checks its header.
fn request_after(
    vm: &mut Vm,
    p: &PluginProcess,
    port: u32,
    pieces: &[&[u8]],
) -> (UnixStream, Packet) {
    vm.driver.listen(port);
    let s = hybrid_connect_raw(&p.vm().uds, pieces).expect("connect to <uds>");
    let req = vm
        .driver
        .wait_request(port, secs(5))
        .unwrap()
        .unwrap_or_else(|| panic!("no REQUEST to port {port} after {pieces:?}"));
    assert_eq!(req.hdr.op, OP_REQUEST);
    assert_eq!(
        (
            req.hdr.src_cid,
            req.hdr.dst_cid,
            req.hdr.dst_port,
            req.hdr.type_,
            req.hdr.len
        ),
        (2, 3, port, TYPE_STREAM, 0),
        "{req:?}"
    );
    assert!(req.hdr.buf_alloc > 0, "{req:?}");
    (s, req)
}

fn accept_and_check_ok(vm: &mut Vm, s: &mut UnixStream, req: &Packet, want: &str) -> ConnId {
    let id = vm.driver.accept_request(req).unwrap();
    assert_eq!(read_line(s, secs(5)).unwrap(), want);
    id
}

#[test]
fn connect_line_lowercase() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5000, &[b"connect 5000\n"]);
    let id = accept_and_check_ok(&mut vm, &mut s, &req, "OK 5000\n");
    s.write_all(b"host data").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 9, secs(5)).unwrap(), b"host data");
    vm.driver.send(id, b"guest data").unwrap();
    assert_eq!(
        read_exact_timeout(&mut s, 10, secs(5)).unwrap(),
        b"guest data"
    );
}

#[test]
fn connect_line_uppercase() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5000, &[b"CONNECT 5000\n"]);
    accept_and_check_ok(&mut vm, &mut s, &req, "OK 5000\n");
}

#[test]
fn connect_line_split_across_writes() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5000, &[b"con", b"nect 50", b"00\n"]);
    let id = accept_and_check_ok(&mut vm, &mut s, &req, "OK 5000\n");
    s.write_all(b"x").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 1, secs(5)).unwrap(), b"x");
}

#[test]
fn bytes_after_the_newline_belong_to_the_stream() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5000, &[b"connect 5000\nHELLO"]);
    let id = accept_and_check_ok(&mut vm, &mut s, &req, "OK 5000\n");
    assert_eq!(vm.driver.recv_exact(id, 5, secs(5)).unwrap(), b"HELLO");
    s.write_all(b" WORLD").unwrap();
    assert_eq!(vm.driver.recv_exact(id, 6, secs(5)).unwrap(), b" WORLD");
    let c = vm.driver.conn(id);
    assert!(c.history.iter().all(|h| h.op != OP_RST), "{:?}", c.history);
}

#[test]
fn guest_rst_closes_the_host_socket_without_ok() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5001, &[b"connect 5001\n"]);
    vm.driver.reject_request(&req).unwrap();
    let (bytes, ended) = read_to_eof(&mut s, secs(3));
    assert!(ended, "host socket still open after the guest refused");
    assert!(
        bytes.is_empty(),
        "host got {:?} from a refused connection",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn guest_not_listening_closes_the_host_socket() {
    // A Linux guest with no listener answers RST; same as above but the REQUEST is seen raw.
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let mut s = hybrid_connect_raw(&p.vm().uds, &[b"connect 5002\n"]).unwrap();
    let req = vm.driver.expect_packet(secs(5));
    assert_eq!(
        (req.hdr.op, req.hdr.dst_port),
        (OP_REQUEST, 5002),
        "{req:?}"
    );
    vm.driver.reject_request(&req).unwrap();
    let (bytes, ended) = read_to_eof(&mut s, secs(3));
    assert!(ended && bytes.is_empty(), "ended {ended}, bytes {bytes:?}");
}

#[test]
fn silent_client_is_dropped_after_the_line_timeout() {
    let p = plugin(&["--connect-line-timeout-ms", "300"]);
    let mut vm = qemu_vm(&p);
    let mut s = UnixStream::connect(&p.vm().uds).unwrap();
    let t = std::time::Instant::now();
    let (bytes, ended) = read_to_eof(&mut s, secs(3));
    assert!(ended, "silent client still connected after 3 s");
    assert!(bytes.is_empty(), "{bytes:?}");
    assert!(
        t.elapsed() >= ms(250),
        "closed after {:?}, before the timeout",
        t.elapsed()
    );
    assert!(vm.driver.recv_packet(ms(100)).unwrap().is_none());
    // The plugin keeps working.
    let (mut s2, req) = request_after(&mut vm, &p, 5003, &[b"connect 5003\n"]);
    accept_and_check_ok(&mut vm, &mut s2, &req, "OK 5003\n");
}

#[test]
fn over_long_line_is_closed_cleanly() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    let mut s = UnixStream::connect(&p.vm().uds).unwrap();
    let _ = s.write_all(&[b'a'; 300]);
    let (bytes, ended) = read_to_eof(&mut s, secs(3));
    assert!(
        ended,
        "a 300-byte line without newline kept the connection open"
    );
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(vm.driver.recv_packet(ms(200)).unwrap().is_none());
    p.assert_alive();
}

#[test]
fn non_numeric_port_is_closed_cleanly() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    for line in [
        &b"connect abc\n"[..],
        b"connect\n",
        b"connect 99999999999\n",
        b"hello 5000\n",
    ] {
        let mut s = UnixStream::connect(&p.vm().uds).unwrap();
        s.write_all(line).unwrap();
        let (bytes, ended) = read_to_eof(&mut s, secs(3));
        assert!(
            ended,
            "{:?}: connection kept open",
            String::from_utf8_lossy(line)
        );
        assert!(
            bytes.is_empty(),
            "{:?}: got {:?}",
            String::from_utf8_lossy(line),
            bytes
        );
    }
    assert!(vm.driver.recv_packet(ms(200)).unwrap().is_none());
    p.assert_alive();
}

#[test]
fn ok_reply_host_port_mode() {
    let p = plugin(&["--ok-reply", "host-port"]);
    let mut vm = qemu_vm(&p);
    let (mut s, req) = request_after(&mut vm, &p, 5004, &[b"connect 5004\n"]);
    vm.driver.accept_request(&req).unwrap();
    let line = read_line(&mut s, secs(5)).unwrap();
    let n: u64 = line
        .strip_prefix("OK ")
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("bad OK line {line:?}"));
    assert!(n >= 1 << 30, "OK {n}: local port below 2^30");
    assert_eq!(
        n, req.hdr.src_port as u64,
        "OK <n> is the REQUEST's src_port"
    );
}

#[test]
fn local_ports_are_distinct_for_concurrent_clients() {
    let p = plugin(&[]);
    let mut vm = qemu_vm(&p);
    vm.driver.listen(5005);
    let _s1 = hybrid_connect_raw(&p.vm().uds, &[b"connect 5005\n"]).unwrap();
    let _s2 = hybrid_connect_raw(&p.vm().uds, &[b"connect 5005\n"]).unwrap();
    let r1 = vm.driver.wait_request(5005, secs(5)).unwrap().unwrap();
    let r2 = vm.driver.wait_request(5005, secs(5)).unwrap().unwrap();
    assert_ne!(r1.hdr.src_port, r2.hdr.src_port, "{r1:?} / {r2:?}");
}

#[test]
fn host_connect_while_no_frontend_is_closed() {
    // Device not activated: the client is closed (or kept waiting) but never told OK.
    let p = plugin(&["--connect-line-timeout-ms", "500"]);
    let Ok(mut s) = hybrid_connect_raw(&p.vm().uds, &[b"connect 5006\n"]) else {
        // No hybrid listener before a frontend: acceptable.
        p.assert_alive();
        return;
    };
    let (bytes, ended) = read_to_eof(&mut s, secs(5));
    assert!(!bytes.starts_with(b"OK"), "OK without a guest: {bytes:?}");
    assert!(ended, "client kept open 5 s with no guest at all");
    p.assert_alive();
}
