//! Guest side of the real-guest tests: runs as a static binary in a busybox initramfs, takes
//! commands from the host harness on `/dev/ttyS1` (see `real_guest/proto.rs`) and performs the guest
//! half of each case with AF_VSOCK sockets (through libc). Results go back on the control port and,
//! as `CASE <name> PASS|FAIL <detail>` lines, to the console.
//!
//! Build (static, so it runs without a libc in the guest):
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
//!  -p vsock-plugin-tests --bin vsock-guest-agent`

#[path = "../real_guest/proto.rs"]
mod proto;

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use proto::{
    escape, fill_pattern, hex, parse_kv, pattern_sha256, unescape, FastSum, Sha256, HOST_CID,
    SEQPACKET_SIZES,
};

/// Receive/send timeout of data sockets: an op never blocks longer than this on one call.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (the 64-bit "old" number; a struct timeval).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` = `_IO(7, 0xb9)`.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

type OpResult = Result<String, String>;

fn main() {
    let tty = std::env::args()
        .nth(1)
        .unwrap_or_else(|| proto::CONTROL_TTY.to_string());
    let ctl = match open_tty(&tty) {
        Ok(f) => f,
        Err(e) => {
            println!("agent: cannot open {tty}: {e}");
            std::process::exit(1);
        }
    };
    let hello = format!("HELLO release={} cid={}\n", uname_release(), local_cid());
    println!("agent: {}", hello.trim_end());
    let out = Arc::new(Mutex::new(ctl.try_clone().expect("dup control fd")));
    // Say hello until the host talks (it may connect to QEMU's chardev after the guest is up).
    loop {
        let _ = out.lock().unwrap().write_all(hello.as_bytes());
        if poll_in(ctl.as_raw_fd(), 300) {
            break;
        }
    }
    let mut line = Vec::new();
    let mut input = ctl;
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(0) => thread::sleep(Duration::from_millis(50)),
            Ok(_) if byte[0] == b'\n' => {
                let text = String::from_utf8_lossy(&line).trim().to_string();
                line.clear();
                if text == "QUIT" {
                    println!("agent: quit");
                    return;
                }
                if let Some(rest) = text.strip_prefix("RUN ") {
                    run_command(rest, &out);
                }
            }
            Ok(_) if byte[0] == b'\r' => {}
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                println!("agent: control read error: {e}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn send_ctl(out: &Mutex<std::fs::File>, msg: &str) {
    let mut f = out.lock().unwrap();
    let _ = f.write_all(msg.as_bytes());
    let _ = f.write_all(b"\n");
}

fn run_command(rest: &str, out: &Arc<Mutex<std::fs::File>>) {
    let mut words = rest.split_whitespace();
    let (Some(id), Some(case), Some(op)) = (words.next(), words.next(), words.next()) else {
        println!("agent: bad command {rest:?}");
        return;
    };
    let args = parse_kv(words);
    let get = |k: &str, default: u64| -> u64 {
        args.iter()
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let text = |k: &str| -> String {
        args.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| unescape(v))
            .unwrap_or_default()
    };
    let ready = {
        let out = out.clone();
        let id = id.to_string();
        move || send_ctl(&out, &format!("READY {id}"))
    };
    let start = Instant::now();
    let port = get("port", 0) as u32;
    let cid = get("cid", HOST_CID as u64) as u32;
    let result = match op {
        "g2h_send" => g2h_send(
            cid,
            port,
            get("bytes", 0),
            get("wsize", 65536) as usize,
            get("seed", 1),
        ),
        "h2g_recv" => h2g_recv(
            port,
            get("bytes", 0),
            get("seed", 1),
            get("rsize", 65536) as usize,
            get("delay_ms", 0),
            ready,
        ),
        "connect_fail" => connect_fail(
            cid,
            port,
            get("connect_timeout_ms", 2000),
            get("reset_within_ms", 0),
        ),
        "half_close_g2h" => half_close_g2h(cid, port),
        "half_close_h2g" => half_close_h2g(port, ready),
        "echo_server" => echo_server(
            port,
            get("conns", 1) as usize,
            get("timeout_ms", 10000),
            ready,
        ),
        "echo_clients" => echo_clients(cid, port, get("conns", 1) as usize, get("bytes", 4096)),
        "empty_connect" => empty_connect(cid, port),
        "seqpacket" => seqpacket(cid, port),
        "say" => say(cid, port, &text("text")),
        "answer" => answer(port, &text("text"), ready),
        "bulk_send" => bulk_send(cid, port, get("bytes", 0), get("seed", 1)),
        "bulk_recv" => bulk_recv(port, ready),
        "exec" => exec(
            &text("cmd"),
            get("timeout_ms", 60000),
            &text("ready_on"),
            ready,
        ),
        other => Err(format!("unknown op {other}")),
    };
    let ms = start.elapsed().as_millis();
    let (verdict, detail) = match result {
        Ok(d) => ("PASS", d),
        Err(d) => ("FAIL", d),
    };
    let detail = format!("{detail} guest_ms={ms}");
    println!("CASE {case} {verdict} {detail}");
    send_ctl(out, &format!("RESULT {id} {verdict} {detail}"));
}

// ---------------------------------------------------------------------------------------------
// Ops

/// Connects to `cid:port`, writes `bytes` of pattern `seed` in `wsize` writes (each must be
/// accepted whole), then reads the peer's 32-byte SHA-256 of what it received.
fn g2h_send(cid: u32, port: u32, bytes: u64, wsize: usize, seed: u64) -> OpResult {
    let mut s =
        Vsock::connect(libc::SOCK_STREAM, cid, port).map_err(|e| format!("connect: {e}"))?;
    let start = Instant::now();
    let mut buf = vec![0u8; wsize.max(1)];
    let mut sha = Sha256::new();
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(buf.len() as u64) as usize;
        fill_pattern(seed, off, &mut buf[..n]);
        sha.update(&buf[..n]);
        let w = s
            .write(&buf[..n])
            .map_err(|e| format!("write at {off}: {e}"))?;
        if w != n {
            return Err(format!("short write at {off}: {w} of {n}"));
        }
        off += n as u64;
    }
    let mine = sha.finish();
    let mut theirs = [0u8; 32];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("reading host digest: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if theirs != mine {
        return Err(format!(
            "digest mismatch: sent {} host {}",
            hex(&mine),
            hex(&theirs)
        ));
    }
    Ok(format!(
        "sha256={} mbps={:.1}",
        hex(&mine),
        bytes as f64 / secs / 1e6
    ))
}

/// Listens on `port`, accepts one connection, reads `bytes` and checks them against pattern `seed`,
/// then sends back its SHA-256. `delay_ms` between reads of `rsize` makes a slow reader.
fn h2g_recv(
    port: u32,
    bytes: u64,
    seed: u64,
    rsize: usize,
    delay_ms: u64,
    ready: impl FnOnce(),
) -> OpResult {
    let l = Vsock::listen(libc::SOCK_STREAM, port).map_err(|e| format!("listen: {e}"))?;
    ready();
    let mut s = l
        .accept(Duration::from_secs(20))
        .map_err(|e| format!("accept: {e}"))?;
    let start = Instant::now();
    let mut buf = vec![0u8; rsize.max(1)];
    let mut expect = vec![0u8; rsize.max(1)];
    let mut sha = Sha256::new();
    let mut off = 0u64;
    while off < bytes {
        let want = (bytes - off).min(buf.len() as u64) as usize;
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read at {off}: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {off} of {bytes} bytes"));
        }
        fill_pattern(seed, off, &mut expect[..n]);
        if buf[..n] != expect[..n] {
            let i = buf[..n]
                .iter()
                .zip(&expect[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!("data mismatch at offset {}", off + i as u64));
        }
        sha.update(&buf[..n]);
        off += n as u64;
        if delay_ms > 0 {
            thread::sleep(Duration::from_millis(delay_ms));
        }
    }
    let digest = sha.finish();
    let secs = start.elapsed().as_secs_f64();
    s.write_all(&digest)
        .map_err(|e| format!("sending digest: {e}"))?;
    if digest != pattern_sha256(seed, bytes) {
        return Err("digest differs from the pattern's".into());
    }
    Ok(format!(
        "sha256={} mbps={:.1}",
        hex(&digest),
        bytes as f64 / secs / 1e6
    ))
}

/// Connects to a port nobody listens on: must fail; the detail says how and how fast. With
/// `reset_within_ms`, it must also be a reset (RST) that came within that time.
/// `connect_timeout_ms` is the socket's connect timeout (Linux's default is 2 s).
fn connect_fail(cid: u32, port: u32, connect_timeout_ms: u64, reset_within_ms: u64) -> OpResult {
    let start = Instant::now();
    let r = Vsock::connect_with_timeout(
        libc::SOCK_STREAM,
        cid,
        port,
        Duration::from_millis(connect_timeout_ms),
    );
    let ms = start.elapsed().as_millis() as u64;
    let e = match r {
        Ok(_) => return Err(format!("connected to {cid}:{port}, expected a refusal")),
        Err(e) => e.raw_os_error().unwrap_or(0),
    };
    let detail = format!("errno={} connect_ms={ms}", errno_name(e));
    if reset_within_ms > 0 {
        if e != libc::ECONNRESET && e != libc::ECONNREFUSED {
            return Err(format!("{detail}: expected a reset (ECONNRESET)"));
        }
        if ms >= reset_within_ms {
            return Err(format!("{detail}: reset later than {reset_within_ms} ms"));
        }
    }
    Ok(detail)
}

const HALF_PING: &[u8] = b"half-close ping\n";
const HALF_PONG: &[u8] = b"reply after EOF\n";

/// Guest writes, shuts down its write side, and must still receive the host's reply and then EOF.
fn half_close_g2h(cid: u32, port: u32) -> OpResult {
    let mut s =
        Vsock::connect(libc::SOCK_STREAM, cid, port).map_err(|e| format!("connect: {e}"))?;
    s.write_all(HALF_PING).map_err(|e| format!("write: {e}"))?;
    s.shutdown(libc::SHUT_WR)
        .map_err(|e| format!("shutdown(SHUT_WR): {e}"))?;
    let got =
        read_to_eof(&mut s, Duration::from_secs(10)).map_err(|e| format!("reading reply: {e}"))?;
    if got != HALF_PONG {
        return Err(format!(
            "reply {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            "reply after EOF"
        ));
    }
    Ok("reply and EOF received after SHUT_WR".into())
}

/// Host writes and shuts down its write side: the guest must see the data then EOF, and its reply
/// must still reach the host.
fn half_close_h2g(port: u32, ready: impl FnOnce()) -> OpResult {
    let l = Vsock::listen(libc::SOCK_STREAM, port).map_err(|e| format!("listen: {e}"))?;
    ready();
    let mut s = l
        .accept(Duration::from_secs(20))
        .map_err(|e| format!("accept: {e}"))?;
    let got =
        read_to_eof(&mut s, Duration::from_secs(6)).map_err(|e| format!("waiting for EOF: {e}"))?;
    if got != HALF_PING {
        return Err(format!(
            "got {:?} before EOF",
            String::from_utf8_lossy(&got)
        ));
    }
    s.write_all(HALF_PONG)
        .map_err(|e| format!("reply after EOF: {e}"))?;
    Ok("EOF seen, reply sent".into())
}

/// Accepts `conns` connections within `timeout_ms` and echoes each until EOF.
fn echo_server(port: u32, conns: usize, timeout_ms: u64, ready: impl FnOnce()) -> OpResult {
    let l = Vsock::listen(libc::SOCK_STREAM, port).map_err(|e| format!("listen: {e}"))?;
    ready();
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut workers = Vec::new();
    let mut accept_err = None;
    while workers.len() < conns {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match l.accept(left) {
            Ok(mut s) => workers.push(
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || -> Result<u64, String> {
                        let mut buf = vec![0u8; 32 * 1024];
                        let mut total = 0u64;
                        loop {
                            let n = s
                                .read(&mut buf)
                                .map_err(|e| format!("read after {total}: {e}"))?;
                            if n == 0 {
                                return Ok(total);
                            }
                            s.write_all(&buf[..n]).map_err(|e| format!("echo: {e}"))?;
                            total += n as u64;
                        }
                    })
                    .map_err(|e| format!("spawn: {e}"))?,
            ),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) => {
                accept_err = Some(e);
                break;
            }
        }
    }
    let accepted = workers.len();
    let mut bytes = 0;
    let mut errors = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("worker panicked".into()),
        }
    }
    let detail = format!("accepted={accepted} bytes={bytes}");
    if let Some(e) = accept_err {
        return Err(format!("{detail} accept: {e}"));
    }
    if !errors.is_empty() {
        return Err(format!(
            "{detail} errors={} first: {}",
            errors.len(),
            errors[0]
        ));
    }
    if accepted < conns {
        return Err(format!("{detail} (wanted {conns})"));
    }
    Ok(detail)
}

/// `conns` concurrent connections to `cid:port`, each sending `bytes` of its own pattern and
/// reading the echo back.
fn echo_clients(cid: u32, port: u32, conns: usize, bytes: u64) -> OpResult {
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> Result<(), String> {
                    let mut s = Vsock::connect(libc::SOCK_STREAM, cid, port)
                        .map_err(|e| format!("connect: {e}"))?;
                    let mut data = vec![0u8; bytes as usize];
                    fill_pattern(1000 + i as u64, 0, &mut data);
                    let mut reader = s.try_clone().map_err(|e| format!("dup: {e}"))?;
                    let expect = data.clone();
                    let rd = thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || -> Result<(), String> {
                            let mut back = vec![0u8; expect.len()];
                            reader
                                .read_exact(&mut back)
                                .map_err(|e| format!("read echo: {e}"))?;
                            if back != expect {
                                return Err("echo differs".into());
                            }
                            Ok(())
                        })
                        .map_err(|e| format!("spawn: {e}"))?;
                    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
                    rd.join().map_err(|_| "reader panicked".to_string())?
                })
                .expect("spawn client")
        })
        .collect();
    let mut ok = 0;
    let mut first_err = None;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("client panicked".into());
            }
        }
    }
    match first_err {
        None => Ok(format!("ok={ok}/{conns}")),
        Some(e) => Err(format!("ok={ok}/{conns} first error: {e}")),
    }
}

/// Connects and closes without sending anything.
fn empty_connect(cid: u32, port: u32) -> OpResult {
    let s = Vsock::connect(libc::SOCK_STREAM, cid, port).map_err(|e| format!("connect: {e}"))?;
    drop(s);
    Ok("connected and closed without data".into())
}

/// SEQPACKET to `cid:port`: sends messages of [`SEQPACKET_SIZES`]; the host echoes each one; every
/// reply must come back as one message of the same size and content.
fn seqpacket(cid: u32, port: u32) -> OpResult {
    let s = Vsock::connect(libc::SOCK_SEQPACKET, cid, port).map_err(|e| format!("connect: {e}"))?;
    let mut buf = vec![0u8; 128 * 1024];
    for &size in SEQPACKET_SIZES.iter() {
        let mut msg = vec![0u8; size];
        fill_pattern(size as u64, 0, &mut msg);
        let w = s.send(&msg).map_err(|e| format!("send {size}: {e}"))?;
        if w != size {
            return Err(format!("short send {w} of {size}"));
        }
        let (n, truncated) = s
            .recv_msg(&mut buf)
            .map_err(|e| format!("recv reply to {size}: {e}"))?;
        if truncated || n != size {
            return Err(format!(
                "sent {size}-byte message, got {n} bytes back (truncated={truncated})"
            ));
        }
        if buf[..n] != msg[..] {
            return Err(format!("reply to {size}-byte message differs"));
        }
    }
    Ok(format!(
        "{} messages kept their boundaries",
        SEQPACKET_SIZES.len()
    ))
}

/// Demo, guest → host: connects to `cid:port`, sends `text` and a newline, and returns the host's
/// reply (read until EOF) as `reply=<escaped>`.
fn say(cid: u32, port: u32, text: &str) -> OpResult {
    let mut s =
        Vsock::connect(libc::SOCK_STREAM, cid, port).map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let got = read_to_eof(&mut s, Duration::from_secs(10)).map_err(|e| format!("reply: {e}"))?;
    let reply = String::from_utf8_lossy(&got);
    Ok(format!("reply={}", escape(reply.trim_end())))
}

/// Demo, host → guest: listens on `port`, accepts one connection, reads one line, answers with
/// `text` and a newline and closes. Returns `got=<escaped line>`.
fn answer(port: u32, text: &str, ready: impl FnOnce()) -> OpResult {
    let l = Vsock::listen(libc::SOCK_STREAM, port).map_err(|e| format!("listen: {e}"))?;
    ready();
    let mut s = l
        .accept(Duration::from_secs(20))
        .map_err(|e| format!("accept: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 4096 {
        match s.read(&mut b).map_err(|e| format!("read: {e}"))? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    s.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    Ok(format!("got={}", escape(&String::from_utf8_lossy(&line))))
}

/// Throughput, guest → host: an 8-byte little-endian length, then `bytes` of a 256 KiB pattern
/// block repeated; the host answers with the [`FastSum`] of what it received (8 bytes, LE).
fn bulk_send(cid: u32, port: u32, bytes: u64, seed: u64) -> OpResult {
    let mut s =
        Vsock::connect(libc::SOCK_STREAM, cid, port).map_err(|e| format!("connect: {e}"))?;
    s.set_timeout(libc::SO_RCVTIMEO, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let mut block = vec![0u8; 256 * 1024];
    fill_pattern(seed, 0, &mut block);
    let start = Instant::now();
    s.write_all(&bytes.to_le_bytes())
        .map_err(|e| format!("header: {e}"))?;
    let mut sum = FastSum::new();
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(block.len() as u64) as usize;
        sum.update(&block[..n]);
        s.write_all(&block[..n])
            .map_err(|e| format!("write at {off}: {e}"))?;
        off += n as u64;
    }
    let mine = sum.finish();
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("reading the host's sum: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let theirs = u64::from_le_bytes(theirs);
    if theirs != mine {
        return Err(format!(
            "sum mismatch: sent {mine:016x}, host {theirs:016x}"
        ));
    }
    Ok(format!(
        "bytes={bytes} sum={mine:016x} mbps={:.1}",
        bytes as f64 / secs / 1e6
    ))
}

/// Throughput, host → guest: accepts one connection on `port`, reads the 8-byte length and the
/// data, and answers with the [`FastSum`] of the data.
fn bulk_recv(port: u32, ready: impl FnOnce()) -> OpResult {
    let l = Vsock::listen(libc::SOCK_STREAM, port).map_err(|e| format!("listen: {e}"))?;
    ready();
    let mut s = l
        .accept(Duration::from_secs(20))
        .map_err(|e| format!("accept: {e}"))?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head)
        .map_err(|e| format!("header: {e}"))?;
    let bytes = u64::from_le_bytes(head);
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sum = FastSum::new();
    let mut off = 0u64;
    while off < bytes {
        let want = (bytes - off).min(buf.len() as u64) as usize;
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read at {off}: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {off} of {bytes} bytes"));
        }
        sum.update(&buf[..n]);
        off += n as u64;
    }
    let v = sum.finish();
    s.write_all(&v.to_le_bytes())
        .map_err(|e| format!("sending the sum: {e}"))?;
    Ok(format!(
        "bytes={bytes} sum={v:016x} mbps={:.1}",
        bytes as f64 / start.elapsed().as_secs_f64() / 1e6
    ))
}

/// Runs `/bin/sh -c cmd` (stdout and stderr together) with a time limit; PASS when it exits 0.
/// The detail is `status=<n> out=<escaped last 8000 bytes of output>`.
/// Runs `cmd` under `/bin/sh -c` with a time limit; its output (stdout and stderr) comes back in the
/// result. With `ready_on`, READY is sent once that text appears in the output (e.g. a server's
/// "listening" line), so the host can start the other side only then.
fn exec(cmd: &str, timeout_ms: u64, ready_on: &str, ready: impl FnOnce()) -> OpResult {
    use std::process::{Command, Stdio};
    let out_path = "/tmp/agent-exec.out";
    let file = std::fs::File::create(out_path).map_err(|e| format!("{out_path}: {e}"))?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut ready = (!ready_on.is_empty()).then_some(ready);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -2;
        }
        if ready.is_some() {
            let so_far = std::fs::read(out_path).unwrap_or_default();
            if String::from_utf8_lossy(&so_far).contains(ready_on) {
                if let Some(r) = ready.take() {
                    r();
                }
            }
        }
        thread::sleep(Duration::from_millis(if ready.is_some() { 5 } else { 20 }));
    };
    let out = std::fs::read(out_path).unwrap_or_default();
    let tail = &out[out.len().saturating_sub(8000)..];
    let detail = format!(
        "status={status} out={}",
        escape(&String::from_utf8_lossy(tail))
    );
    if status == 0 {
        Ok(detail)
    } else {
        Err(detail)
    }
}

fn read_to_eof(s: &mut Vsock, limit: Duration) -> io::Result<Vec<u8>> {
    s.set_timeout(libc::SO_RCVTIMEO, limit)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// AF_VSOCK through libc

struct Vsock(OwnedFd);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_port = port;
    a.svm_cid = cid;
    a
}

impl Vsock {
    fn socket(ty: libc::c_int) -> io::Result<Vsock> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = cvt(unsafe { libc::socket(libc::AF_VSOCK, ty | libc::SOCK_CLOEXEC, 0) })?;
        Ok(Vsock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn connect(ty: libc::c_int, cid: u32, port: u32) -> io::Result<Vsock> {
        Vsock::connect_with_timeout(ty, cid, port, Duration::from_secs(10))
    }

    fn connect_with_timeout(
        ty: libc::c_int,
        cid: u32,
        port: u32,
        timeout: Duration,
    ) -> io::Result<Vsock> {
        let s = Vsock::socket(ty)?;
        s.set_timeout_level(libc::AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, timeout)?;
        let a = sockaddr(cid, port);
        // SAFETY: `a` is a valid sockaddr_vm of the given length.
        cvt(unsafe {
            libc::connect(
                s.fd(),
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        s.set_timeout(libc::SO_RCVTIMEO, IO_TIMEOUT)?;
        s.set_timeout(libc::SO_SNDTIMEO, IO_TIMEOUT)?;
        Ok(s)
    }

    fn listen(ty: libc::c_int, port: u32) -> io::Result<Vsock> {
        let s = Vsock::socket(ty)?;
        let a = sockaddr(libc::VMADDR_CID_ANY, port);
        // SAFETY: `a` is a valid sockaddr_vm of the given length.
        cvt(unsafe {
            libc::bind(
                s.fd(),
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        cvt(unsafe { libc::listen(s.fd(), 128) })?;
        Ok(s)
    }

    fn accept(&self, timeout: Duration) -> io::Result<Vsock> {
        self.set_timeout(libc::SO_RCVTIMEO, timeout.max(Duration::from_millis(1)))?;
        loop {
            // SAFETY: no address requested.
            match cvt(unsafe {
                libc::accept4(
                    self.fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            }) {
                Ok(fd) => {
                    let s = Vsock(unsafe { OwnedFd::from_raw_fd(fd) });
                    s.set_timeout(libc::SO_RCVTIMEO, IO_TIMEOUT)?;
                    s.set_timeout(libc::SO_SNDTIMEO, IO_TIMEOUT)?;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn try_clone(&self) -> io::Result<Vsock> {
        Ok(Vsock(self.0.try_clone()?))
    }

    fn set_timeout(&self, opt: libc::c_int, d: Duration) -> io::Result<()> {
        self.set_timeout_level(libc::SOL_SOCKET, opt, d)
    }

    fn set_timeout_level(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        d: Duration,
    ) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval of the given length.
        cvt(unsafe {
            libc::setsockopt(
                self.fd(),
                level,
                opt,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    fn shutdown(&self, how: libc::c_int) -> io::Result<()> {
        cvt(unsafe { libc::shutdown(self.fd(), how) }).map(|_| ())
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for its length.
            let r = unsafe {
                libc::send(
                    self.fd(),
                    buf.as_ptr() as *const libc::c_void,
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One message; the flag says whether it was truncated to `buf`.
    fn recv_msg(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data; iov points at `buf`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            let r = unsafe { libc::recvmsg(self.fd(), &mut msg, 0) };
            if r >= 0 {
                return Ok((r as usize, msg.msg_flags & libc::MSG_TRUNC != 0));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Read for Vsock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let r =
                unsafe { libc::read(self.fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Write for Vsock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Misc

fn open_tty(path: &str) -> io::Result<std::fs::File> {
    let c = CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain syscalls on a fresh fd.
    let fd =
        cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::tcgetattr(fd, &mut t) })?;
    // SAFETY: `t` is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) })?;
    Ok(f)
}

fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 && p.revents & libc::POLLIN != 0 }
}

fn uname_release() -> String {
    // SAFETY: utsname is plain data filled by the kernel.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn local_cid() -> String {
    let Ok(f) = std::fs::File::open("/dev/vsock") else {
        return "none".into();
    };
    let mut cid: u32 = 0;
    // SAFETY: the ioctl writes one u32.
    if unsafe { libc::ioctl(f.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID as _, &mut cid) } < 0 {
        return "none".into();
    }
    cid.to_string()
}

fn errno_name(e: i32) -> String {
    match e {
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        libc::EINTR => "EINTR".into(),
        other => format!("errno{other}"),
    }
}
