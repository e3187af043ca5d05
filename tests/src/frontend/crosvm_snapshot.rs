//! crosvm's sleep, snapshot, wake and restore of a vhost-user device, message for message.
//!
//! Transcribed from google/crosvm @ 10297b9acde0463bfcad4c5c93e342866975058e,
//! `devices/src/virtio/vhost_user_frontend/mod.rs`:
//! - `VhostUserFrontend::new`: SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES,
//!   SET_PROTOCOL_FEATURES (CONFIG|MQ|BACKEND_REQ|DEVICE_STATE|SHMEM_MAP|REPLY_ACK ∩ offer),
//!   SET_BACKEND_REQ_FD if BACKEND_REQ, GET_QUEUE_NUM if MQ ([`new_frontend`]).
//! - `virtio_sleep` → `deactivate_vring` per activated queue: SET_VRING_ENABLE(i, 0) (when
//!   PROTOCOL_FEATURES was acked), then GET_VRING_BASE(i); the base is the queue's next avail
//!   index ([`sleep`]).
//! - `virtio_snapshot`: pipe; SET_DEVICE_STATE_FD(Save, Stopped, write end); drop the write end;
//!   read the read end to EOF; CHECK_DEVICE_STATE; non-zero fails ([`snapshot`]).
//! - `virtio_restore`: SET_FEATURES(acked) unless already sent; pipe;
//!   SET_DEVICE_STATE_FD(Load, Stopped, read end); `write_all` the state; close; CHECK_DEVICE_STATE
//!   ([`restore`]).
//! - `virtio_wake` → `activate`: SET_FEATURES only if none was sent since the last reset (after a
//!   sleep or a restore one was), SET_MEM_TABLE, then per queue SET_VRING_NUM, SET_VRING_ADDR,
//!   SET_VRING_BASE(next avail), SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE(1) ([`wake`]).
//!
//! No NEED_REPLY anywhere (crosvm negotiates REPLY_ACK but never sets it). The SET_DEVICE_STATE_FD
//! reply is a u64: `0x100` = success, no fd returned (bits 0-7 the error).
//!
//! The pipe reads and writes are bounded by timeouts here (crosvm's are not) so that a test of a
//! misbehaving backend fails instead of hanging; [`StalledPipe`] plays a frontend that never
//! reads or never closes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::FrontendReq;

use super::guest_memory::GuestMemory;
use super::vhost_user_client::CrosvmOptions;
use super::vhost_user_client::{
    VhostUserClient, VringSetup, F_PROTOCOL_FEATURES, PF_BACKEND_REQ, PF_MQ,
};

pub const DIRECTION_SAVE: u32 = 0;
pub const DIRECTION_LOAD: u32 = 1;
pub const PHASE_STOPPED: u32 = 0;
/// SET_DEVICE_STATE_FD reply: success, no fd returned.
pub const REPLY_OK_NO_FD: u64 = 0x100;

fn err(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// SET_DEVICE_STATE_FD: returns the u64 reply.
pub fn set_device_state_fd(
    c: &mut VhostUserClient,
    direction: u32,
    phase: u32,
    fd: &File,
) -> io::Result<u64> {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&direction.to_ne_bytes());
    body.extend_from_slice(&phase.to_ne_bytes());
    c.send_raw(
        FrontendReq::SET_DEVICE_STATE_FD as u32,
        1,
        &body,
        &[fd.as_raw_fd()],
    )?;
    let r = c.recv_reply_to(FrontendReq::SET_DEVICE_STATE_FD)?;
    r.u64()
        .ok_or_else(|| err(format!("SET_DEVICE_STATE_FD reply {:02x?}", r.payload)))
}

/// CHECK_DEVICE_STATE: returns the u64 reply (0 = success).
pub fn check_device_state(c: &mut VhostUserClient) -> io::Result<u64> {
    c.get_u64(FrontendReq::CHECK_DEVICE_STATE)
}

/// `VhostUserFrontend::new`: returns (offered features, negotiated protocol features).
pub fn new_frontend(c: &mut VhostUserClient, opts: &CrosvmOptions) -> io::Result<(u64, u64)> {
    c.set_owner(false)?;
    let offered = c.get_features()?;
    let mut pf = 0;
    if offered & F_PROTOCOL_FEATURES != 0 {
        pf = c.get_protocol_features()? & opts.protocol_mask;
        c.set_protocol_features(pf, false)?;
    }
    if pf & PF_BACKEND_REQ != 0 {
        c.set_backend_req_fd(false)?;
    }
    if pf & PF_MQ != 0 {
        c.get_queue_num()?;
    }
    Ok((offered, pf))
}

/// `virtio_sleep`: the next avail index of each ring, in `rings` order.
pub fn sleep(c: &mut VhostUserClient, acked: u64, rings: &[u32]) -> io::Result<Vec<u16>> {
    let mut bases = Vec::new();
    for &i in rings {
        if acked & F_PROTOCOL_FEATURES != 0 {
            c.set_vring_enable(i, false, false)?;
        }
        let (index, base) = c.get_vring_base(i)?;
        if index != i {
            return Err(err(format!(
                "GET_VRING_BASE({i}) answered for ring {index}"
            )));
        }
        bases.push(u16::try_from(base).map_err(|_| err(format!("vring base {base} too big")))?);
    }
    Ok(bases)
}

/// `virtio_snapshot`: the state bytes (read to EOF within `timeout`).
pub fn snapshot(c: &mut VhostUserClient, timeout: Duration) -> io::Result<Vec<u8>> {
    let (r, w) = pipe()?;
    let reply = set_device_state_fd(c, DIRECTION_SAVE, PHASE_STOPPED, &w)?;
    if reply != REPLY_OK_NO_FD {
        return Err(err(format!("SET_DEVICE_STATE_FD(Save) replied {reply:#x}")));
    }
    drop(w);
    let bytes = read_to_eof(r, timeout)?;
    match check_device_state(c)? {
        0 => Ok(bytes),
        v => Err(err(format!("CHECK_DEVICE_STATE after save: {v}"))),
    }
}

/// `virtio_restore` (features already negotiated when `sent_set_features`): the CHECK result.
pub fn restore(
    c: &mut VhostUserClient,
    acked: u64,
    sent_set_features: bool,
    state: &[u8],
    timeout: Duration,
) -> io::Result<u64> {
    if !sent_set_features {
        c.set_features(acked, false)?;
    }
    let (r, w) = pipe()?;
    let reply = set_device_state_fd(c, DIRECTION_LOAD, PHASE_STOPPED, &r)?;
    if reply != REPLY_OK_NO_FD {
        return Err(err(format!("SET_DEVICE_STATE_FD(Load) replied {reply:#x}")));
    }
    // crosvm keeps its read end until the function returns; so do we.
    write_all_within(w, state, timeout)?;
    check_device_state(c)
}

/// `virtio_wake` → `activate` (SET_FEATURES already sent): memory table and every ring at `bases`.
pub fn wake(
    c: &mut VhostUserClient,
    mem: &GuestMemory,
    rings: &[VringSetup],
    bases: &[u16],
    acked: u64,
) -> io::Result<()> {
    c.set_mem_table(mem, false)?;
    for (v, &base) in rings.iter().zip(bases) {
        c.set_vring_num(v.index, v.size as u32, false)?;
        c.set_vring_addr(v, false)?;
        c.set_vring_base(v.index, base as u32, false)?;
        c.set_vring_call(v.index, Some(v.call), false)?;
        c.set_vring_kick(v.index, Some(v.kick), false)?;
        if acked & F_PROTOCOL_FEATURES != 0 {
            c.set_vring_enable(v.index, true, false)?;
        }
    }
    // A round trip: everything above was consumed.
    c.get_features()?;
    Ok(())
}

fn read_to_eof(r: File, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    set_nonblocking(&r);
    let mut r = r;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "no EOF on the state pipe after {} bytes",
                        out.len()
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn set_nonblocking(f: &File) {
    // SAFETY: fcntl on our own fd.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn write_all_within(w: File, data: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    set_nonblocking(&w);
    let mut w = w;
    let mut sent = 0;
    while sent < data.len() {
        match w.write(&data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "state pipe not drained: {sent} of {} bytes",
                        data.len()
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A frontend that hands the backend a pipe and then misbehaves: keeps the other end open and
/// never reads it (Save) or never writes/closes it (Load). It also keeps its copy of the end it
/// sent (as crosvm does until its snapshot/restore function returns).
pub struct StalledPipe {
    pub ours: File,
    pub theirs: File,
    pub reply: u64,
}

impl StalledPipe {
    pub fn start(c: &mut VhostUserClient, direction: u32) -> io::Result<StalledPipe> {
        let (r, w) = pipe()?;
        let (theirs, ours) = if direction == DIRECTION_SAVE {
            (w, r)
        } else {
            (r, w)
        };
        let reply = set_device_state_fd(c, direction, PHASE_STOPPED, &theirs)?;
        Ok(StalledPipe {
            ours,
            theirs,
            reply,
        })
    }
}
