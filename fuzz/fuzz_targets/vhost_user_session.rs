//! vhost-user message sequences into one frontend session, as a hostile VMM would send them.
//!
//! Input: a sequence of records `u32 request, u8 flags-selector, u8 fd-count, u16 len, payload`.
//! fds come from a small pool of memfds (sizes 0, one page, 256 KiB). Every message is framed and
//! sent over a real socket pair and handled by `serve_one`; replies are drained.
//! Invariants: no panic or abort (F1 was a 4 GiB reservation); a fatal error ends only this
//! session; every reply that comes back is a well-formed vhost-user reply.
#![no_main]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vsock_plugin::config::IotlbMode;
use vsock_plugin::iotlb::policy::IotlbPolicy;
use vsock_plugin::vhost_user::session::{FrontendSession, SessionConfig, SessionError};
use vsock_plugin::vhost_user::wire;

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a valid C string; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fresh fd.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("ftruncate");
    f
}

fn pool() -> &'static [File; 3] {
    static POOL: OnceLock<[File; 3]> = OnceLock::new();
    POOL.get_or_init(|| [memfd(0), memfd(0x1000), memfd(0x40000)])
}

fn config(mode: IotlbMode) -> SessionConfig {
    SessionConfig {
        guest_cid: 3,
        max_queue_size: 256,
        seqpacket: true,
        iotlb: IotlbPolicy {
            mode,
            access_platform: true,
        },
        iotlb_max_entries: 16,
        iotlb_miss_timeout: Duration::from_millis(100),
    }
}

fn drain(front: &UnixStream) {
    let mut buf = [0u8; 4096];
    let mut stream = front;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mode = if mode & 1 == 0 {
        IotlbMode::Off
    } else {
        IotlbMode::Required
    };
    let (front, back) = UnixStream::pair().expect("socketpair");
    front.set_nonblocking(true).expect("nonblocking");
    back.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let Ok(mut session) = FrontendSession::new(back, config(mode)) else {
        return;
    };
    let fds: Vec<RawFd> = pool().iter().map(|f| f.as_raw_fd()).collect();
    for _ in 0..64 {
        if rest.len() < 8 {
            break;
        }
        let request = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) % 64;
        let flags = match rest[4] % 4 {
            0 => wire::FLAG_VERSION_1,
            1 => wire::FLAG_VERSION_1 | wire::FLAG_NEED_REPLY,
            2 => rest[4] as u32 >> 2,
            _ => wire::FLAG_VERSION_1 | wire::FLAG_REPLY,
        };
        let nfds = (rest[5] % 4) as usize;
        let with: Vec<RawFd> = (0..nfds)
            .map(|i| fds[(rest[5] as usize / 4 + i) % 3])
            .collect();
        let len = (u16::from_le_bytes([rest[6], rest[7]]) as usize).min(rest.len() - 8);
        let payload = &rest[8..8 + len];
        rest = &rest[8 + len..];
        if wire::send_message(&front, request, flags, payload, &with).is_err() {
            break;
        }
        match session.serve_one() {
            Ok(()) | Err(SessionError::Refused { .. }) => {}
            Err(SessionError::Fatal { .. }) => break,
        }
        let _ = session.take_changes();
        // Replies are vhost-user frames: check each header that comes back.
        loop {
            match wire::recv_reply(&front) {
                Ok(reply) => assert_eq!(reply.request, request, "reply to another request"),
                Err(wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("malformed reply: {e}"),
            }
        }
    }
    drain(&front);
});
