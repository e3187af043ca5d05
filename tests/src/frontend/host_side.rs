//! The host side of hybrid vsock: services listening on `<uds>_P`, clients connecting to `<uds>`
//! with a `connect P\n` line. All reads are bounded by timeouts.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Listens on `path` (stream), non-blocking accept with timeout via [`accept_timeout`].
pub fn listen(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()))
}

/// Accepts one connection within `timeout`.
pub fn accept_timeout(l: &UnixListener, timeout: Duration) -> io::Result<UnixStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no connection to accept",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads exactly `n` bytes within `timeout`.
pub fn read_exact_timeout(s: &mut UnixStream, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("read {got} of {n} bytes: {:02x?}", &out[..got.min(64)]),
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut out[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {n} bytes: {:02x?}", &out[..got.min(64)]),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What a read found within a wait.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Vec<u8>),
    Eof,
    /// ECONNRESET and the like.
    Error(io::ErrorKind),
    Timeout,
}

/// One read with a timeout.
pub fn read_some(s: &mut UnixStream, timeout: Duration) -> ReadOutcome {
    let _ = s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
    let mut b = vec![0u8; 65536];
    loop {
        return match s.read(&mut b) {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(b[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ReadOutcome::Timeout
            }
            Err(e) => ReadOutcome::Error(e.kind()),
        };
    }
}

/// Reads until EOF (or error) within `timeout`; returns (bytes, ended). `ended` is false on
/// timeout.
pub fn read_to_eof(s: &mut UnixStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        match read_some(s, left) {
            ReadOutcome::Data(d) => out.extend_from_slice(&d),
            ReadOutcome::Eof | ReadOutcome::Error(_) => return (out, true),
            ReadOutcome::Timeout => return (out, false),
        }
    }
}

/// Asserts nothing arrives on `s` for `wait` (no data, no EOF).
pub fn assert_quiet(s: &mut UnixStream, wait: Duration) {
    match read_some(s, wait) {
        ReadOutcome::Timeout => {}
        other => panic!("expected silence on the host socket, got {other:?}"),
    }
}

/// Connects to the hybrid socket `uds`, sends `line` (e.g. `b"connect 5000\n"`) in the given
/// pieces, and returns the stream (the OK line is not read).
pub fn hybrid_connect_raw(uds: &Path, pieces: &[&[u8]]) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    for (k, p) in pieces.iter().enumerate() {
        s.write_all(p)?;
        if k + 1 < pieces.len() {
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    Ok(s)
}

/// Reads one `\n`-terminated line (byte by byte, so nothing past the newline is consumed).
pub fn read_line(s: &mut UnixStream, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete line; got {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        s.set_read_timeout(Some(left))?;
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF; got {:?}", String::from_utf8_lossy(&line)),
                ))
            }
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Ok(String::from_utf8_lossy(&line).into_owned());
                }
                if line.len() > 1024 {
                    return Err(io::Error::other("line too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A SOCK_SEQPACKET listener (std has none).
pub struct SeqpacketListener {
    fd: OwnedFd,
}

fn sockaddr_un(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_encoded_bytes();
    assert!(b.len() < a.sun_path.len());
    for (i, &c) in b.iter().enumerate() {
        a.sun_path[i] = c as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    (a, len as libc::socklen_t)
}

impl SeqpacketListener {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        // SAFETY: plain socket call.
        let fd =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (a, len) = sockaddr_un(path);
        // SAFETY: valid sockaddr.
        if unsafe { libc::bind(fd.as_raw_fd(), &a as *const _ as *const libc::sockaddr, len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: valid fd.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SeqpacketListener { fd })
    }

    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Seqpacket> {
        if !super::split_queue::wait_fd(self.fd.as_raw_fd(), timeout) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no seqpacket connection",
            ));
        }
        // SAFETY: valid listening fd.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        Ok(Seqpacket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// A connected SOCK_SEQPACKET socket.
pub struct Seqpacket {
    fd: OwnedFd,
}

impl Seqpacket {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<usize> {
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Receives one message within `timeout`: Some(bytes) (empty = EOF), None = timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if r <= 0 {
            return Ok(None);
        }
        let mut b = vec![0u8; 256 * 1024];
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                b.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        b.truncate(n as usize);
        Ok(Some(b))
    }
}
