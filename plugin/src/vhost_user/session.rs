//! One frontend connection: the vhost-user request handlers and the state they build (features,
//! memory table, rings). The device logic never parses vhost-user; it sees the rings and memory
//! this session exposes and the [`Changes`] each message caused.
//!
//! Reply rules (vhost-user spec "Communication"): a message with its own reply body (GET_*) gets
//! exactly that reply, always. Any other message gets a u64 ack (0 = success) when it carries
//! NEED_REPLY and REPLY_ACK was negotiated, and nothing otherwise. A refused request changes no
//! state. Framing errors and an IOTLB message in untranslated mode end the connection.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringState,
};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::features::{self, NUM_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_RING_F_EVENT_IDX};
use super::memory::{MemoryTable, RegionSpec, MAX_REGIONS};
use super::wire::{self, Message};
use crate::virtqueue::vring::{eventfd_from, Vring};

/// Kick/call/err payload: bits 0-7 the ring index, bit 8 "no fd".
const VRING_INDEX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;
/// Size of the vsock config space: `le64 guest_cid`.
const CONFIG_SPACE_SIZE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request is refused; the connection goes on.
    #[error("{0}")]
    Refused(String),
    /// The connection cannot go on.
    #[error("{0}")]
    Fatal(String),
}

fn refuse<T>(why: impl Into<String>) -> Result<T, SessionError> {
    Err(SessionError::Refused(why.into()))
}

/// What a handled message changed, for the worker to act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Some kick fd was added, replaced or dropped: re-register them.
    pub kicks: bool,
    /// Rings that may have become ready to process (bit per queue).
    pub queues_ready: u8,
    /// RESET_DEVICE / RESET_OWNER: connections must be dropped.
    pub reset: bool,
}

/// What the device configuration contributes to the session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub guest_cid: u64,
    pub max_queue_size: u16,
    pub seqpacket: bool,
}

pub struct FrontendSession {
    sock: UnixStream,
    config: SessionConfig,
    virtio_offer: u64,
    acked_features: Option<u64>,
    acked_protocol: u64,
    memory: MemoryTable,
    vrings: Vec<Vring>,
    backend_channel: Option<UnixStream>,
    changes: Changes,
}

impl FrontendSession {
    pub fn new(sock: UnixStream, config: SessionConfig) -> Result<FrontendSession, SessionError> {
        let vrings = (0..NUM_QUEUES)
            .map(|_| Vring::new(config.max_queue_size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SessionError::Fatal(e.to_string()))?;
        Ok(FrontendSession {
            sock,
            config,
            virtio_offer: features::virtio_offer(config.seqpacket),
            acked_features: None,
            acked_protocol: 0,
            memory: MemoryTable::default(),
            vrings,
            backend_channel: None,
            changes: Changes::default(),
        })
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    pub fn memory(&self) -> Option<&Arc<GuestMemoryMmap>> {
        self.memory.memory()
    }

    pub fn vring(&self, index: usize) -> Option<&Vring> {
        self.vrings.get(index)
    }

    /// Memory and rings together, for the device's data path.
    pub fn rings_mut(&mut self) -> (Option<&Arc<GuestMemoryMmap>>, &mut [Vring]) {
        (self.memory.memory(), &mut self.vrings)
    }

    /// Negotiated virtio features (0 before SET_FEATURES).
    pub fn acked_features(&self) -> u64 {
        self.acked_features.unwrap_or(0)
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Reads one message, handles it and sends its reply. `Err` means: drop this frontend.
    pub fn serve_one(&mut self) -> Result<(), SessionError> {
        let msg = wire::recv_message(&self.sock).map_err(|e| SessionError::Fatal(e.to_string()))?;
        let request = msg.request;
        let need_reply = msg.need_reply();
        let name = FrontendReq::try_from(request)
            .map(|r| format!("{r:?}"))
            .unwrap_or_else(|_| format!("#{request}"));
        log::debug!(
            "vhost-user request {name} flags={:#x} size={}",
            msg.flags,
            msg.payload.len()
        );
        match self.dispatch(msg) {
            Ok(Reply::Body(body)) => self.send(request, &body),
            Ok(Reply::Ack) => self.ack(request, need_reply, 0),
            Err(SessionError::Refused(why)) => {
                log::warn!("vhost-user {name} refused: {why}");
                self.ack(request, need_reply, 1)
            }
            Err(SessionError::Fatal(why)) => Err(SessionError::Fatal(format!("{name}: {why}"))),
        }
    }

    fn ack(&self, request: u32, need_reply: bool, value: u64) -> Result<(), SessionError> {
        if need_reply && self.acked_protocol & features::PROTOCOL_REPLY_ACK != 0 {
            self.send(request, VhostUserU64::new(value).as_slice())
        } else {
            Ok(())
        }
    }

    fn send(&self, request: u32, body: &[u8]) -> Result<(), SessionError> {
        wire::send_reply(&self.sock, request, body)
            .map_err(|e| SessionError::Fatal(format!("reply failed: {e}")))
    }

    fn dispatch(&mut self, msg: Message) -> Result<Reply, SessionError> {
        let Ok(req) = FrontendReq::try_from(msg.request) else {
            return refuse(format!("unknown request id {}", msg.request));
        };
        let p = &msg.payload;
        use FrontendReq as R;
        match req {
            R::GET_FEATURES => Ok(Reply::u64(self.virtio_offer)),
            R::SET_FEATURES => self.set_features(parse::<VhostUserU64>(p)?.value),
            R::GET_PROTOCOL_FEATURES => Ok(Reply::u64(features::protocol_offer())),
            R::SET_PROTOCOL_FEATURES => {
                let bits = parse::<VhostUserU64>(p)?.value;
                let extra = bits & !features::protocol_offer();
                if extra != 0 {
                    return refuse(format!(
                        "protocol feature bits not offered: {}",
                        features::describe(extra)
                    ));
                }
                self.acked_protocol = bits;
                Ok(Reply::Ack)
            }
            R::SET_OWNER => Ok(Reply::Ack),
            R::RESET_OWNER | R::RESET_DEVICE => {
                self.reset_device();
                Ok(Reply::Ack)
            }
            R::GET_QUEUE_NUM => Ok(Reply::u64(NUM_QUEUES as u64)),
            R::GET_MAX_MEM_SLOTS => Ok(Reply::u64(MAX_REGIONS as u64)),
            R::SET_MEM_TABLE => self.set_mem_table(p, msg.fds),
            R::ADD_MEM_REG => {
                let region = parse::<VhostUserSingleMemoryRegion>(p)?;
                let file = exactly_one_fd(msg.fds)?;
                self.memory
                    .add(region_spec(&region), file)
                    .map_err(|e| SessionError::Refused(e.to_string()))?;
                self.changes.queues_ready = 0xff;
                Ok(Reply::Ack)
            }
            R::REM_MEM_REG => {
                // Any fd sent along is closed when `msg.fds` drops.
                let region = parse::<VhostUserSingleMemoryRegion>(p)?;
                self.memory
                    .remove(&region_spec(&region))
                    .map_err(|e| SessionError::Refused(e.to_string()))?;
                Ok(Reply::Ack)
            }
            R::SET_VRING_NUM => {
                let s = parse::<VhostUserVringState>(p)?;
                let num = s.num;
                self.vring_mut(s.index)?
                    .set_num(num)
                    .map_err(|e| SessionError::Refused(e.to_string()))?;
                Ok(Reply::Ack)
            }
            R::SET_VRING_ADDR => self.set_vring_addr(parse::<VhostUserVringAddr>(p)?),
            R::SET_VRING_BASE => {
                let s = parse::<VhostUserVringState>(p)?;
                let base = u16::try_from(s.num)
                    .or_else(|_| refuse(format!("vring base {} out of range", { s.num })))?;
                self.vring_mut(s.index)?.set_base(base);
                Ok(Reply::Ack)
            }
            R::GET_VRING_BASE => {
                let s = parse::<VhostUserVringState>(p)?;
                let index = s.index;
                let vring = self
                    .vring_mut(index)
                    .map_err(|e| SessionError::Fatal(e.to_string()))?;
                let base = vring.stop();
                self.changes.kicks = true;
                Ok(Reply::Body(
                    VhostUserVringState::new(index, base as u32)
                        .as_slice()
                        .to_vec(),
                ))
            }
            R::SET_VRING_KICK => {
                let (index, fd) = self.vring_fd(p, msg.fds)?;
                let Some(fd) = fd else {
                    return refuse("polling mode (no kick fd) is not supported");
                };
                let mem = self.memory.memory().cloned();
                let vring = &mut self.vrings[index];
                vring.set_kick(Some(eventfd_from(fd)));
                let Some(mem) = mem else {
                    return refuse("SET_VRING_KICK before SET_MEM_TABLE");
                };
                vring
                    .start(mem.as_ref())
                    .map_err(|e| SessionError::Refused(format!("vring {index}: {e}")))?;
                self.changes.kicks = true;
                self.changes.queues_ready |= 1 << index;
                Ok(Reply::Ack)
            }
            R::SET_VRING_CALL => {
                let (index, fd) = self.vring_fd(p, msg.fds)?;
                self.vrings[index].set_call(fd.map(eventfd_from));
                Ok(Reply::Ack)
            }
            R::SET_VRING_ERR => {
                let (index, fd) = self.vring_fd(p, msg.fds)?;
                self.vrings[index].set_err(fd.map(eventfd_from));
                Ok(Reply::Ack)
            }
            R::SET_VRING_ENABLE => {
                if self.acked_features() & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
                    return refuse("SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated");
                }
                let s = parse::<VhostUserVringState>(p)?;
                let on = match s.num {
                    0 => false,
                    1 => true,
                    n => return refuse(format!("SET_VRING_ENABLE value {n} is not 0 or 1")),
                };
                let index = s.index;
                self.vring_mut(index)?.set_enabled(on);
                self.changes.queues_ready |= 1 << index;
                Ok(Reply::Ack)
            }
            R::GET_CONFIG => self.get_config(p),
            R::SET_CONFIG => refuse("the vsock config space is read-only"),
            R::SET_BACKEND_REQ_FD => {
                let file = exactly_one_fd(msg.fds)?;
                // Kept for the backend channel; nothing is sent on it unless BACKEND_REQ is offered.
                self.backend_channel = Some(UnixStream::from(std::os::fd::OwnedFd::from(file)));
                Ok(Reply::Ack)
            }
            R::IOTLB_MSG => Err(SessionError::Fatal(
                "IOTLB_MSG received but IOTLB translation is not enabled on this device".into(),
            )),
            other => refuse(format!("{other:?} is not supported by this device")),
        }
    }

    fn set_features(&mut self, bits: u64) -> Result<Reply, SessionError> {
        let extra = bits & !self.virtio_offer;
        if extra != 0 {
            return refuse(format!(
                "feature bits not offered: {} (offered {:#x}); refusing rather than running with a different contract",
                features::describe(extra),
                self.virtio_offer
            ));
        }
        self.acked_features = Some(bits);
        let event_idx = bits & VIRTIO_RING_F_EVENT_IDX != 0;
        for vring in &mut self.vrings {
            vring.set_event_idx(event_idx);
            if bits & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
                // Without PROTOCOL_FEATURES rings are enabled as soon as features are set.
                vring.set_enabled(true);
            }
        }
        self.changes.queues_ready = 0xff;
        Ok(Reply::Ack)
    }

    fn set_mem_table(&mut self, p: &[u8], fds: Vec<File>) -> Result<Reply, SessionError> {
        let head_len = std::mem::size_of::<VhostUserMemory>();
        let region_len = std::mem::size_of::<VhostUserMemoryRegion>();
        if p.len() < head_len {
            return refuse(format!(
                "SET_MEM_TABLE payload of {} bytes is too short",
                p.len()
            ));
        }
        let head = parse::<VhostUserMemory>(&p[..head_len])?;
        let n = head.num_regions as usize;
        if n == 0 || n > MAX_REGIONS {
            return refuse(format!(
                "SET_MEM_TABLE with {n} regions (1..={MAX_REGIONS} allowed)"
            ));
        }
        if p.len() != head_len + n * region_len {
            return refuse(format!(
                "SET_MEM_TABLE: {n} regions need {} bytes, got {}",
                head_len + n * region_len,
                p.len()
            ));
        }
        if fds.len() != n {
            return refuse(format!("SET_MEM_TABLE: {n} regions but {} fds", fds.len()));
        }
        let specs = p[head_len..]
            .chunks_exact(region_len)
            .zip(fds)
            .map(|(chunk, file)| Ok((region_spec(&parse::<VhostUserMemoryRegion>(chunk)?), file)))
            .collect::<Result<Vec<_>, SessionError>>()?;
        self.memory
            .set_all(specs)
            .map_err(|e| SessionError::Refused(e.to_string()))?;
        self.changes.queues_ready = 0xff;
        Ok(Reply::Ack)
    }

    fn set_vring_addr(&mut self, a: VhostUserVringAddr) -> Result<Reply, SessionError> {
        let index = a.index;
        let (desc, used, avail, flags) = (a.descriptor, a.used, a.available, a.flags);
        if flags & !1 != 0 {
            return refuse(format!("vring {index}: unknown address flags {flags:#x}"));
        }
        self.vring_mut(index)?;
        // Ring addresses are frontend virtual addresses; map them to guest-physical ones. The
        // full ring extents are checked against guest memory when the ring starts.
        let mut gpas = [0u64; 3];
        for (gpa, (va, what)) in gpas.iter_mut().zip([
            (desc, "descriptor table"),
            (avail, "avail ring"),
            (used, "used ring"),
        ]) {
            *gpa = self.memory.va_to_gpa(va, 1).ok_or_else(|| {
                SessionError::Refused(format!(
                    "vring {index}: {what} address {va:#x} is not in the memory table"
                ))
            })?;
        }
        self.vrings[index as usize]
            .set_addresses(gpas[0], gpas[1], gpas[2])
            .map_err(|e| SessionError::Refused(format!("vring {index}: {e}")))?;
        Ok(Reply::Ack)
    }

    fn get_config(&self, p: &[u8]) -> Result<Reply, SessionError> {
        let head_len = std::mem::size_of::<VhostUserConfig>();
        if p.len() < head_len {
            return Err(SessionError::Fatal(format!(
                "GET_CONFIG payload of {} bytes is too short",
                p.len()
            )));
        }
        let head = parse::<VhostUserConfig>(&p[..head_len])?;
        let (offset, size, flags) = (head.offset, head.size, head.flags);
        let space = self.config.guest_cid.to_le_bytes();
        let in_range = p.len() == head_len + size as usize
            && offset
                .checked_add(size)
                .is_some_and(|end| end <= CONFIG_SPACE_SIZE)
            && size > 0;
        let mut body = Vec::with_capacity(head_len + size as usize);
        if in_range {
            body.extend_from_slice(
                VhostUserConfig {
                    offset,
                    size,
                    flags,
                }
                .as_slice(),
            );
            body.extend_from_slice(&space[offset as usize..(offset + size) as usize]);
        } else {
            log::warn!("GET_CONFIG offset {offset} size {size} is outside the {CONFIG_SPACE_SIZE}-byte config space");
            body.extend_from_slice(
                VhostUserConfig {
                    offset,
                    size: 0,
                    flags,
                }
                .as_slice(),
            );
        }
        Ok(Reply::Body(body))
    }

    fn reset_device(&mut self) {
        for vring in &mut self.vrings {
            vring.reset();
        }
        self.acked_features = None;
        self.changes.kicks = true;
        self.changes.reset = true;
    }

    fn vring_mut(&mut self, index: u32) -> Result<&mut Vring, SessionError> {
        self.vrings.get_mut(index as usize).ok_or_else(|| {
            SessionError::Refused(format!(
                "vring index {index} out of range (this device has {NUM_QUEUES})"
            ))
        })
    }

    /// Parses a kick/call/err payload: the ring index and the fd, unless the "no fd" bit is set.
    fn vring_fd(
        &mut self,
        p: &[u8],
        mut fds: Vec<File>,
    ) -> Result<(usize, Option<File>), SessionError> {
        let v = parse::<VhostUserU64>(p)?.value;
        if v & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
            return refuse(format!("reserved bits set in vring fd payload {v:#x}"));
        }
        let index = (v & VRING_INDEX_MASK) as u32;
        self.vring_mut(index)?;
        let nofd = v & VRING_NOFD != 0;
        match (nofd, fds.len()) {
            (true, 0) => Ok((index as usize, None)),
            (false, 1) => Ok((index as usize, fds.pop())),
            (nofd, n) => refuse(format!(
                "vring {index}: {n} fds with the no-fd flag {}",
                if nofd { "set" } else { "clear" }
            )),
        }
    }
}

enum Reply {
    /// The message has its own reply body.
    Body(Vec<u8>),
    /// An ack (sent only if asked for and REPLY_ACK is negotiated).
    Ack,
}

impl Reply {
    fn u64(v: u64) -> Reply {
        Reply::Body(VhostUserU64::new(v).as_slice().to_vec())
    }
}

/// Decodes a fixed-size payload; any other length is refused.
fn parse<T: ByteValued + Default>(p: &[u8]) -> Result<T, SessionError> {
    let mut v = T::default();
    if p.len() != std::mem::size_of::<T>() {
        return refuse(format!(
            "payload is {} bytes, expected {}",
            p.len(),
            std::mem::size_of::<T>()
        ));
    }
    v.as_mut_slice().copy_from_slice(p);
    Ok(v)
}

fn exactly_one_fd(mut fds: Vec<File>) -> Result<File, SessionError> {
    match (fds.pop(), fds.is_empty()) {
        (Some(f), true) => Ok(f),
        _ => refuse("expected exactly one fd"),
    }
}

fn region_spec(r: &VhostUserMemoryRegion) -> RegionSpec {
    RegionSpec {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        userspace_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}
