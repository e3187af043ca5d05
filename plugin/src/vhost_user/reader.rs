//! Assembles one frontend message at a time from a non-blocking socket, so the VM's event loop
//! never waits on a frontend: each readiness event reads what has arrived (never past the end of
//! the current message) and the message is handed over once whole. Requests on the vhost-user
//! socket, or replies on the backend channel ([`MessageReader::replies`]).
//!
//! The per-message deadline is counted from the first byte of a message ([`MessageReader::started`]),
//! not per read: a frontend dripping one byte at a time cannot stretch a message beyond it. The
//! worker enforces it ([`super::slot`]).

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::wire::{self, Header, Message, WireError, HEADER_SIZE};

#[derive(Default)]
pub struct MessageReader {
    header: [u8; HEADER_SIZE],
    header_len: usize,
    /// Set once the header is complete and checked.
    parsed: Option<Header>,
    payload: Vec<u8>,
    fds: Vec<File>,
    /// When the first byte of the message in progress arrived.
    started: Option<Instant>,
    /// Reads replies (REPLY flag set) rather than requests.
    reply: bool,
}

impl MessageReader {
    /// A reader of replies (the backend channel), not requests.
    pub fn replies() -> MessageReader {
        MessageReader {
            reply: true,
            ..MessageReader::default()
        }
    }

    /// When the message in progress started arriving (`None` between messages).
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Reads what `sock` has without blocking. `Ok(Some)` hands over a whole message, `Ok(None)`
    /// means more bytes are needed (or none were there). EOF is [`WireError::Closed`], also in
    /// the middle of a message.
    pub fn poll(&mut self, sock: &UnixStream) -> Result<Option<Message>, WireError> {
        loop {
            let want = match self.parsed {
                None => HEADER_SIZE - self.header_len,
                Some(h) => h.size - self.payload.len(),
            };
            if want == 0 {
                return Ok(self.finish());
            }
            let mut chunk = vec![0u8; want];
            let (n, fds) = match wire::recv_with_fds(sock, &mut chunk, libc::MSG_DONTWAIT) {
                Ok(r) => r,
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            self.fds.extend(fds);
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.started.get_or_insert_with(Instant::now);
            match self.parsed {
                None => {
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
                    self.header_len += n;
                    if self.header_len == HEADER_SIZE {
                        let h = wire::parse_header(&self.header, self.reply)?;
                        self.payload = Vec::with_capacity(h.size);
                        self.parsed = Some(h);
                    }
                }
                Some(_) => self.payload.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The whole message; the reader starts over.
    fn finish(&mut self) -> Option<Message> {
        let h = self.parsed.take()?;
        self.header_len = 0;
        self.started = None;
        Some(Message {
            request: h.request,
            flags: h.flags,
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn request_bytes(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&request.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        b.extend_from_slice(payload);
        b
    }

    /// A message dribbled in one byte at a time is assembled whole, its start time kept from the
    /// first byte; the next message starts a fresh clock.
    #[test]
    fn assembles_a_dribbled_message_and_keeps_its_start() {
        let (mut front, back) = UnixStream::pair().unwrap();
        let mut r = MessageReader::default();
        assert!(r.poll(&back).unwrap().is_none());
        assert!(r.started().is_none(), "no byte yet, no clock");
        let bytes = request_bytes(24, &[7u8; 20]);
        let mut first = None;
        for (i, b) in bytes.iter().enumerate() {
            front.write_all(&[*b]).unwrap();
            let got = r.poll(&back).unwrap();
            if i == 0 {
                first = r.started();
                assert!(first.is_some());
            }
            if i + 1 < bytes.len() {
                assert!(
                    got.is_none(),
                    "complete after {} of {} bytes",
                    i + 1,
                    bytes.len()
                );
                assert_eq!(r.started(), first, "the clock restarted mid-message");
            } else {
                let m = got.expect("whole message");
                assert_eq!((m.request, m.flags), (24, 1));
                assert_eq!(m.payload, vec![7u8; 20]);
                assert!(r.started().is_none());
            }
        }
    }

    /// Two messages in one write come out one per poll, never mixed; fds stay with theirs.
    #[test]
    fn never_reads_past_a_message_and_keeps_fds() {
        let (front, back) = UnixStream::pair().unwrap();
        let mut both = request_bytes(1, &[]);
        both.extend(request_bytes(5, &[9u8; 8]));
        let file = std::fs::File::open("/dev/null").unwrap();
        wire::send_message(&front, 3, 1, &[], &[file.as_raw_fd()]).unwrap();
        (&front).write_all(&both).unwrap();
        let mut r = MessageReader::default();
        let m = r.poll(&back).unwrap().unwrap();
        assert_eq!((m.request, m.fds.len()), (3, 1));
        let m = r.poll(&back).unwrap().unwrap();
        assert_eq!((m.request, m.payload.len(), m.fds.len()), (1, 0, 0));
        let m = r.poll(&back).unwrap().unwrap();
        assert_eq!((m.request, m.payload), (5, vec![9u8; 8]));
        assert!(r.poll(&back).unwrap().is_none());
    }

    /// A reply reader takes replies and refuses requests.
    #[test]
    fn reply_reader_takes_replies_only() {
        let (front, back) = UnixStream::pair().unwrap();
        wire::send_message(
            &front,
            1,
            wire::FLAG_VERSION_1 | wire::FLAG_REPLY,
            &[0u8; 8],
            &[],
        )
        .unwrap();
        let mut r = MessageReader::replies();
        let m = r.poll(&back).unwrap().unwrap();
        assert_eq!((m.request, m.payload.len()), (1, 8));
        wire::send_message(&front, 1, wire::FLAG_VERSION_1, &[], &[]).unwrap();
        assert!(matches!(r.poll(&back), Err(WireError::BadFlags(1))));
    }

    /// EOF inside a message and a bad header are errors.
    #[test]
    fn eof_mid_message_and_bad_flags_are_errors() {
        let (mut front, back) = UnixStream::pair().unwrap();
        front.write_all(&request_bytes(1, &[0u8; 8])[..15]).unwrap();
        drop(front);
        let mut r = MessageReader::default();
        assert!(matches!(r.poll(&back), Err(WireError::Closed)));
        let (mut front, back) = UnixStream::pair().unwrap();
        let mut bad = request_bytes(1, &[]);
        bad[4] = 0x5; // REPLY on a request
        front.write_all(&bad).unwrap();
        let mut r = MessageReader::default();
        assert!(matches!(r.poll(&back), Err(WireError::BadFlags(5))));
    }
}
