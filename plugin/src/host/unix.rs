//! Unix-socket plumbing for the hybrid host side: the `<uds-path>` listener and non-blocking
//! connects to `<uds-path>_<port>`, as stream or seqpacket sockets.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `<uds-path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Outcome of a non-blocking connect.
pub enum Connect {
    Connected(UnixStream),
    /// The listener's backlog is full: try again shortly.
    Busy,
}

/// Connects a non-blocking socket of `sock_type` (`SOCK_STREAM` / `SOCK_SEQPACKET`) to `path`.
/// `UnixStream` is used as a plain fd holder for both types (reads and writes map to
/// `recv`/`send`, which keep seqpacket boundaries).
pub fn connect(path: &Path, sock_type: libc::c_int) -> io::Result<Connect> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            sock_type | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of length len.
    let rc = unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) };
    if rc == 0 {
        return Ok(Connect::Connected(UnixStream::from(owned)));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Connect::Busy),
        // A non-blocking AF_UNIX connect completes or fails at once; EINPROGRESS does not occur.
        _ => Err(err),
    }
}

/// (device, inode) of every socket file this process listens on.
static OWN_SOCKETS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn file_id(path: &Path) -> Option<(u64, u64)> {
    // Follows symlinks, as connect(2) does.
    stat_path(path, true).map(|st| (st.st_dev, st.st_ino))
}

/// Records `path` as one of this process's listening sockets (see [`is_own_socket`]).
pub fn register_own_socket(path: &Path) {
    if let Some(id) = file_id(path) {
        OWN_SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }
}

/// Whether `path` (after symlinks) is a socket file this process listens on: checked before a
/// guest connection is relayed there, so the listener never even sees the attempt. The check
/// after connecting ([`peer_is_this_process`]) covers what changes in between.
pub fn is_own_socket(path: &Path) -> bool {
    file_id(path).is_some_and(|id| {
        OWN_SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    })
}

/// Whether the listening end of connected socket `sock` was created by this very process: the
/// plugin never relays a guest into one of its own sockets (its control plane, another VM's
/// vhost-user or hybrid socket), whatever path led there (a symlink, a late bind). Linux records
/// the listener's credentials at `listen()` and reports them to the connecting side.
///
/// Under `--sandbox stock` (no `getsockopt` in that policy) this backstop is skipped and answers
/// false: the check by path and inode ([`is_own_socket`]) still runs before every connect.
pub fn peer_is_this_process(sock: &impl std::os::fd::AsRawFd) -> io::Result<bool> {
    if !crate::sandbox::beyond_stock_allowed() {
        return Ok(false);
    }
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid == std::process::id() as libc::pid_t)
}

/// The socket type of a connected or listening socket.
pub fn socket_type(fd: &impl std::os::fd::AsRawFd) -> io::Result<libc::c_int> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ty)
}

/// Mode of every socket file the plugin creates unless group access is asked for: only the
/// plugin's own uid may connect (a socket file's write bit is what `connect` checks).
pub const SOCKET_MODE_PRIVATE: u32 = 0o600;
/// `--socket-group-access`: the plugin's group may connect too.
pub const SOCKET_MODE_GROUP: u32 = 0o660;

/// Binds a listener at `path` with file mode `mode` (whatever the umask). A stale socket file
/// nobody listens on is replaced; a live one, or a path that is not a socket, is an error (never
/// steal another process's socket).
///
/// The mode is set on the socket before `bind` creates the file (Linux creates it with the
/// socket inode's mode minus the umask), so the file is never reachable with a wider mode; a
/// `chmod` after `bind` then restores bits the umask removed.
pub fn bind_listener(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // lstat (newfstatat), not std's metadata (statx): inside Cuttlefish's sandbox policy.
    if let Some(is_socket) = lstat_is_socket(path) {
        if !is_socket {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let set_mode = crate::sandbox::beyond_stock_allowed();
    // SAFETY: fchmod on our own socket fd.
    if set_mode && unsafe { libc::fchmod(fd, mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of length len.
    if unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = UnixListener::from(owned);
    if set_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    register_own_socket(path);
    // SAFETY: listen on our own bound socket.
    if unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// `Some(is a socket)` if `path` exists (not following a symlink).
fn lstat_is_socket(path: &Path) -> Option<bool> {
    stat_path(path, false).map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// The inode of `path` itself (not following a symlink), if it exists.
pub fn inode_of(path: &Path) -> Option<u64> {
    stat_path(path, false).map(|st| st.st_ino)
}

/// `stat(2)` or `lstat(2)` (glibc: `newfstatat`). Not `std::fs::metadata`/`symlink_metadata`:
/// those are `statx`, outside Cuttlefish's sandbox policy.
fn stat_path(path: &Path, follow: bool) -> Option<libc::stat> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: stat is plain data, written by the call below.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid stat buffer.
    let rc = unsafe {
        if follow {
            libc::stat(c.as_ptr(), &mut st)
        } else {
            libc::lstat(c.as_ptr(), &mut st)
        }
    };
    (rc == 0).then_some(st)
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_by_type_and_reports_missing_listeners() {
        let dir = std::env::temp_dir().join(format!("vp-unix-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("vm");
        let l = bind_listener(&port_path(&uds, 80), SOCKET_MODE_PRIVATE).unwrap();
        assert!(matches!(
            connect(&port_path(&uds, 80), libc::SOCK_STREAM),
            Ok(Connect::Connected(_))
        ));
        let err = connect(&port_path(&uds, 80), libc::SOCK_SEQPACKET)
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTOTYPE));
        let err = connect(&port_path(&uds, 81), libc::SOCK_STREAM)
            .err()
            .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // A live listener is never replaced; a stale one is.
        assert!(bind_listener(&port_path(&uds, 80), SOCKET_MODE_PRIVATE).is_err());
        drop(l);
        assert!(bind_listener(&port_path(&uds, 80), SOCKET_MODE_PRIVATE).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
