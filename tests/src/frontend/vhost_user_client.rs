//! A vhost-user frontend (the VMM's side) over a Unix stream socket.
//!
//! Messages are a 12-byte header (`u32 request, u32 flags, u32 size`, native order) and a payload;
//! fds travel as SCM_RIGHTS on the same `sendmsg`. Payloads are encoded with the `vhost` crate's
//! message structs. [`VhostUserClient::send_raw`] sends anything, for malformed-input tests.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vm_memory::ByteValued;

use super::guest_memory::GuestMemory;

/// Header flag: version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the frontend wants an ack.
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Virtio feature bits.
pub const F_SEQPACKET: u64 = 1 << 1;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Protocol feature bits.
pub const PF_MQ: u64 = 1 << 0;
pub const PF_REPLY_ACK: u64 = 1 << 3;
pub const PF_BACKEND_REQ: u64 = 1 << 5;
pub const PF_CONFIG: u64 = 1 << 9;
pub const PF_RESET_DEVICE: u64 = 1 << 13;
pub const PF_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
pub const PF_STATUS: u64 = 1 << 16;
pub const PF_DEVICE_STATE: u64 = 1 << 19;

/// "No fd" bit of the kick/call/err u64 payload.
pub const VRING_NOFD: u64 = 1 << 8;

/// A message received from the backend.
#[derive(Debug, Clone)]
pub struct Reply {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as a u64, if it is exactly 8 bytes.
    pub fn u64(&self) -> Option<u64> {
        (self.payload.len() == 8).then(|| u64::from_ne_bytes(self.payload[..8].try_into().unwrap()))
    }
}

/// Everything the frontend needs to hand one vring to the backend.
#[derive(Debug, Clone, Copy)]
pub struct VringSetup {
    pub index: u32,
    pub size: u16,
    /// Frontend virtual addresses of the three ring parts.
    pub desc_va: u64,
    pub avail_va: u64,
    pub used_va: u64,
    pub kick: RawFd,
    pub call: RawFd,
    pub err: Option<RawFd>,
}

/// What a handshake negotiated.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub offered_features: u64,
    pub features: u64,
    pub offered_protocol_features: u64,
    pub protocol_features: u64,
    pub queue_num: u64,
    pub max_mem_slots: Option<u64>,
    /// The config bytes from GET_CONFIG (offset 0, size 8), when the handshake reads them.
    pub config: Option<Vec<u8>>,
    /// The ack of SET_BACKEND_REQ_FD, when sent with NEED_REPLY.
    pub backend_req_ack: Option<u64>,
}

/// When the handshakes send SET_BACKEND_REQ_FD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendReqFd {
    /// Only if BACKEND_REQ was negotiated (what QEMU and crosvm do).
    IfNegotiated,
    /// Always (the brief's literal order).
    Always,
    Never,
}

/// Knobs of [`VhostUserClient::handshake_qemu`].
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Protocol features QEMU knows and would accept (intersected with the offer).
    pub protocol_mask: u64,
    /// Virtio features the "guest" acks (intersected with the offer).
    pub features_mask: u64,
    pub backend_req_fd: BackendReqFd,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            // QEMU knows bits 0..=19; by default leave out CONFIGURE_MEM_SLOTS so the memory table
            // goes as one SET_MEM_TABLE, as in the trace of vhost-user.md §7.
            protocol_mask: 0xf_ffff & !PF_CONFIGURE_MEM_SLOTS,
            features_mask: F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES | F_SEQPACKET,
            backend_req_fd: BackendReqFd::IfNegotiated,
        }
    }
}

/// Knobs of [`VhostUserClient::handshake_crosvm`].
#[derive(Debug, Clone)]
pub struct CrosvmOptions {
    /// Protocol features crosvm allows (intersected with the offer).
    pub protocol_mask: u64,
    pub features_mask: u64,
    pub backend_req_fd: BackendReqFd,
}

impl Default for CrosvmOptions {
    fn default() -> Self {
        CrosvmOptions {
            protocol_mask: PF_CONFIG | PF_MQ | PF_BACKEND_REQ | PF_DEVICE_STATE | PF_REPLY_ACK,
            features_mask: F_VERSION_1 | F_EVENT_IDX | F_PROTOCOL_FEATURES | F_SEQPACKET,
            backend_req_fd: BackendReqFd::IfNegotiated,
        }
    }
}

/// The frontend end of a vhost-user connection.
pub struct VhostUserClient {
    sock: UnixStream,
    /// REPLY_ACK negotiated: NEED_REPLY messages get a u64 ack.
    pub reply_ack: bool,
    /// Default time to wait for a reply.
    pub timeout: Duration,
    /// The other end of the SET_BACKEND_REQ_FD socketpair, when one was sent.
    pub backend_channel: Option<UnixStream>,
}

fn io_err(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl VhostUserClient {
    /// Connects to the backend's socket, retrying for up to 5 s while it is not there yet.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => return Ok(Self::from_stream(sock)),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn from_stream(sock: UnixStream) -> Self {
        VhostUserClient {
            sock,
            reply_ack: false,
            timeout: Duration::from_secs(5),
            backend_channel: None,
        }
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.sock
    }

    /// Sends a header with an explicit `size` field followed by `payload` (which may disagree with
    /// `size`) and `fds` as SCM_RIGHTS.
    pub fn send_raw_sized(
        &self,
        request: u32,
        flags: u32,
        size: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(12 + payload.len());
        buf.extend_from_slice(&request.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&size.to_ne_bytes());
        buf.extend_from_slice(payload);
        send_with_fds(self.sock.as_raw_fd(), &buf, fds)
    }

    /// Sends one message: header (size = payload length), payload, fds.
    pub fn send_raw(
        &self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        self.send_raw_sized(request, flags, payload.len() as u32, payload, fds)
    }

    /// Receives one message from the backend within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Reply> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr)?;
        let request = u32::from_ne_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_ne_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_ne_bytes(hdr[8..12].try_into().unwrap());
        if size > 0x10_0000 {
            return Err(io_err(format!(
                "reply to {request} announces {size} payload bytes"
            )));
        }
        let mut payload = vec![0u8; size as usize];
        self.sock.read_exact(&mut payload)?;
        Ok(Reply {
            request,
            flags,
            payload,
        })
    }

    /// Receives one reply (default timeout).
    pub fn recv(&mut self) -> io::Result<Reply> {
        self.recv_timeout(self.timeout)
    }

    /// Receives the reply to `req` and checks its header (request id, flags 0x5).
    pub fn recv_reply_to(&mut self, req: FrontendReq) -> io::Result<Reply> {
        let r = self.recv()?;
        if r.request != req as u32 || r.flags != (FLAG_VERSION | FLAG_REPLY) {
            return Err(io_err(format!(
                "expected reply to {req:?} ({}), flags 0x5; got request {} flags {:#x} payload {:02x?}",
                req as u32, r.request, r.flags, r.payload
            )));
        }
        Ok(r)
    }

    /// Checks that no message arrives from the backend within `wait` (and the socket is open).
    /// Returns the unexpected message, if any.
    pub fn pending_message(&mut self, wait: Duration) -> Option<io::Result<Reply>> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if n <= 0 {
            return None;
        }
        Some(self.recv_timeout(Duration::from_millis(500)))
    }

    /// True when the backend closed the connection (EOF or reset) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.sock.set_read_timeout(Some(left));
            let mut b = [0u8; 256];
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    fn flags(need_reply: bool) -> u32 {
        if need_reply {
            FLAG_VERSION | FLAG_NEED_REPLY
        } else {
            FLAG_VERSION
        }
    }

    /// Sends a request with a payload; with `need_reply`, waits for and returns the u64 ack.
    pub fn request<T: ByteValued>(
        &mut self,
        req: FrontendReq,
        body: &T,
        fds: &[RawFd],
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.request_bytes(req, body.as_slice(), fds, need_reply)
    }

    /// As [`Self::request`], with a raw payload.
    pub fn request_bytes(
        &mut self,
        req: FrontendReq,
        payload: &[u8],
        fds: &[RawFd],
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.send_raw(req as u32, Self::flags(need_reply), payload, fds)?;
        if !need_reply {
            return Ok(None);
        }
        let r = self.recv_reply_to(req)?;
        r.u64().map(Some).ok_or_else(|| {
            io_err(format!(
                "ack to {req:?} has {} payload bytes: {:02x?}",
                r.payload.len(),
                r.payload
            ))
        })
    }

    /// Sends a request and fails unless the ack (when `need_reply`) is 0.
    pub fn request_ok<T: ByteValued>(
        &mut self,
        req: FrontendReq,
        body: &T,
        fds: &[RawFd],
        need_reply: bool,
    ) -> io::Result<()> {
        match self.request(req, body, fds, need_reply)? {
            Some(0) | None => Ok(()),
            Some(v) => Err(io_err(format!("{req:?} acked with {v:#x}"))),
        }
    }

    /// A GET_* request without payload whose reply is a u64.
    pub fn get_u64(&mut self, req: FrontendReq) -> io::Result<u64> {
        self.send_raw(req as u32, FLAG_VERSION, &[], &[])?;
        let r = self.recv_reply_to(req)?;
        r.u64().ok_or_else(|| {
            io_err(format!(
                "{req:?} reply has {} bytes: {:02x?}",
                r.payload.len(),
                r.payload
            ))
        })
    }

    pub fn get_features(&mut self) -> io::Result<u64> {
        self.get_u64(FrontendReq::GET_FEATURES)
    }
    pub fn get_protocol_features(&mut self) -> io::Result<u64> {
        self.get_u64(FrontendReq::GET_PROTOCOL_FEATURES)
    }
    pub fn get_queue_num(&mut self) -> io::Result<u64> {
        self.get_u64(FrontendReq::GET_QUEUE_NUM)
    }
    pub fn get_max_mem_slots(&mut self) -> io::Result<u64> {
        self.get_u64(FrontendReq::GET_MAX_MEM_SLOTS)
    }

    pub fn set_owner(&mut self, need_reply: bool) -> io::Result<Option<u64>> {
        self.request_bytes(FrontendReq::SET_OWNER, &[], &[], need_reply)
    }

    pub fn set_features(&mut self, features: u64, need_reply: bool) -> io::Result<Option<u64>> {
        self.request(
            FrontendReq::SET_FEATURES,
            &VhostUserU64::new(features),
            &[],
            need_reply,
        )
    }

    pub fn set_protocol_features(
        &mut self,
        features: u64,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        let r = self.request(
            FrontendReq::SET_PROTOCOL_FEATURES,
            &VhostUserU64::new(features),
            &[],
            need_reply,
        )?;
        if r.unwrap_or(0) == 0 {
            self.reply_ack = features & PF_REPLY_ACK != 0;
        }
        Ok(r)
    }

    /// The SET_MEM_TABLE payload for `mem` (all regions, one fd each).
    pub fn mem_table_payload(mem: &GuestMemory) -> (Vec<u8>, Vec<RawFd>) {
        let mut payload = VhostUserMemory::new(mem.regions().len() as u32)
            .as_slice()
            .to_vec();
        let mut fds = Vec::new();
        for r in mem.regions() {
            let region = VhostUserMemoryRegion::new(r.gpa, r.size, r.frontend_va(), 0);
            payload.extend_from_slice(region.as_slice());
            fds.push(r.fd());
        }
        (payload, fds)
    }

    pub fn set_mem_table(
        &mut self,
        mem: &GuestMemory,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        let (payload, fds) = Self::mem_table_payload(mem);
        self.request_bytes(FrontendReq::SET_MEM_TABLE, &payload, &fds, need_reply)
    }

    /// ADD_MEM_REG for every region (CONFIGURE_MEM_SLOTS).
    pub fn add_mem_regions(&mut self, mem: &GuestMemory, need_reply: bool) -> io::Result<()> {
        for r in mem.regions() {
            let body = VhostUserSingleMemoryRegion::new(r.gpa, r.size, r.frontend_va(), 0);
            match self.request(FrontendReq::ADD_MEM_REG, &body, &[r.fd()], need_reply)? {
                Some(0) | None => {}
                Some(v) => return Err(io_err(format!("ADD_MEM_REG acked with {v:#x}"))),
            }
        }
        Ok(())
    }

    pub fn set_vring_num(
        &mut self,
        index: u32,
        num: u32,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.request(
            FrontendReq::SET_VRING_NUM,
            &VhostUserVringState::new(index, num),
            &[],
            need_reply,
        )
    }

    pub fn set_vring_base(
        &mut self,
        index: u32,
        base: u32,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.request(
            FrontendReq::SET_VRING_BASE,
            &VhostUserVringState::new(index, base),
            &[],
            need_reply,
        )
    }

    pub fn set_vring_addr(&mut self, v: &VringSetup, need_reply: bool) -> io::Result<Option<u64>> {
        let addr = VhostUserVringAddr::new(
            v.index,
            VhostUserVringAddrFlags::empty(),
            v.desc_va,
            v.used_va,
            v.avail_va,
            0,
        );
        self.request(FrontendReq::SET_VRING_ADDR, &addr, &[], need_reply)
    }

    fn set_vring_fd(
        &mut self,
        req: FrontendReq,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        let (v, fds): (u64, Vec<RawFd>) = match fd {
            Some(fd) => (index as u64, vec![fd]),
            None => (index as u64 | VRING_NOFD, vec![]),
        };
        self.request(req, &VhostUserU64::new(v), &fds, need_reply)
    }

    pub fn set_vring_kick(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.set_vring_fd(FrontendReq::SET_VRING_KICK, index, fd, need_reply)
    }
    pub fn set_vring_call(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.set_vring_fd(FrontendReq::SET_VRING_CALL, index, fd, need_reply)
    }
    pub fn set_vring_err(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.set_vring_fd(FrontendReq::SET_VRING_ERR, index, fd, need_reply)
    }

    pub fn set_vring_enable(
        &mut self,
        index: u32,
        enable: bool,
        need_reply: bool,
    ) -> io::Result<Option<u64>> {
        self.request(
            FrontendReq::SET_VRING_ENABLE,
            &VhostUserVringState::new(index, enable as u32),
            &[],
            need_reply,
        )
    }

    /// GET_VRING_BASE: stops the ring; returns the (index, next avail) reply.
    pub fn get_vring_base(&mut self, index: u32) -> io::Result<(u32, u32)> {
        self.send_raw(
            FrontendReq::GET_VRING_BASE as u32,
            FLAG_VERSION,
            VhostUserVringState::new(index, 0).as_slice(),
            &[],
        )?;
        let r = self.recv_reply_to(FrontendReq::GET_VRING_BASE)?;
        if r.payload.len() != 8 {
            return Err(io_err(format!("GET_VRING_BASE reply {:02x?}", r.payload)));
        }
        Ok((
            u32::from_ne_bytes(r.payload[0..4].try_into().unwrap()),
            u32::from_ne_bytes(r.payload[4..8].try_into().unwrap()),
        ))
    }

    /// GET_CONFIG(offset, size): returns the whole reply (header 12 bytes + data).
    pub fn get_config_raw(
        &mut self,
        offset: u32,
        size: u32,
        need_reply: bool,
    ) -> io::Result<Reply> {
        let mut payload = VhostUserConfig::new(offset, size, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        payload.resize(12 + size as usize, 0);
        self.send_raw(
            FrontendReq::GET_CONFIG as u32,
            Self::flags(need_reply),
            &payload,
            &[],
        )?;
        self.recv_reply_to(FrontendReq::GET_CONFIG)
    }

    /// GET_CONFIG(offset, size): returns the data bytes after checking the reply's config header.
    pub fn get_config(&mut self, offset: u32, size: u32) -> io::Result<Vec<u8>> {
        let r = self.get_config_raw(offset, size, false)?;
        if r.payload.len() != 12 + size as usize {
            return Err(io_err(format!(
                "GET_CONFIG({offset},{size}) reply has {} bytes: {:02x?}",
                r.payload.len(),
                r.payload
            )));
        }
        let off = u32::from_ne_bytes(r.payload[0..4].try_into().unwrap());
        let sz = u32::from_ne_bytes(r.payload[4..8].try_into().unwrap());
        if off != offset || sz != size {
            return Err(io_err(format!(
                "GET_CONFIG({offset},{size}) reply header says ({off},{sz})"
            )));
        }
        Ok(r.payload[12..].to_vec())
    }

    /// RESET_DEVICE (with NEED_REPLY when REPLY_ACK is negotiated).
    pub fn reset_device(&mut self) -> io::Result<Option<u64>> {
        let nr = self.reply_ack;
        self.request_bytes(FrontendReq::RESET_DEVICE, &[], &[], nr)
    }

    /// SET_BACKEND_REQ_FD with one end of a fresh socketpair; keeps the other end.
    pub fn set_backend_req_fd(&mut self, need_reply: bool) -> io::Result<Option<u64>> {
        let (ours, theirs) = UnixStream::pair()?;
        let r = self.request_bytes(
            FrontendReq::SET_BACKEND_REQ_FD,
            &[],
            &[theirs.as_raw_fd()],
            need_reply,
        )?;
        self.backend_channel = Some(ours);
        Ok(r)
    }

    fn setup_vring_qemu(&mut self, v: &VringSetup) -> io::Result<()> {
        self.set_vring_num(v.index, v.size as u32, false)?;
        self.set_vring_base(v.index, 0, false)?;
        self.set_vring_addr(v, false)?;
        self.set_vring_kick(v.index, Some(v.kick), false)?;
        Ok(())
    }

    /// QEMU 10's order (vhost-user.md §7): realize, then "driver OK". NEED_REPLY only on
    /// SET_BACKEND_REQ_FD, SET_MEM_TABLE and SET_VRING_ENABLE (when REPLY_ACK is negotiated).
    pub fn handshake_qemu(
        &mut self,
        mem: &GuestMemory,
        vrings: &[VringSetup],
        opts: &QemuOptions,
    ) -> io::Result<Negotiated> {
        // realize
        let mut n = Negotiated {
            offered_features: self.get_features()?,
            ..Default::default()
        };
        if n.offered_features & F_PROTOCOL_FEATURES == 0 {
            return Err(io_err(format!(
                "backend offers no PROTOCOL_FEATURES: {:#x}",
                n.offered_features
            )));
        }
        n.offered_protocol_features = self.get_protocol_features()?;
        n.protocol_features = n.offered_protocol_features & opts.protocol_mask;
        self.set_protocol_features(n.protocol_features, false)?;
        self.reply_ack = n.protocol_features & PF_REPLY_ACK != 0;
        if n.protocol_features & PF_MQ != 0 {
            n.queue_num = self.get_queue_num()?;
        }
        if n.protocol_features & PF_CONFIGURE_MEM_SLOTS != 0 {
            n.max_mem_slots = Some(self.get_max_mem_slots()?);
        }
        let send_req_fd = match opts.backend_req_fd {
            BackendReqFd::Always => true,
            BackendReqFd::IfNegotiated => n.protocol_features & PF_BACKEND_REQ != 0,
            BackendReqFd::Never => false,
        };
        if send_req_fd {
            n.backend_req_ack = self.set_backend_req_fd(self.reply_ack)?;
        }
        self.set_owner(false)?;
        self.get_features()?;
        for v in vrings {
            self.set_vring_call(v.index, Some(v.call), false)?;
            self.set_vring_err(v.index, v.err, false)?;
        }
        n.config = Some(self.get_config(0, 8)?);
        n.features = n.offered_features & opts.features_mask;
        self.qemu_driver_ok(mem, vrings, n.features, n.protocol_features)?;
        Ok(n)
    }

    /// The second half of QEMU's sequence ("driver OK"): SET_VRING_CALL (reverse order),
    /// SET_FEATURES, the memory table (SET_MEM_TABLE, or ADD_MEM_REG with CONFIGURE_MEM_SLOTS),
    /// per ring num/base/addr/kick, SET_VRING_ENABLE for each, SET_VRING_CALL again.
    pub fn qemu_driver_ok(
        &mut self,
        mem: &GuestMemory,
        vrings: &[VringSetup],
        features: u64,
        protocol_features: u64,
    ) -> io::Result<()> {
        for v in vrings.iter().rev() {
            self.set_vring_call(v.index, Some(v.call), false)?;
        }
        self.set_features(features, false)?;
        if protocol_features & PF_CONFIGURE_MEM_SLOTS != 0 {
            self.add_mem_regions(mem, self.reply_ack)?;
        } else {
            let nr = self.reply_ack;
            match self.set_mem_table(mem, nr)? {
                Some(0) | None => {}
                Some(v) => return Err(io_err(format!("SET_MEM_TABLE acked with {v:#x}"))),
            }
        }
        for v in vrings {
            self.setup_vring_qemu(v)?;
        }
        for v in vrings {
            let nr = self.reply_ack;
            match self.set_vring_enable(v.index, true, nr)? {
                Some(0) | None => {}
                Some(x) => {
                    return Err(io_err(format!(
                        "SET_VRING_ENABLE {} acked with {x:#x}",
                        v.index
                    )))
                }
            }
        }
        for v in vrings {
            self.set_vring_call(v.index, Some(v.call), false)?;
        }
        Ok(())
    }

    /// crosvm's order (vhost-user.md §8): SET_OWNER first, no NEED_REPLY anywhere, then at
    /// activation SET_FEATURES, SET_MEM_TABLE and per ring num/addr/base/call/kick/enable.
    pub fn handshake_crosvm(
        &mut self,
        mem: &GuestMemory,
        vrings: &[VringSetup],
        opts: &CrosvmOptions,
    ) -> io::Result<Negotiated> {
        self.set_owner(false)?;
        let mut n = Negotiated {
            offered_features: self.get_features()?,
            ..Default::default()
        };
        n.offered_protocol_features = self.get_protocol_features()?;
        n.protocol_features = n.offered_protocol_features & opts.protocol_mask;
        self.set_protocol_features(n.protocol_features, false)?;
        // crosvm may negotiate REPLY_ACK but never sets NEED_REPLY itself.
        let send_req_fd = match opts.backend_req_fd {
            BackendReqFd::Always => true,
            BackendReqFd::IfNegotiated => n.protocol_features & PF_BACKEND_REQ != 0,
            BackendReqFd::Never => false,
        };
        if send_req_fd {
            self.set_backend_req_fd(false)?;
        }
        n.queue_num = if n.protocol_features & PF_MQ != 0 {
            self.get_queue_num()?
        } else {
            3
        };
        // The guest reads the config space (a GET_CONFIG round trip each time).
        n.config = Some(self.get_config(0, 8)?);
        n.features = n.offered_features & opts.features_mask;
        self.activate_crosvm(mem, vrings, n.features)?;
        Ok(n)
    }

    /// crosvm's activation: SET_FEATURES, SET_MEM_TABLE, then per ring
    /// num/addr/base/call/(err)/kick/enable, no NEED_REPLY; ends with a GET_FEATURES round trip.
    /// Also what a frontend sends again after RESET_DEVICE.
    pub fn activate_crosvm(
        &mut self,
        mem: &GuestMemory,
        vrings: &[VringSetup],
        features: u64,
    ) -> io::Result<()> {
        self.set_features(features, false)?;
        self.set_mem_table(mem, false)?;
        for v in vrings {
            self.set_vring_num(v.index, v.size as u32, false)?;
            self.set_vring_addr(v, false)?;
            self.set_vring_base(v.index, 0, false)?;
            self.set_vring_call(v.index, Some(v.call), false)?;
            if let Some(err) = v.err {
                self.set_vring_err(v.index, Some(err), false)?;
            }
            self.set_vring_kick(v.index, Some(v.kick), false)?;
            self.set_vring_enable(v.index, true, false)?;
        }
        // A round trip proves the backend consumed everything above without closing.
        self.get_features()?;
        Ok(())
    }
}

/// `sendmsg` of `buf` with `fds` as SCM_RIGHTS.
pub fn send_with_fds(sock: RawFd, buf: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes, enough for one cmsg with fds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
    }
    let mut sent = 0usize;
    while sent < buf.len() || (buf.is_empty() && sent == 0) {
        if sent > 0 {
            // the fds went with the first chunk
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
            iov.iov_base = buf[sent..].as_ptr() as *mut libc::c_void;
            iov.iov_len = buf.len() - sent;
            msg.msg_iov = &mut iov;
        }
        // SAFETY: msg is fully initialised and points to live buffers.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
        if buf.is_empty() {
            break;
        }
    }
    Ok(())
}
