//! The cases that run inside one boot: each drives the agent over the control port and does the
//! host half itself over the hybrid Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::host::{self, SeqSocket};
use super::proto::{fill_pattern, hex, pattern_sha256, Sha256, SEQPACKET_SIZES};
use super::qemu::{OpError, Vm};

/// A failed case; `lost` means the guest (or its control channel) is gone or wedged.
#[derive(Debug)]
pub struct Fail {
    pub msg: String,
    pub lost: bool,
}

pub type CaseResult = Result<String, Fail>;

impl From<OpError> for Fail {
    fn from(e: OpError) -> Fail {
        let lost = matches!(e, OpError::Lost(_));
        Fail {
            msg: e.to_string(),
            lost,
        }
    }
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        lost: false,
    }
}

/// A booted guest and its hybrid socket.
pub struct Guest<'a> {
    pub vm: &'a mut Vm,
    pub uds: &'a Path,
}

pub type CaseFn = fn(&mut Guest, &str) -> CaseResult;

/// Cases that share one boot, in run order.
pub const BOOT_CASES: &[(&str, CaseFn)] = &[
    ("g2h_sha256", g2h_sha256),
    ("h2g_sha256", h2g_sha256),
    ("g2h_no_listener_rst", g2h_no_listener_rst),
    ("h2g_no_listener", h2g_no_listener),
    ("half_close_g2h", half_close_g2h),
    ("half_close_h2g", half_close_h2g),
    ("connect_line_split", connect_line_split),
    ("connect_line_with_data", connect_line_with_data),
    ("probe_without_connect_line", probe_without_connect_line),
    ("empty_connections", empty_connections),
    ("concurrent_g2h_64", concurrent_g2h_64),
    ("concurrent_h2g_64", concurrent_h2g_64),
    ("slow_host_reader", slow_host_reader),
    ("slow_guest_reader", slow_guest_reader),
    ("seqpacket_boundaries", seqpacket_boundaries),
    ("g2h_writes_64k", g2h_writes_64k),
];

const MIB: u64 = 1024 * 1024;
const T_OP: Duration = Duration::from_secs(60);
const T_READY: Duration = Duration::from_secs(20);

/// Joins the host half (thread) and the guest half of a case.
fn combine(host: Result<String, String>, guest: Result<String, OpError>) -> CaseResult {
    match (host, guest) {
        (_, Err(OpError::Lost(g))) => Err(Fail {
            msg: format!("guest lost: {g}"),
            lost: true,
        }),
        (Ok(h), Ok(g)) => Ok(format!("host: {h}; guest: {g}")),
        (Err(h), Ok(g)) => Err(fail(format!("host: {h}; guest: {g}"))),
        (Ok(h), Err(OpError::Failed(g))) => Err(fail(format!("guest: {g}; host: {h}"))),
        (Err(h), Err(OpError::Failed(g))) => Err(fail(format!("host: {h}; guest: {g}"))),
    }
}

fn join<T>(h: thread::JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join()
        .unwrap_or_else(|_| Err("host thread panicked".into()))
}

/// Host half of a guest→host transfer: accept, read `bytes`, answer with the SHA-256; `pace`
/// makes it a slow reader (chunk size, pause).
fn host_sink(
    l: std::os::unix::net::UnixListener,
    bytes: u64,
    pace: Option<(usize, Duration)>,
) -> Result<[u8; 32], String> {
    let mut s = host::accept(&l, T_READY)?;
    let chunk = pace.map(|p| p.0).unwrap_or(256 * 1024);
    let mut buf = vec![0u8; chunk];
    let mut sha = Sha256::new();
    let mut got = 0u64;
    while got < bytes {
        let want = (bytes - got).min(chunk as u64) as usize;
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read after {got} of {bytes} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {bytes} bytes"));
        }
        sha.update(&buf[..n]);
        got += n as u64;
        if let Some((_, pause)) = pace {
            thread::sleep(pause);
        }
    }
    let d = sha.finish();
    s.write_all(&d)
        .map_err(|e| format!("sending digest: {e}"))?;
    Ok(d)
}

pub fn g2h_transfer(
    g: &mut Guest,
    case: &str,
    port: u32,
    bytes: u64,
    wsize: usize,
    seed: u64,
    pace: Option<(usize, Duration)>,
) -> CaseResult {
    let l = host::listen(g.uds, port).map_err(fail)?;
    let expect = pattern_sha256(seed, bytes);
    let t = thread::spawn(move || {
        let d = host_sink(l, bytes, pace)?;
        if d != expect {
            return Err(format!(
                "received data has sha256 {}, sent pattern {}",
                hex(&d),
                hex(&expect)
            ));
        }
        Ok(format!("{bytes} bytes, sha256 ok"))
    });
    let guest = g.vm.run_op(
        case,
        "g2h_send",
        &format!("port={port} bytes={bytes} wsize={wsize} seed={seed}"),
        T_OP,
    );
    if guest.is_err() {
        // Unblock the host thread if the guest never connected.
        let _ = UnixStream::connect(host::port_path(g.uds, port));
    }
    combine(join(t), guest)
}

/// Guest → host, 8 MiB in 16 KiB writes, SHA-256 on both ends.
fn g2h_sha256(g: &mut Guest, case: &str) -> CaseResult {
    g2h_transfer(g, case, 1234, 8 * MIB, 16 * 1024, 11, None)
}

/// Guest → host with single 64 KiB `write()`s (multi-descriptor TX chains on Linux ≥ 6.12).
fn g2h_writes_64k(g: &mut Guest, case: &str) -> CaseResult {
    g2h_transfer(g, case, 1235, 2 * MIB, 64 * 1024, 12, None)
}

/// Guest → host into a host reader that takes 16 KiB every 10 ms: credit flow control.
fn slow_host_reader(g: &mut Guest, case: &str) -> CaseResult {
    g2h_transfer(
        g,
        case,
        1236,
        4 * MIB,
        16 * 1024,
        13,
        Some((16 * 1024, Duration::from_millis(10))),
    )
}

pub fn h2g_transfer(
    g: &mut Guest,
    case: &str,
    port: u32,
    bytes: u64,
    seed: u64,
    rsize: usize,
    delay_ms: u64,
) -> CaseResult {
    let id = g.vm.start_op(
        case,
        "h2g_recv",
        &format!("port={port} bytes={bytes} seed={seed} rsize={rsize} delay_ms={delay_ms}"),
    )?;
    g.vm.wait_ready(id, T_READY)?;
    let uds = g.uds.to_path_buf();
    let host = (|| -> Result<String, String> {
        let mut s = host::connect_guest(&uds, port, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(30))).ok();
        let mut buf = vec![0u8; 256 * 1024];
        let mut off = 0u64;
        let start = Instant::now();
        while off < bytes {
            let n = (bytes - off).min(buf.len() as u64) as usize;
            fill_pattern(seed, off, &mut buf[..n]);
            s.write_all(&buf[..n])
                .map_err(|e| format!("write at {off}: {e}"))?;
            off += n as u64;
        }
        let mut d = [0u8; 32];
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.read_exact(&mut d)
            .map_err(|e| format!("reading the guest's digest: {e}"))?;
        if d != pattern_sha256(seed, bytes) {
            return Err(format!(
                "guest digest {} differs from the sent pattern's",
                hex(&d)
            ));
        }
        Ok(format!(
            "{bytes} bytes sent in {:.2} s, sha256 ok",
            start.elapsed().as_secs_f64()
        ))
    })();
    combine(host, g.vm.wait_result(id, T_OP))
}

/// Host → guest, 8 MiB, SHA-256 on both ends.
fn h2g_sha256(g: &mut Guest, case: &str) -> CaseResult {
    h2g_transfer(g, case, 5000, 8 * MIB, 21, 64 * 1024, 0)
}

/// Host → guest into a guest reader that takes 8 KiB every 5 ms.
fn slow_guest_reader(g: &mut Guest, case: &str) -> CaseResult {
    h2g_transfer(g, case, 5001, 2 * MIB, 22, 8 * 1024, 5)
}

/// A guest connect to a host port without listener must fail with a reset, well under 1 s.
fn g2h_no_listener_rst(g: &mut Guest, case: &str) -> CaseResult {
    let port = 1299;
    let _ = std::fs::remove_file(host::port_path(g.uds, port));
    let d = g.vm.run_op(
        case,
        "connect_fail",
        &format!("port={port} reset_within_ms=1000"),
        T_OP,
    )?;
    let ms: u64 = field(&d, "connect_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let errno = field(&d, "errno").unwrap_or("?");
    if !matches!(errno, "ECONNRESET" | "ECONNREFUSED") {
        return Err(fail(format!(
            "connect failed with {errno} after {ms} ms, expected a reset (ECONNRESET): {d}"
        )));
    }
    if ms >= 1000 {
        return Err(fail(format!(
            "reset came after {ms} ms (limit 1000 ms): {d}"
        )));
    }
    Ok(d)
}

/// `connect P` to a guest port nobody listens on: the host socket must be closed (no `OK`) promptly.
fn h2g_no_listener(g: &mut Guest, _case: &str) -> CaseResult {
    let mut s = UnixStream::connect(g.uds)
        .map_err(|e| fail(format!("connect {}: {e}", g.uds.display())))?;
    let start = Instant::now();
    s.write_all(b"connect 5999\n")
        .map_err(|e| fail(format!("write: {e}")))?;
    match host::read_line(&mut s, Duration::from_secs(3)) {
        Ok(None) => {
            let ms = start.elapsed().as_millis();
            if ms < 1000 {
                Ok(format!("closed without OK after {ms} ms"))
            } else {
                Err(fail(format!("closed only after {ms} ms (limit 1000 ms)")))
            }
        }
        Ok(Some(l)) => Err(fail(format!("got {l:?} for a port without listener"))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(format!("reset after {} ms", start.elapsed().as_millis()))
        }
        Err(e) => Err(fail(format!("no close within 3 s: {e}"))),
    }
}

const HALF_PING: &[u8] = b"half-close ping\n";
const HALF_PONG: &[u8] = b"reply after EOF\n";

/// Guest `shutdown(SHUT_WR)`: the host must read EOF, and its reply must still reach the guest.
fn half_close_g2h(g: &mut Guest, case: &str) -> CaseResult {
    let port = 1240;
    let l = host::listen(g.uds, port).map_err(fail)?;
    let t = thread::spawn(move || -> Result<String, String> {
        let mut s = host::accept(&l, T_READY)?;
        let got = host::read_to_eof(&mut s, Duration::from_secs(5))
            .map_err(|e| format!("after the guest's SHUT_WR: {e}"))?;
        if got != HALF_PING {
            return Err(format!(
                "got {:?} before EOF",
                String::from_utf8_lossy(&got)
            ));
        }
        s.write_all(HALF_PONG)
            .map_err(|e| format!("reply after EOF: {e}"))?;
        Ok("EOF seen, reply sent".into())
    });
    let guest =
        g.vm.run_op(case, "half_close_g2h", &format!("port={port}"), T_OP);
    if guest.is_err() {
        let _ = UnixStream::connect(host::port_path(g.uds, port));
    }
    combine(join(t), guest)
}

/// Host `shutdown(Write)`: the guest must read EOF, and its reply must still reach the host.
fn half_close_h2g(g: &mut Guest, case: &str) -> CaseResult {
    let port = 5002;
    let id =
        g.vm.start_op(case, "half_close_h2g", &format!("port={port}"))?;
    g.vm.wait_ready(id, T_READY)?;
    let host = (|| -> Result<String, String> {
        let mut s = host::connect_guest(g.uds, port, Duration::from_secs(5))?;
        s.write_all(HALF_PING).map_err(|e| format!("write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown(Write): {e}"))?;
        let got = host::read_to_eof(&mut s, Duration::from_secs(10))?;
        if got != HALF_PONG {
            return Err(format!("reply {:?}", String::from_utf8_lossy(&got)));
        }
        Ok("reply and EOF received after shutdown(Write)".into())
    })();
    combine(host, g.vm.wait_result(id, T_OP))
}

/// Starts a guest echo server for `conns` connections on `port`.
pub fn echo_server(
    g: &mut Guest,
    case: &str,
    port: u32,
    conns: usize,
    timeout_ms: u64,
) -> Result<u32, Fail> {
    let id = g.vm.start_op(
        case,
        "echo_server",
        &format!("port={port} conns={conns} timeout_ms={timeout_ms}"),
    )?;
    g.vm.wait_ready(id, T_READY)?;
    Ok(id)
}

/// Sends `payload` on an established stream and checks the echo.
pub fn echo_check(s: &mut UnixStream, payload: &[u8]) -> Result<(), String> {
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.read_exact(&mut back)
        .map_err(|e| format!("reading echo: {e}"))?;
    if back != payload {
        return Err(format!(
            "echo {:?} != sent {:?}",
            String::from_utf8_lossy(&back),
            String::from_utf8_lossy(payload)
        ));
    }
    Ok(())
}

/// Releases a guest echo server still waiting for connections after a host-side failure.
pub fn release(uds: &Path, port: u32, n: usize) {
    for _ in 0..n {
        if let Ok(s) = host::connect_guest(uds, port, Duration::from_secs(2)) {
            drop(s);
        }
    }
}

/// The `connect` line arrives in three writes 150 ms apart.
fn connect_line_split(g: &mut Guest, case: &str) -> CaseResult {
    let port = 5003;
    let id = echo_server(g, case, port, 1, 15000)?;
    let host = (|| -> Result<String, String> {
        let mut s = UnixStream::connect(g.uds).map_err(|e| format!("connect: {e}"))?;
        for part in [&b"conn"[..], b"ect 50", b"03\n"] {
            s.write_all(part)
                .map_err(|e| format!("write {:?}: {e}", String::from_utf8_lossy(part)))?;
            thread::sleep(Duration::from_millis(150));
        }
        host::expect_ok(&mut s, port, Duration::from_secs(5))?;
        echo_check(&mut s, b"payload after a split connect line")?;
        Ok("OK received, echo ok".into())
    })();
    if host.is_err() {
        release(g.uds, port, 1);
    }
    combine(host, g.vm.wait_result(id, T_OP))
}

/// `connect P\n` and the first payload bytes in a single write: none may be lost.
fn connect_line_with_data(g: &mut Guest, case: &str) -> CaseResult {
    let port = 5004;
    let id = echo_server(g, case, port, 1, 15000)?;
    let payload = b"first bytes in the same write as the connect line";
    let host = (|| -> Result<String, String> {
        let mut s = UnixStream::connect(g.uds).map_err(|e| format!("connect: {e}"))?;
        let mut first = format!("connect {port}\n").into_bytes();
        first.extend_from_slice(payload);
        s.write_all(&first).map_err(|e| format!("write: {e}"))?;
        host::expect_ok(&mut s, port, Duration::from_secs(5))?;
        let mut back = vec![0u8; payload.len()];
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.read_exact(&mut back)
            .map_err(|e| format!("reading the echo of the early bytes: {e}"))?;
        if back != payload {
            return Err(format!("echo {:?}", String::from_utf8_lossy(&back)));
        }
        Ok("early bytes delivered".into())
    })();
    if host.is_err() {
        release(g.uds, port, 1);
    }
    combine(host, g.vm.wait_result(id, T_OP))
}

/// Cuttlefish's readiness probe: a client on `<uds>` that never sends a `connect` line must not
/// disturb other connections (before and after it goes away).
fn probe_without_connect_line(g: &mut Guest, case: &str) -> CaseResult {
    let port = 5005;
    let id = echo_server(g, case, port, 2, 20000)?;
    let host = (|| -> Result<String, String> {
        let mut probe = UnixStream::connect(g.uds).map_err(|e| format!("probe connect: {e}"))?;
        thread::sleep(Duration::from_millis(200));
        let mut s = host::connect_guest(g.uds, port, Duration::from_secs(5))
            .map_err(|e| format!("while a probe is open: {e}"))?;
        echo_check(&mut s, b"while probing").map_err(|e| format!("while a probe is open: {e}"))?;
        drop(s);
        // The probe must not have received anything.
        probe.set_nonblocking(true).ok();
        let mut b = [0u8; 64];
        if let Ok(n) = probe.read(&mut b) {
            if n > 0 {
                return Err(format!(
                    "probe received {:?}",
                    String::from_utf8_lossy(&b[..n])
                ));
            }
        }
        drop(probe);
        thread::sleep(Duration::from_millis(100));
        let mut s = host::connect_guest(g.uds, port, Duration::from_secs(5))
            .map_err(|e| format!("after the probe: {e}"))?;
        echo_check(&mut s, b"after probing").map_err(|e| format!("after the probe: {e}"))?;
        Ok("connections fine during and after a silent probe".into())
    })();
    if host.is_err() {
        release(g.uds, port, 2);
    }
    combine(host, g.vm.wait_result(id, T_OP))
}

/// Connections that carry no data, both ways: the other end sees the connection and then EOF.
fn empty_connections(g: &mut Guest, case: &str) -> CaseResult {
    // Host → guest: connect, OK, close.
    let port = 5006;
    let id = echo_server(g, case, port, 1, 15000)?;
    let host = host::connect_guest(g.uds, port, Duration::from_secs(5)).map(drop);
    if host.is_err() {
        release(g.uds, port, 1);
    }
    let h2g = combine(
        host.map(|_| "closed right after OK".to_string()),
        g.vm.wait_result(id, T_OP),
    )
    .map_err(|f| Fail {
        msg: format!("host→guest: {}", f.msg),
        lost: f.lost,
    })?;
    // Guest → host: connect, close.
    let hport = 1241;
    let l = host::listen(g.uds, hport).map_err(fail)?;
    let t = thread::spawn(move || -> Result<String, String> {
        let mut s = host::accept(&l, T_READY)?;
        let got = host::read_to_eof(&mut s, Duration::from_secs(5))?;
        if !got.is_empty() {
            return Err(format!("got {} bytes from an empty connection", got.len()));
        }
        Ok("accepted, then EOF".into())
    });
    let guest =
        g.vm.run_op(case, "empty_connect", &format!("port={hport}"), T_OP);
    if guest.is_err() {
        let _ = UnixStream::connect(host::port_path(g.uds, hport));
    }
    let g2h = combine(join(t), guest).map_err(|f| Fail {
        msg: format!("guest→host: {}", f.msg),
        lost: f.lost,
    })?;
    Ok(format!("host→guest [{h2g}] guest→host [{g2h}]"))
}

/// 64 guest connections at once to a host echo service.
fn concurrent_g2h_64(g: &mut Guest, case: &str) -> CaseResult {
    let port = 1242;
    let conns = 64;
    let bytes = 16 * 1024;
    let l = host::listen(g.uds, port).map_err(fail)?;
    let t = thread::spawn(move || -> Result<String, String> {
        let mut workers = Vec::new();
        for i in 0..conns {
            let mut s =
                host::accept(&l, T_READY).map_err(|e| format!("after {i} connections: {e}"))?;
            workers.push(thread::spawn(move || -> Result<u64, String> {
                let mut buf = [0u8; 16384];
                let mut total = 0;
                loop {
                    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Ok(total);
                    }
                    s.write_all(&buf[..n]).map_err(|e| format!("echo: {e}"))?;
                    total += n as u64;
                }
            }));
        }
        let mut total = 0;
        for w in workers {
            total += join(w)?;
        }
        Ok(format!("{conns} connections echoed {total} bytes"))
    });
    let guest = g.vm.run_op(
        case,
        "echo_clients",
        &format!("port={port} conns={conns} bytes={bytes}"),
        T_OP,
    );
    if guest.is_err() {
        for _ in 0..conns {
            let _ = UnixStream::connect(host::port_path(g.uds, port));
        }
    }
    combine(join(t), guest)
}

/// 64 host connections at once to a guest echo service.
fn concurrent_h2g_64(g: &mut Guest, case: &str) -> CaseResult {
    concurrent_h2g(g, case, 5007, 64, 16 * 1024)
}

pub fn concurrent_h2g(
    g: &mut Guest,
    case: &str,
    port: u32,
    conns: usize,
    bytes: usize,
) -> CaseResult {
    let id = echo_server(g, case, port, conns, 30000)?;
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let uds = g.uds.to_path_buf();
            thread::spawn(move || -> Result<(), String> {
                let mut s = host::connect_guest(&uds, port, Duration::from_secs(10))?;
                let mut data = vec![0u8; bytes];
                fill_pattern(2000 + i as u64, 0, &mut data);
                echo_check(&mut s, &data)
            })
        })
        .collect();
    let mut ok = 0;
    let mut first = None;
    for w in workers {
        match join(w) {
            Ok(()) => ok += 1,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let host = match first {
        None => Ok(format!("{ok}/{conns} echoes ok")),
        Some(e) => {
            release(g.uds, port, conns - ok);
            Err(format!("{ok}/{conns} echoes ok, first error: {e}"))
        }
    };
    combine(host, g.vm.wait_result(id, T_OP))
}

/// Guest SEQPACKET connection to a host SEQPACKET socket: every message keeps its boundaries both ways.
fn seqpacket_boundaries(g: &mut Guest, case: &str) -> CaseResult {
    let port = 1243;
    let l = SeqSocket::listen(g.uds, port).map_err(fail)?;
    let t = thread::spawn(move || -> Result<String, String> {
        let s = l.accept(T_READY)?;
        let mut buf = vec![0u8; 256 * 1024];
        for &size in SEQPACKET_SIZES.iter() {
            let (n, trunc) = s
                .recv(&mut buf, Duration::from_secs(10))
                .map_err(|e| format!("waiting for the {size}-byte message: {e}"))?;
            if n != size || trunc {
                return Err(format!(
                    "expected a {size}-byte message, got {n} bytes (truncated={trunc})"
                ));
            }
            let mut expect = vec![0u8; size];
            fill_pattern(size as u64, 0, &mut expect);
            if buf[..n] != expect[..] {
                return Err(format!("{size}-byte message content differs"));
            }
            s.send(&buf[..n])?;
        }
        Ok(format!(
            "{} messages received whole and echoed",
            SEQPACKET_SIZES.len()
        ))
    });
    let guest =
        g.vm.run_op(case, "seqpacket", &format!("port={port}"), T_OP);
    if guest.is_err() {
        // Unblock the accept if the guest never connected.
        let p = host::port_path(g.uds, port);
        // SAFETY: a throwaway SEQPACKET connect; errors ignored.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            let mut a: libc::sockaddr_un = std::mem::zeroed();
            a.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in a
                .sun_path
                .iter_mut()
                .zip(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
            {
                *d = *s as libc::c_char;
            }
            libc::connect(
                fd,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as u32,
            );
            libc::close(fd);
        }
    }
    combine(join(t), guest)
}

/// A quick check that the device still works both ways (after a failed case).
pub fn health(g: &mut Guest, port: u32) -> CaseResult {
    let h2g = concurrent_h2g(g, "health", port, 1, 1024)?;
    let hport = port - 4000;
    let l = host::listen(g.uds, hport).map_err(fail)?;
    let t = thread::spawn(move || -> Result<String, String> {
        let mut s = host::accept(&l, Duration::from_secs(10))?;
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Ok(format!("echoed {total} bytes"));
            }
            s.write_all(&buf[..n]).map_err(|e| format!("echo: {e}"))?;
            total += n;
        }
    });
    let guest = g.vm.run_op(
        "health",
        "echo_clients",
        &format!("port={hport} conns=1 bytes=1024"),
        Duration::from_secs(30),
    );
    if guest.is_err() {
        let _ = UnixStream::connect(host::port_path(g.uds, hport));
    }
    let g2h = combine(join(t), guest)?;
    Ok(format!("{h2g} / {g2h}"))
}

/// `key=value` from a detail string.
pub fn field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}
