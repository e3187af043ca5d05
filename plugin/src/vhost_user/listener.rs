//! Where frontends come from: a socket path we listen on, an inherited listening fd, or an
//! inherited already-connected stream (launchers pass `/proc/self/fd/N`).
//!
//! The listening socket is created once, at start-up, and kept for the life of the process: a
//! frontend that disconnects is followed by the next one on the same path, and a launcher
//! watching the path never sees it disappear.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

pub enum FrontendListener {
    Listening(UnixListener),
    /// An inherited connected stream: serves exactly one frontend.
    Connected(Option<UnixStream>),
}

impl FrontendListener {
    /// Listens at `path`, a socket file of mode `mode`.
    pub fn bind(path: &Path, mode: u32) -> io::Result<FrontendListener> {
        let listener = crate::host::unix::bind_listener(path, mode)?;
        Ok(FrontendListener::Listening(listener))
    }

    /// Takes ownership of an inherited fd.
    pub fn from_fd(fd: RawFd) -> io::Result<FrontendListener> {
        // SAFETY: fstat on an arbitrary fd number only reads.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("socket-fd {fd}: {}", io::Error::last_os_error()),
            ));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket-fd {fd} is not a socket"),
            ));
        }
        // SAFETY: the fd was handed to this process for us to own (checked to be a socket).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most len bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                &mut listening as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if listening != 0 {
            let listener = UnixListener::from(owned);
            listener.set_nonblocking(true)?;
            Ok(FrontendListener::Listening(listener))
        } else {
            Ok(FrontendListener::Connected(Some(UnixStream::from(owned))))
        }
    }

    /// The fd to watch for new frontends (None for an inherited stream).
    pub fn listen_fd(&self) -> Option<RawFd> {
        match self {
            FrontendListener::Listening(listener) => Some(listener.as_raw_fd()),
            FrontendListener::Connected(_) => None,
        }
    }

    /// The next frontend: the inherited stream once, or an accepted connection.
    pub fn next_frontend(&mut self) -> io::Result<Option<UnixStream>> {
        match self {
            FrontendListener::Listening(listener) => match listener.accept() {
                Ok((s, _)) => Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            FrontendListener::Connected(s) => Ok(s.take()),
        }
    }

    /// Can another frontend ever arrive?
    pub fn can_accept(&self) -> bool {
        matches!(self, FrontendListener::Listening(_))
    }
}
