//! VHOST_USER_PROTOCOL_F_DEVICE_STATE: the pipe of one SET_DEVICE_STATE_FD transfer, moved
//! without ever blocking the VM's event loop.
//!
//! Protocol rules (vhost-user spec "Migrating back-end state"; crosvm's frontend,
//! `devices/src/virtio/vhost_user_frontend/mod.rs`, is the sequence we serve):
//! - SET_DEVICE_STATE_FD carries `{u32 direction (0 Save, 1 Load), u32 phase (0 Stopped)}` and one
//!   fd (a pipe end). Its reply is a u64 whatever REPLY_ACK says: bits 0-7 an error code, bit 8
//!   "no fd returned" (we always use the frontend's fd, so success is `0x100`, failure `0x101`).
//! - Only phase Stopped exists, and only while every ring is stopped (crosvm sleeps the device
//!   first: SET_VRING_ENABLE 0 + GET_VRING_BASE per queue). A second transfer while one is still
//!   moving bytes is refused. A refusal changes nothing.
//! - Save: the frontend reads its end to EOF and only then sends CHECK_DEVICE_STATE, so the state
//!   is written as the pipe takes it (it may exceed the 64 KiB pipe buffer) and our end is closed
//!   when the last byte is in: that close is the EOF. Load: the frontend writes the whole state
//!   and closes its end, then sends CHECK_DEVICE_STATE; we read as the bytes come.
//! - The pipe is non-blocking and watched by the VM's epoll (no helper thread: under the stock
//!   Cuttlefish sandbox no thread may end before the process). A transfer that has not finished
//!   within [`TRANSFER_TIMEOUT`] fails and its pipe is closed.
//! - CHECK_DEVICE_STATE (u64 reply, 0 = success) concludes the transfer: it moves what the pipe
//!   allows right now, and fails if the pipe part is not over (a frontend that did not read to
//!   EOF, or did not close its end), if it timed out or broke, or if a loaded state is refused.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::snapshot::format::MAX_STATE_BYTES;

/// How long the pipe part of a transfer may take.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);
/// SET_DEVICE_STATE_FD replies: bit 8 "no fd returned", bits 0-7 the error.
pub const REPLY_OK_NO_FD: u64 = 0x100;
pub const REPLY_FAILED_NO_FD: u64 = 0x101;
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Save,
    Load,
}

struct Transfer {
    direction: Direction,
    pipe: Option<File>,
    /// Save: the state (once the device provided it); Load: what arrived so far.
    buf: Vec<u8>,
    /// Save: the state was provided (an empty state is still a state).
    provided: bool,
    written: usize,
    deadline: Instant,
    /// Set once the pipe part is over.
    outcome: Option<Result<(), String>>,
}

/// The state transfer of one session (at most one at a time).
#[derive(Default)]
pub struct DeviceStateChannel {
    transfer: Option<Transfer>,
    /// Pipes whose part is over: the worker takes them out of its epoll set, then closes them.
    retired: Vec<File>,
    /// Pipes the worker has yet to watch.
    to_watch: Option<(RawFd, Direction)>,
}

impl DeviceStateChannel {
    /// Starts a transfer on `pipe`. `Err` (nothing changed) while another one moves bytes.
    pub fn begin(&mut self, direction: Direction, pipe: File) -> Result<(), String> {
        if self.moving() {
            return Err("another device-state transfer is still in flight".into());
        }
        set_nonblocking(&pipe)
            .map_err(|e| format!("cannot make the state fd non-blocking: {e}"))?;
        if let Some(old) = self.transfer.take() {
            // Finished but never checked: its result is dropped with it.
            self.retire(old.pipe);
        }
        self.to_watch = Some((pipe.as_raw_fd(), direction));
        self.transfer = Some(Transfer {
            direction,
            pipe: Some(pipe),
            buf: Vec::new(),
            provided: direction == Direction::Load,
            written: 0,
            deadline: Instant::now() + TRANSFER_TIMEOUT,
            outcome: None,
        });
        Ok(())
    }

    /// A transfer whose pipe part is not over.
    pub fn moving(&self) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.outcome.is_none())
    }

    /// A save waits for the device's state.
    pub fn save_wanted(&self) -> bool {
        self.transfer
            .as_ref()
            .is_some_and(|t| t.direction == Direction::Save && !t.provided && t.outcome.is_none())
    }

    /// The state to write for the pending save.
    pub fn provide(&mut self, state: Vec<u8>) {
        if let Some(t) = self.transfer.as_mut().filter(|t| !t.provided) {
            t.buf = state;
            t.provided = true;
        }
        self.pump();
    }

    /// The save could not build its state.
    pub fn fail(&mut self, why: String) {
        if let Some(t) = self.transfer.as_mut().filter(|t| t.outcome.is_none()) {
            t.outcome = Some(Err(why));
            let pipe = t.pipe.take();
            self.retire(pipe);
        }
    }

    /// A pipe to add to the epoll set (and for which readiness: Save writes, Load reads).
    pub fn take_to_watch(&mut self) -> Option<(RawFd, Direction)> {
        self.to_watch.take()
    }

    /// The fd of the pipe in flight, if any (to take it out of the epoll set).
    pub fn pipe_fd(&self) -> Option<RawFd> {
        self.transfer
            .as_ref()
            .and_then(|t| t.pipe.as_ref())
            .map(|p| p.as_raw_fd())
    }

    /// Pipes to take out of the epoll set and close (closing a Save pipe is the frontend's EOF).
    pub fn take_retired(&mut self) -> Vec<File> {
        std::mem::take(&mut self.retired)
    }

    /// Moves what the pipe takes (Save) or holds (Load) right now.
    pub fn pump(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.outcome.is_some() || !t.provided {
            return;
        }
        let Some(pipe) = t.pipe.as_mut() else {
            return;
        };
        let done = match t.direction {
            Direction::Save => write_some(pipe, &t.buf, &mut t.written),
            Direction::Load => read_some(pipe, &mut t.buf),
        };
        if let Some(outcome) = done {
            t.outcome = Some(outcome);
            let pipe = t.pipe.take();
            self.retire(pipe);
        }
    }

    /// Fails a transfer past its deadline. Returns whether one is still moving (the worker
    /// keeps its timer running).
    pub fn check_deadline(&mut self, now: Instant) -> bool {
        let late = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.outcome.is_none() && now >= t.deadline);
        if late {
            let d = self.transfer.as_ref().map(|t| t.direction);
            log::error!(
                "device-state {d:?} timed out after {} s: the frontend did not {} the pipe",
                TRANSFER_TIMEOUT.as_secs(),
                if d == Some(Direction::Save) {
                    "read"
                } else {
                    "write and close"
                }
            );
            self.fail(format!(
                "the pipe transfer timed out after {} s",
                TRANSFER_TIMEOUT.as_secs()
            ));
        }
        self.moving()
    }

    /// CHECK_DEVICE_STATE: concludes the transfer. `Ok(Some(bytes))` for a finished load,
    /// `Ok(None)` for a finished save.
    pub fn conclude(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.pump();
        let Some(mut t) = self.transfer.take() else {
            return Err("no device-state transfer to check".into());
        };
        let outcome = t.outcome.take().unwrap_or_else(|| {
            Err(match t.direction {
                Direction::Save => format!(
                    "the frontend checked after reading {} of {} state bytes (it must read to EOF first)",
                    t.written,
                    t.buf.len()
                ),
                Direction::Load => format!(
                    "the frontend checked before closing its end of the pipe ({} bytes so far)",
                    t.buf.len()
                ),
            })
        });
        self.retire(t.pipe.take());
        outcome?;
        Ok(match t.direction {
            Direction::Save => None,
            Direction::Load => Some(t.buf),
        })
    }

    fn retire(&mut self, pipe: Option<File>) {
        if let Some(p) = pipe {
            if self.to_watch.is_some_and(|(fd, _)| fd == p.as_raw_fd()) {
                self.to_watch = None;
            }
            self.retired.push(p);
        }
    }
}

/// Writes until the pipe is full. `Some` once the write part is over.
fn write_some(pipe: &mut File, buf: &[u8], written: &mut usize) -> Option<Result<(), String>> {
    while *written < buf.len() {
        match pipe.write(&buf[*written..]) {
            Ok(0) => return Some(Err("the state pipe took no bytes".into())),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(format!("writing the state failed: {e}"))),
        }
    }
    Some(Ok(()))
}

/// Reads what the pipe holds. `Some` at EOF, on an error, or when the state is too large.
fn read_some(pipe: &mut File, buf: &mut Vec<u8>) -> Option<Result<(), String>> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return Some(Ok(())),
            Ok(n) => {
                if buf.len() + n > MAX_STATE_BYTES {
                    return Some(Err(format!(
                        "the state exceeds the {MAX_STATE_BYTES}-byte limit; stopped reading"
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(format!("reading the state failed: {e}"))),
        }
    }
}

fn set_nonblocking(f: &File) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds from pipe2.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// A save larger than the pipe buffer goes out as the reader drains it, and the end closes.
    #[test]
    fn save_larger_than_a_pipe_buffer() {
        let (mut r, w) = pipe();
        let mut ch = DeviceStateChannel::default();
        ch.begin(Direction::Save, w).unwrap();
        assert!(ch.save_wanted());
        let state: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        ch.provide(state.clone());
        assert!(ch.moving(), "a 64 KiB pipe cannot take 300 KB at once");
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            ch.pump();
            for f in ch.take_retired() {
                drop(f);
            }
            let n = r.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, state);
        assert_eq!(ch.conclude(), Ok(None));
    }

    #[test]
    fn a_second_transfer_in_flight_is_refused() {
        let (_r, w) = pipe();
        let (r2, _w2) = pipe();
        let mut ch = DeviceStateChannel::default();
        ch.begin(Direction::Save, w).unwrap();
        assert!(ch.begin(Direction::Load, r2).is_err());
        assert!(ch.save_wanted(), "the first transfer is unchanged");
    }

    /// A frontend that checks before reading to EOF gets a failure; one that never closes its
    /// write end fails the load at the deadline.
    #[test]
    fn stalled_pipes_fail_without_blocking() {
        let (_r, w) = pipe();
        let mut ch = DeviceStateChannel::default();
        ch.begin(Direction::Save, w).unwrap();
        ch.provide(vec![7; 200_000]);
        assert!(ch.conclude().is_err());
        let (r, mut w) = pipe();
        ch.begin(Direction::Load, r).unwrap();
        w.write_all(b"partial").unwrap();
        ch.pump();
        assert!(ch.check_deadline(Instant::now()));
        assert!(!ch.check_deadline(Instant::now() + TRANSFER_TIMEOUT));
        assert!(ch.conclude().unwrap_err().contains("timed out"));
        assert_eq!(ch.take_retired().len(), 2);
    }

    #[test]
    fn oversized_load_stops_reading() {
        let (r, mut w) = pipe();
        let mut ch = DeviceStateChannel::default();
        ch.begin(Direction::Load, r).unwrap();
        set_nonblocking(&w).unwrap();
        let junk = vec![1u8; 65536];
        let mut sent = 0;
        while sent <= MAX_STATE_BYTES {
            match w.write(&junk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ch.pump(),
                Err(e) => panic!("{e}"),
            }
            if !ch.moving() {
                break;
            }
        }
        ch.pump();
        assert!(!ch.moving());
        assert!(ch.conclude().unwrap_err().contains("limit"));
    }
}
