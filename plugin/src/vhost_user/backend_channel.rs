//! The backend channel (SET_BACKEND_REQ_FD) as this device uses it: MISS requests out, their
//! u64 replies in.
//!
//! Each MISS is `BACKEND_IOTLB_MSG` (id 1) with NEED_REPLY; the frontend answers 0 once it has
//! sent an UPDATE covering the address (on the main channel), or non-zero / nothing useful when
//! the address is invalid. Replies arrive in order, so a FIFO of (queue, IOVA) maps each reply
//! to the exact MISS it answers: a reply can arrive after an UPDATE already resolved its miss and
//! the queue parked on another address, and must not be taken as the answer to that one. The
//! channel is read from the worker's event loop without blocking (a reply is assembled as it
//! arrives; one that never completes leaves its MISS to the miss timeout), and a MISS is sent
//! without waiting for room: nothing waits on the frontend, and no socket timeout is set.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

use vm_memory::Permissions;

use super::reader::MessageReader;
use super::wire::{self, WireError, FLAG_NEED_REPLY, FLAG_VERSION_1};
use crate::iotlb::message::encode_miss;

/// `VHOST_USER_BACKEND_IOTLB_MSG`.
pub const BACKEND_IOTLB_MSG: u32 = 1;

pub struct BackendChannel {
    sock: UnixStream,
    awaiting: VecDeque<(usize, u64)>,
    reader: MessageReader,
}

impl BackendChannel {
    pub fn new(sock: UnixStream) -> BackendChannel {
        BackendChannel {
            sock,
            awaiting: VecDeque::new(),
            reader: MessageReader::replies(),
        }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Asks the frontend to map `iova` with `perm` for queue `queue`.
    pub fn send_miss(&mut self, queue: usize, iova: u64, perm: Permissions) -> std::io::Result<()> {
        log::debug!("IOTLB MISS for queue {queue}: iova {iova:#x} perm {perm:?}");
        wire::send_message_nowait(
            &self.sock,
            BACKEND_IOTLB_MSG,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &encode_miss(iova, perm),
        )?;
        self.awaiting.push_back((queue, iova));
        Ok(())
    }

    /// Reads what has arrived; once a reply is whole: the queue and IOVA of the MISS it answers,
    /// and the frontend's status (0 = handled).
    pub fn read_reply(&mut self) -> Result<Option<(usize, u64, u64)>, WireError> {
        let Some(msg) = self.reader.poll(&self.sock)? else {
            return Ok(None);
        };
        if msg.request != BACKEND_IOTLB_MSG || msg.payload.len() != 8 {
            log::warn!(
                "unexpected message {} ({} bytes) on the backend channel",
                msg.request,
                msg.payload.len()
            );
            return Ok(None);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&msg.payload);
        Ok(self
            .awaiting
            .pop_front()
            .map(|(q, iova)| (q, iova, u64::from_ne_bytes(b))))
    }
}
