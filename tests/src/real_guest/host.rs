//! Host side of the hybrid vsock protocol: `connect P\n` / `OK P\n` on `<uds>`, listeners on
//! `<uds>_P` (stream and SEQPACKET), all with timeouts.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `<uds>_<port>`.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to `uds`, sends `connect <port>\n` and checks the `OK <port>\n` reply.
pub fn connect_guest(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_write_timeout(Some(timeout)).ok();
    s.write_all(format!("connect {port}\n").as_bytes())
        .map_err(|e| format!("sending connect line: {e}"))?;
    expect_ok(&mut s, port, timeout)?;
    Ok(s)
}

/// Reads the reply line byte by byte (never past `\n`) and checks it is `OK <port>`.
pub fn expect_ok(s: &mut UnixStream, port: u32, timeout: Duration) -> Result<(), String> {
    match read_line(s, timeout) {
        Ok(Some(l)) if l == format!("OK {port}") => {
            s.set_read_timeout(Some(Duration::from_secs(15))).ok();
            s.set_write_timeout(Some(Duration::from_secs(15))).ok();
            Ok(())
        }
        Ok(Some(l)) => Err(format!("reply {l:?}, expected \"OK {port}\"")),
        Ok(None) => Err(format!("closed without OK (connect {port})")),
        Err(e) => Err(format!("waiting for OK {port}: {e}")),
    }
}

/// One line (without `\n`); `None` on EOF before any byte.
pub fn read_line(s: &mut UnixStream, timeout: Duration) -> io::Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {:?}", timeout),
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut b) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            Ok(_) if b[0] == b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {:?}", timeout),
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads until EOF within `timeout`.
pub fn read_to_eof(s: &mut UnixStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no EOF within {timeout:?} (got {} bytes)",
                out.len()
            ));
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no EOF within {timeout:?} (got {} bytes)",
                    out.len()
                ))
            }
            Err(e) => return Err(format!("read: {e} (after {} bytes)", out.len())),
        }
    }
}

/// Binds `<uds>_<port>` (replacing a stale file).
pub fn listen(uds: &Path, port: u32) -> Result<UnixListener, String> {
    let p = port_path(uds, port);
    let _ = std::fs::remove_file(&p);
    UnixListener::bind(&p).map_err(|e| format!("bind {}: {e}", p.display()))
}

pub fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// `accept` with a timeout; the stream gets 15 s read/write timeouts.
pub fn accept(l: &UnixListener, timeout: Duration) -> Result<UnixStream, String> {
    if !poll_readable(l.as_raw_fd(), timeout) {
        return Err(format!("no connection from the guest within {timeout:?}"));
    }
    let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.set_write_timeout(Some(Duration::from_secs(15))).ok();
    Ok(s)
}

/// A SEQPACKET Unix socket (listener or connection), where guest SEQPACKET connections land.
pub struct SeqSocket(OwnedFd);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl SeqSocket {
    pub fn listen(uds: &Path, port: u32) -> Result<SeqSocket, String> {
        let p = port_path(uds, port);
        let _ = std::fs::remove_file(&p);
        let err = |what: &str, e: io::Error| format!("{what} {}: {e}", p.display());
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = cvt(unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
        })
        .map_err(|e| err("socket", e))?;
        let s = SeqSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = p.as_os_str().as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(format!("{} too long for a Unix socket", p.display()));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        cvt(unsafe {
            libc::bind(
                s.0.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        })
        .map_err(|e| err("bind", e))?;
        cvt(unsafe { libc::listen(s.0.as_raw_fd(), 16) }).map_err(|e| err("listen", e))?;
        Ok(s)
    }

    pub fn accept(&self, timeout: Duration) -> Result<SeqSocket, String> {
        if !poll_readable(self.0.as_raw_fd(), timeout) {
            return Err(format!(
                "no SEQPACKET connection from the guest within {timeout:?}"
            ));
        }
        // SAFETY: no address requested.
        let fd = cvt(unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })
        .map_err(|e| format!("accept: {e}"))?;
        Ok(SeqSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One message within `timeout`: (length, truncated). Length 0 with no error means EOF.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<(usize, bool), String> {
        if !poll_readable(self.0.as_raw_fd(), timeout) {
            return Err(format!("no message within {timeout:?}"));
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; iov points at `buf`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let r = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err(format!("recvmsg: {}", io::Error::last_os_error()));
        }
        Ok((r as usize, msg.msg_flags & libc::MSG_TRUNC != 0))
    }

    pub fn send(&self, buf: &[u8]) -> Result<(), String> {
        // SAFETY: `buf` is valid for its length.
        let r = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if r < 0 {
            return Err(format!("send: {}", io::Error::last_os_error()));
        }
        if r as usize != buf.len() {
            return Err(format!("short send {r} of {}", buf.len()));
        }
        Ok(())
    }
}
