//! Telling whoever started the plugin that every socket listens, without polling:
//!
//! - `--ready-fd N`: one byte (`\n`) is written to fd N once every vhost-user, hybrid and control
//!   socket listens, and the fd is closed. A launcher reads a pipe: the byte means ready; EOF
//!   without it means the plugin exited before getting there (its exit status says why).
//! - `$NOTIFY_SOCKET` (systemd's `Type=notify`, `sd_notify(3)`): `READY=1` is sent as one datagram
//!   to that AF_UNIX socket at the same moment. A path starting with `/` is a filesystem socket, one
//!   starting with `@` an abstract-namespace socket (the `@` stands for the leading NUL).
//!
//! The fd and the variable are taken before any socket is bound, so a bad `--ready-fd` fails
//! the start; a notification that cannot be delivered is logged and the plugin runs on.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// The byte written to `--ready-fd`.
pub const READY_BYTE: u8 = b'\n';
/// The datagram sent to `$NOTIFY_SOCKET`.
pub const NOTIFY_READY: &[u8] = b"READY=1\n";

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("--ready-fd {0}: {1}")]
    BadFd(RawFd, String),
}

/// Where and how to say "ready".
#[derive(Debug, Default)]
pub struct Readiness {
    fd: Option<OwnedFd>,
    /// `$NOTIFY_SOCKET`, as given.
    notify_socket: Option<OsString>,
}

impl Readiness {
    /// Takes ownership of `ready_fd` (which must be open and not one of `socket_fds`) and
    /// remembers `notify_socket` (the value of `$NOTIFY_SOCKET`).
    pub fn take(
        ready_fd: Option<RawFd>,
        socket_fds: &[RawFd],
        notify_socket: Option<OsString>,
    ) -> Result<Readiness, ReadinessError> {
        let fd = match ready_fd {
            None => None,
            Some(fd) if fd < 0 => return Err(ReadinessError::BadFd(fd, "not an fd".into())),
            Some(fd) if socket_fds.contains(&fd) => {
                return Err(ReadinessError::BadFd(fd, "is also a socket-fd".into()))
            }
            Some(fd) => {
                // SAFETY: F_GETFD only reads the fd's flags.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(ReadinessError::BadFd(
                        fd,
                        format!("not open ({})", io::Error::last_os_error()),
                    ));
                }
                // SAFETY: the fd is open and was handed to this process for this purpose only.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        Ok(Readiness {
            fd,
            notify_socket: notify_socket.filter(|s| !s.is_empty()),
        })
    }

    /// Every socket listens: writes the byte and closes the fd, sends `READY=1`.
    pub fn signal(self) {
        if let Some(fd) = self.fd {
            match write_byte(&fd) {
                Ok(()) => log::info!("ready: wrote to --ready-fd {}", fd.as_raw_fd()),
                Err(e) => log::warn!("--ready-fd {}: {e}", fd.as_raw_fd()),
            }
            // Dropping `fd` closes it.
        }
        if let Some(addr) = &self.notify_socket {
            match notify(addr.as_bytes(), NOTIFY_READY) {
                Ok(()) => log::info!("ready: READY=1 sent to NOTIFY_SOCKET"),
                Err(e) => log::warn!("NOTIFY_SOCKET {}: {e}", addr.to_string_lossy()),
            }
        }
    }
}

fn write_byte(fd: &OwnedFd) -> io::Result<()> {
    loop {
        // SAFETY: writes one byte from a valid buffer to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), [READY_BYTE].as_ptr().cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// The `sockaddr_un` for a `$NOTIFY_SOCKET` value, and its length.
fn notify_address(addr: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path: Vec<u8> = match addr.first() {
        Some(b'/') => addr.to_vec(),
        // Abstract namespace: a leading NUL, and the length counts exactly the name.
        Some(b'@') => std::iter::once(0)
            .chain(addr[1..].iter().copied())
            .collect(),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only AF_UNIX addresses (/path or @abstract) are supported",
            ))
        }
    };
    // A filesystem path needs room for its terminating NUL.
    let room = sun.sun_path.len() - usize::from(path[0] != 0);
    if path.len() > room || (path[0] != 0 && path.contains(&0)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "address too long or contains NUL",
        ));
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(&path) {
        *dst = *src as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    let len = base + path.len() + usize::from(path[0] != 0);
    Ok((sun, len as libc::socklen_t))
}

/// Sends `message` as one datagram to the AF_UNIX address `addr` (`$NOTIFY_SOCKET` syntax), with
/// `sendmsg` on a fresh datagram socket.
pub fn notify(addr: &[u8], message: &[u8]) -> io::Result<()> {
    let (mut sun, len) = notify_address(addr)?;
    // SAFETY: plain socket(2) call; the result is owned at once.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sun as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    loop {
        // SAFETY: msg points at `sun` and `iov`, both alive for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    #[test]
    fn notify_reaches_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("vp-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str().as_bytes(), NOTIFY_READY).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], NOTIFY_READY);

        let name = format!("vp-ready-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify(format!("@{name}").as_bytes(), NOTIFY_READY).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], NOTIFY_READY);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_addresses_and_fds_are_refused() {
        assert!(notify(b"vsock:2:1234", NOTIFY_READY).is_err());
        assert!(notify(b"", NOTIFY_READY).is_err());
        assert!(notify(&[b'/'; 200], NOTIFY_READY).is_err());
        let e = Readiness::take(Some(999_999), &[], None).unwrap_err();
        assert!(e.to_string().contains("not open"), "{e}");
        let e = Readiness::take(Some(5), &[5], None).unwrap_err();
        assert!(e.to_string().contains("socket-fd"), "{e}");
    }
}
