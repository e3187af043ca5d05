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
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserTransferDeviceState, VhostUserU64, VhostUserVringAddr,
    VhostUserVringState,
};
use vm_memory::ByteValued;

use super::backend_channel::BackendChannel;
use super::device_state::{self, DeviceStateChannel, Direction};
use super::features::{self, NUM_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_RING_F_EVENT_IDX};
use super::memory::{MemoryTable, RegionSpec, MAX_REGIONS};
use super::reader::MessageReader;
use super::slot::Activity;
use super::wire::{self, Message};
use crate::iotlb::message::{parse_request as parse_iotlb_request, IotlbRequest};
use crate::iotlb::policy::IotlbPolicy;
use crate::iotlb::{self, DeviceMemory};
use crate::snapshot::format::{self as state_format, SavedState};
use crate::virtqueue::vring::{eventfd_from, Vring};

/// Kick/call/err payload: bits 0-7 the ring index, bit 8 "no fd".
const VRING_INDEX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;
/// Size of the vsock config space: `le64 guest_cid`.
const CONFIG_SPACE_SIZE: u32 = 8;

pub use super::session_error::{FatalKind, Outcome, SessionError};

fn refuse<T>(why: impl Into<String>) -> Result<T, SessionError> {
    Err(SessionError::refused(why))
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
    /// The backend channel was (re)placed: watch its fd.
    pub backend_channel: bool,
}

/// What the device configuration contributes to the session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub guest_cid: u64,
    pub max_queue_size: u16,
    pub seqpacket: bool,
    pub iotlb: IotlbPolicy,
    pub iotlb_max_entries: usize,
    pub iotlb_miss_timeout: Duration,
}

pub struct FrontendSession {
    sock: UnixStream,
    config: SessionConfig,
    virtio_offer: u64,
    protocol_offer: u64,
    acked_features: Option<u64>,
    acked_protocol: u64,
    memory: MemoryTable,
    /// Guest RAM as the rings see it: behind the IOTLB when `translated`.
    mem: Arc<DeviceMemory>,
    translated: bool,
    vrings: Vec<Vring>,
    backend_channel: Option<BackendChannel>,
    changes: Changes,
    /// The message being received (the worker never blocks on the frontend).
    reader: MessageReader,
    /// What this frontend has done, for the slot policy.
    activity: Activity,
    /// The DEVICE_STATE transfer (see [`super::device_state`]).
    device_state: DeviceStateChannel,
    /// A loaded state CHECK_DEVICE_STATE accepted, for the worker to apply to the device.
    loaded: Option<SavedState>,
}

impl FrontendSession {
    pub fn new(sock: UnixStream, config: SessionConfig) -> Result<FrontendSession, SessionError> {
        let vrings = (0..NUM_QUEUES)
            .map(|_| Vring::new(config.max_queue_size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SessionError::resource)?;
        let mut virtio_offer = features::virtio_offer(config.seqpacket);
        let mut protocol_offer = features::protocol_offer();
        if config.iotlb.offers_access_platform() {
            virtio_offer |= features::VIRTIO_F_ACCESS_PLATFORM;
        }
        if config.iotlb.offers_backend_req() {
            protocol_offer |= features::PROTOCOL_BACKEND_REQ;
        }
        let mem = Arc::new(iotlb::new_device_memory(config.iotlb_max_entries));
        Ok(FrontendSession {
            sock,
            config,
            virtio_offer,
            protocol_offer,
            acked_features: None,
            acked_protocol: 0,
            memory: MemoryTable::default(),
            mem,
            translated: false,
            vrings,
            backend_channel: None,
            changes: Changes::default(),
            reader: MessageReader::default(),
            activity: Activity::new(Instant::now()),
            device_state: DeviceStateChannel::default(),
            loaded: None,
        })
    }

    /// What this frontend has sent so far (see [`super::slot`]).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// When the message being received started arriving (`None` between messages).
    pub fn message_started(&self) -> Option<Instant> {
        self.reader.started()
    }

    pub fn translated(&self) -> bool {
        self.translated
    }

    pub fn backend_channel(&self) -> Option<&BackendChannel> {
        self.backend_channel.as_ref()
    }

    /// Rebuilds the rings' view of memory after a table change or a translation switch. The
    /// IOTLB is flushed: its entries were resolved against the old table.
    fn rebuild_memory(&mut self) {
        let backend = self
            .memory
            .memory()
            .map(|m| (**m).clone())
            .unwrap_or_default();
        let mut mem = self.mem.with_replaced_backend(backend);
        mem.set_iommu_enabled(self.translated);
        mem.iommu().flush();
        self.mem = Arc::new(mem);
    }

    /// Why this session's guest memory can no longer be used (a contained SIGBUS: the frontend
    /// shrank a region's fd under the mapping). The worker drops the frontend when this is set.
    pub fn memory_fault(&mut self) -> Option<String> {
        self.memory.fault()
    }

    /// Sends the MISS of every queue that parked on an IOTLB hole.
    pub fn send_pending_misses(&mut self) {
        for (q, vring) in self.vrings.iter_mut().enumerate() {
            let Some(p) = vring.parked().copied() else {
                continue;
            };
            if p.miss_sent || !vring.is_started() {
                continue;
            }
            let sent = match &mut self.backend_channel {
                Some(ch) => ch
                    .send_miss(q, p.fail.iova, p.fail.access)
                    .map_err(|e| e.to_string()),
                None => Err("no backend channel".to_string()),
            };
            match sent {
                Ok(()) => vring.miss_sent(),
                Err(e) => vring.mark_broken(&format!("cannot send IOTLB MISS: {e}")),
            }
        }
    }

    /// The backend channel is readable: a MISS reply (or the frontend closed it).
    pub fn backend_readable(&mut self) -> Result<(), SessionError> {
        let Some(ch) = &mut self.backend_channel else {
            return Ok(());
        };
        match ch.read_reply() {
            Ok(Some((q, iova, status))) => {
                if let Some(v) = self.vrings.get_mut(q) {
                    v.miss_answered(iova, status);
                    self.changes.queues_ready |= 1 << q;
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.backend_channel = None;
                self.changes.backend_channel = true;
                for v in &mut self.vrings {
                    if v.parked().is_some() {
                        v.mark_broken("backend channel closed while a MISS was pending");
                    }
                }
                Err(SessionError::refused(format!("backend channel: {e}")))
            }
        }
    }

    /// Stops queues whose MISS went unanswered for too long.
    pub fn check_miss_timeouts(&mut self) -> bool {
        let now = Instant::now();
        let mut pending = false;
        for v in &mut self.vrings {
            v.check_miss_timeout(now, self.config.iotlb_miss_timeout);
            pending |= v.parked().is_some();
        }
        pending
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    pub fn vring(&self, index: usize) -> Option<&Vring> {
        self.vrings.get(index)
    }

    /// Memory and rings together, for the device's data path.
    pub fn rings_mut(&mut self) -> (Option<Arc<DeviceMemory>>, &mut [Vring]) {
        (
            self.memory.memory().map(|_| self.mem.clone()),
            &mut self.vrings,
        )
    }

    /// Negotiated protocol features.
    pub fn acked_protocol_features(&self) -> u64 {
        self.acked_protocol
    }

    /// Negotiated virtio features (0 before SET_FEATURES).
    pub fn acked_features(&self) -> u64 {
        self.acked_features.unwrap_or(0)
    }

    /// The configured guest CID (the config space).
    pub fn guest_cid(&self) -> u64 {
        self.config.guest_cid
    }

    /// The DEVICE_STATE transfer in progress, for the worker's pipe handling.
    pub fn device_state(&mut self) -> &mut DeviceStateChannel {
        &mut self.device_state
    }

    /// A state CHECK_DEVICE_STATE accepted, once (the worker applies it to the device).
    pub fn take_loaded_state(&mut self) -> Option<SavedState> {
        self.loaded.take()
    }

    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Reads one message (blocking until it is whole), handles it and sends its reply. `Err`
    /// means: drop this frontend.
    pub fn serve_one(&mut self) -> Result<(), SessionError> {
        let msg = wire::recv_message(&self.sock)?;
        self.handle_message(msg)
    }

    /// Reads what the frontend has sent without blocking, and handles the message once it is
    /// whole. `Ok(true)`: a message was handled. `Err` means: drop this frontend.
    pub fn serve_ready(&mut self) -> Result<bool, SessionError> {
        match self.reader.poll(&self.sock) {
            Ok(Some(msg)) => self.handle_message(msg).map(|()| true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one whole message and sends its reply.
    fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        self.activity.message(msg.request, Instant::now());
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
            Err(SessionError::Refused { reason }) => {
                log::warn!("vhost-user {name} refused: {reason}");
                self.ack(request, need_reply, 1)
            }
            Err(fatal) => Err(fatal.in_request(&name)),
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
        wire::send_reply(&self.sock, request, body).map_err(SessionError::reply)
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
            R::GET_PROTOCOL_FEATURES => Ok(Reply::u64(self.protocol_offer)),
            R::SET_PROTOCOL_FEATURES => {
                let bits = parse::<VhostUserU64>(p)?.value;
                let extra = bits & !self.protocol_offer;
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
                    .map_err(|e| SessionError::refused(e.to_string()))?;
                self.rebuild_memory();
                self.changes.queues_ready = 0xff;
                Ok(Reply::Ack)
            }
            R::REM_MEM_REG => {
                // Any fd sent along is closed when `msg.fds` drops.
                let region = parse::<VhostUserSingleMemoryRegion>(p)?;
                self.memory
                    .remove(&region_spec(&region))
                    .map_err(|e| SessionError::refused(e.to_string()))?;
                self.rebuild_memory();
                Ok(Reply::Ack)
            }
            R::SET_VRING_NUM => {
                let s = parse::<VhostUserVringState>(p)?;
                let num = s.num;
                self.vring_mut(s.index)?
                    .set_num(num)
                    .map_err(|e| SessionError::refused(e.to_string()))?;
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
                let vring = self.vring_mut(index).map_err(SessionError::resource)?;
                let base = vring.stop();
                self.changes.kicks = true;
                if self.vrings.iter().all(|v| !v.is_started()) {
                    // Suspended: QEMU forwards no unmaps while stopped, so nothing may survive.
                    self.mem.iommu().flush();
                }
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
                if self.translated
                    && (self.acked_protocol & features::PROTOCOL_REPLY_ACK == 0
                        || self.backend_channel.is_none())
                {
                    return refuse(
                        "IOTLB translation needs REPLY_ACK negotiated and a backend channel \
                         (SET_BACKEND_REQ_FD) before rings start",
                    );
                }
                if self.memory.memory().is_none() {
                    return refuse("SET_VRING_KICK before SET_MEM_TABLE");
                }
                let mem = self.mem.clone();
                let vring = &mut self.vrings[index];
                vring.set_kick(Some(eventfd_from(fd)));
                vring
                    .start(&mem)
                    .map_err(|e| SessionError::refused(format!("vring {index}: {e}")))?;
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
                // Used for IOTLB misses only; nothing is sent on it otherwise.
                self.backend_channel = Some(BackendChannel::new(UnixStream::from(
                    std::os::fd::OwnedFd::from(file),
                )));
                self.changes.backend_channel = true;
                Ok(Reply::Ack)
            }
            R::IOTLB_MSG => self.iotlb_msg(p),
            R::SET_DEVICE_STATE_FD => Ok(Reply::u64(match self.set_device_state_fd(p, msg.fds) {
                Ok(()) => device_state::REPLY_OK_NO_FD,
                Err(why) => {
                    log::warn!("SET_DEVICE_STATE_FD refused (nothing changed): {why}");
                    device_state::REPLY_FAILED_NO_FD
                }
            })),
            R::CHECK_DEVICE_STATE => Ok(Reply::u64(match self.check_device_state() {
                Ok(()) => 0,
                Err(why) => {
                    log::error!("CHECK_DEVICE_STATE: failed, nothing applied: {why}");
                    1
                }
            })),
            other => refuse(format!("{other:?} is not supported by this device")),
        }
    }

    /// SET_DEVICE_STATE_FD (rules in [`super::device_state`]). `Err`: refused, nothing changed.
    fn set_device_state_fd(&mut self, p: &[u8], fds: Vec<File>) -> Result<(), String> {
        if self.acked_protocol & features::PROTOCOL_DEVICE_STATE == 0 {
            return Err("DEVICE_STATE was not negotiated".into());
        }
        let m = parse::<VhostUserTransferDeviceState>(p).map_err(|e| e.to_string())?;
        let (direction, phase) = (m.direction, m.phase);
        let direction = match direction {
            0 => Direction::Save,
            1 => Direction::Load,
            d => return Err(format!("unknown transfer direction {d}")),
        };
        if phase != 0 {
            return Err(format!(
                "transfer phase {phase} (only 0, Stopped, is supported)"
            ));
        }
        if let Some(q) = self.vrings.iter().position(|v| v.is_started()) {
            return Err(format!(
                "ring {q} is started: the device must be stopped (GET_VRING_BASE) first"
            ));
        }
        let pipe = exactly_one_fd(fds).map_err(|e| e.to_string())?;
        self.device_state.begin(direction, pipe)?;
        log::info!("device-state {direction:?} started");
        Ok(())
    }

    /// CHECK_DEVICE_STATE: concludes the transfer; a load is decoded and checked here, before
    /// anything is applied.
    fn check_device_state(&mut self) -> Result<(), String> {
        let Some(bytes) = self.device_state.conclude()? else {
            log::info!("device-state save checked: complete");
            return Ok(());
        };
        let state = state_format::decode(&bytes, self.config.guest_cid, self.acked_features())
            .map_err(|e| format!("state of {} bytes refused: {e}", bytes.len()))?;
        self.loaded = Some(state);
        Ok(())
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
        self.translated = self.config.iotlb.translate(bits).or_else(refuse)?;
        if bits & features::VIRTIO_F_ACCESS_PLATFORM != 0 {
            log::info!(
                "ACCESS_PLATFORM negotiated; addresses are {}",
                if self.translated {
                    "IOVAs translated through the IOTLB"
                } else {
                    "untranslated (IOTLB off)"
                }
            );
        }
        self.rebuild_memory();
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
            .map_err(|e| SessionError::refused(e.to_string()))?;
        self.rebuild_memory();
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
        if self.translated {
            // IOVAs: checked against the IOTLB at access time, not now (it may be empty).
            let max = self.config.max_queue_size as u64;
            let fits = [(desc, 16 * max), (avail, 6 + 2 * max), (used, 6 + 8 * max)]
                .iter()
                .all(|&(a, l)| a.checked_add(l).is_some());
            if !fits {
                return refuse(format!("vring {index}: ring IOVA range overflows"));
            }
            self.vrings[index as usize]
                .set_addresses(desc, avail, used)
                .map_err(|e| SessionError::refused(format!("vring {index}: {e}")))?;
            return Ok(Reply::Ack);
        }
        // Ring addresses are frontend virtual addresses; map them to guest-physical ones. The
        // full ring extents are checked against guest memory when the ring starts.
        let mut gpas = [0u64; 3];
        for (gpa, (va, what)) in gpas.iter_mut().zip([
            (desc, "descriptor table"),
            (avail, "avail ring"),
            (used, "used ring"),
        ]) {
            *gpa = self.memory.va_to_gpa(va, 1).ok_or_else(|| {
                SessionError::refused(format!(
                    "vring {index}: {what} address {va:#x} is not in the memory table"
                ))
            })?;
        }
        self.vrings[index as usize]
            .set_addresses(gpas[0], gpas[1], gpas[2])
            .map_err(|e| SessionError::refused(format!("vring {index}: {e}")))?;
        Ok(Reply::Ack)
    }

    /// GET_CONFIG: the payload is a `VhostUserConfig` head followed by `size` bytes, and the reply
    /// has the same shape. `size` is frontend input (up to 4 GiB): it is checked against the
    /// payload length and the 8-byte config space before anything is allocated, so the reply is
    /// never larger than head + config space. Out of range: the head comes back with size 0.
    fn get_config(&self, p: &[u8]) -> Result<Reply, SessionError> {
        let head_len = std::mem::size_of::<VhostUserConfig>();
        if p.len() < head_len {
            return Err(SessionError::protocol(format!(
                "GET_CONFIG payload of {} bytes is too short",
                p.len()
            )));
        }
        let head = parse::<VhostUserConfig>(&p[..head_len])?;
        let (offset, size, flags) = (head.offset, head.size, head.flags);
        let space = self.config.guest_cid.to_le_bytes();
        let range = offset
            .checked_add(size)
            .filter(|&end| end <= CONFIG_SPACE_SIZE && size > 0)
            .filter(|_| p.len() - head_len == size as usize)
            .map(|end| offset as usize..end as usize);
        let Some(range) = range else {
            log::warn!("GET_CONFIG offset {offset} size {size} is outside the {CONFIG_SPACE_SIZE}-byte config space");
            let head = VhostUserConfig {
                offset,
                size: 0,
                flags,
            };
            return Ok(Reply::Body(head.as_slice().to_vec()));
        };
        let mut body = Vec::with_capacity(head_len + range.len());
        body.extend_from_slice(head.as_slice());
        body.extend_from_slice(&space[range]);
        Ok(Reply::Body(body))
    }

    /// IOTLB_MSG: only meaningful while translating. Otherwise the frontend believes we translate
    /// and we do not: answer non-zero and end the session (fail loudly, never run mismatched).
    fn iotlb_msg(&mut self, p: &[u8]) -> Result<Reply, SessionError> {
        if !self.translated {
            let _ = self.send(
                FrontendReq::IOTLB_MSG.into(),
                VhostUserU64::new(1).as_slice(),
            );
            return Err(SessionError::protocol(
                "IOTLB_MSG received but this session does not translate (iotlb=off, or ACCESS_PLATFORM \
                 not negotiated): the frontend expects translation; closing",
            ));
        }
        let status = match parse_iotlb_request(p).and_then(|req| self.apply_iotlb(req)) {
            Ok(()) => 0,
            Err(why) => {
                log::warn!("IOTLB message refused: {why}");
                1
            }
        };
        // IOTLB_MSG always gets a u64 reply, whatever REPLY_ACK says.
        Ok(Reply::u64(status))
    }

    fn apply_iotlb(&mut self, req: IotlbRequest) -> Result<(), String> {
        match req {
            IotlbRequest::Update {
                iova,
                size,
                uaddr,
                perm,
            } => {
                let pieces = self.memory.va_pieces(uaddr, size).ok_or_else(|| {
                    format!("UPDATE target {uaddr:#x}+{size:#x} is not inside the memory table")
                })?;
                let pieces: Vec<_> = pieces
                    .into_iter()
                    .map(|(off, gpa, len)| (iova + off, gpa, len))
                    .collect();
                self.mem.iommu().map(&pieces, perm);
                for v in &mut self.vrings {
                    v.iotlb_updated();
                }
                self.changes.queues_ready = 0xff;
            }
            IotlbRequest::Invalidate { iova, size } => {
                // Nothing built from the old mapping is alive: guest pointers never outlive one
                // call on this thread, which is the one handling this message.
                self.mem.iommu().invalidate(iova, size);
            }
        }
        Ok(())
    }

    fn reset_device(&mut self) {
        for vring in &mut self.vrings {
            vring.reset();
        }
        self.mem.iommu().flush();
        self.acked_features = None;
        self.changes.kicks = true;
        self.changes.reset = true;
    }

    fn vring_mut(&mut self, index: u32) -> Result<&mut Vring, SessionError> {
        self.vrings.get_mut(index as usize).ok_or_else(|| {
            SessionError::refused(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IotlbMode;
    use crate::testing::Rng;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};

    fn config(mode: IotlbMode) -> SessionConfig {
        SessionConfig {
            guest_cid: 3,
            max_queue_size: 256,
            seqpacket: true,
            iotlb: IotlbPolicy {
                mode,
                access_platform: false,
            },
            iotlb_max_entries: 16,
            iotlb_miss_timeout: Duration::from_millis(100),
        }
    }

    fn memfd(size: u64) -> File {
        // SAFETY: memfd_create with a valid C string; the fd is owned right away.
        let f =
            unsafe { File::from_raw_fd(libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC)) };
        f.set_len(size).unwrap();
        f
    }

    /// Random requests (valid ids with wrong, right and random payloads; random fds) never
    /// panic, and a fatal error only ends that session (a new one works at once).
    #[test]
    fn fuzz_random_requests_never_panic() {
        for mode in [IotlbMode::Off, IotlbMode::Required] {
            let mut rng = Rng::new(0x5eed ^ mode as u64);
            let (mut front, back) = UnixStream::pair().unwrap();
            let mut session = FrontendSession::new(back, config(mode)).unwrap();
            // REPLY_ACK so that acks are observable.
            let pf = (features::protocol_offer() | features::PROTOCOL_BACKEND_REQ).to_ne_bytes();
            wire::send_message(&front, 16, 1, &pf, &[]).unwrap();
            assert!(session.serve_one().is_ok());
            front.set_nonblocking(true).unwrap();
            let mem = memfd(0x40000);
            for i in 0..20_000 {
                let request = match rng.below(4) {
                    0 => rng.below(50) as u32,
                    _ => [
                        2, 5, 8, 9, 10, 11, 12, 13, 14, 18, 22, 24, 34, 37, 38, 42, 43,
                    ][rng.below(17) as usize],
                };
                let size = match rng.below(6) {
                    0 => 0,
                    1 => 8,
                    2 => 40,
                    3 => 8 + 32 * rng.below(4) as usize,
                    4 => 12 + rng.below(12) as usize,
                    _ => rng.below(300) as usize,
                };
                let mut payload = rng.bytes(size);
                if request == 5 && size >= 8 && rng.below(2) == 0 {
                    // A plausible memory table: one region mapping the memfd.
                    payload = Vec::new();
                    payload.extend_from_slice(&1u32.to_ne_bytes());
                    payload.extend_from_slice(&0u32.to_ne_bytes());
                    for v in [0u64, 0x40000, 0x7f00_0000_0000, 0] {
                        payload.extend_from_slice(&v.to_ne_bytes());
                    }
                }
                let fds: Vec<RawFd> = (0..rng.below(3)).map(|_| mem.as_raw_fd()).collect();
                let flags = if rng.below(2) == 0 { 0x9 } else { 0x1 };
                wire::send_message(&front, request, flags, &payload, &fds).unwrap();
                match session.serve_one() {
                    Ok(()) => {}
                    Err(SessionError::Refused { .. }) => {}
                    Err(SessionError::Fatal { .. }) => {
                        // The connection would be dropped: start a new one.
                        let (f, b) = UnixStream::pair().unwrap();
                        front = f;
                        session = FrontendSession::new(b, config(mode)).unwrap();
                        wire::send_message(&front, 16, 1, &pf, &[]).unwrap();
                        assert!(session.serve_one().is_ok(), "iteration {i}");
                        front.set_nonblocking(true).unwrap();
                        continue;
                    }
                }
                let mut sink = [0u8; 4096];
                while let Ok(n) = (&front).read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = session.take_changes();
            }
        }
    }

    /// F1 (fuzz finding): GET_CONFIG with size 0xfffffff0 and a 12-byte payload used to reserve
    /// head + size bytes (4 GiB) before checking size: an abort under a memory limit. The reply
    /// is the head with size 0, and nothing larger than head + config space is allocated.
    #[test]
    fn get_config_checks_size_before_allocating() {
        // The message as found: `18000000 01000000 0c000000 00000000 f0ffffff 00000000`.
        let found: [u8; 24] = [
            0x18, 0, 0, 0, 0x01, 0, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0xff, 0xff, 0xff, 0, 0,
            0, 0,
        ];
        let (_front, back) = UnixStream::pair().unwrap();
        let s = FrontendSession::new(back, config(IotlbMode::Off)).unwrap();
        let Ok(Reply::Body(body)) = s.get_config(&found[12..]) else {
            panic!("GET_CONFIG must get a reply body");
        };
        assert_eq!(body, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(
            body.capacity() <= 12 + 8,
            "reserved {} bytes",
            body.capacity()
        );
        // In range: the head and the guest CID bytes.
        let mut ok = vec![0u8; 12 + 8];
        ok[4] = 8;
        let Ok(Reply::Body(body)) = s.get_config(&ok) else {
            panic!("GET_CONFIG must get a reply body");
        };
        assert_eq!(&body[..12], &ok[..12]);
        assert_eq!(&body[12..], &3u64.to_le_bytes());
    }

    #[cfg(feature = "iotlb")]
    fn request(
        front: &UnixStream,
        session: &mut FrontendSession,
        req: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> u64 {
        wire::send_message(front, req, 0x9, payload, fds).unwrap();
        session.serve_one().unwrap();
        let reply = wire::recv_reply(front).unwrap();
        u64::from_ne_bytes(reply.payload[..8].try_into().unwrap())
    }

    /// T15: removing a region drops the IOTLB entries that pointed into it; an UPDATE targeting
    /// memory that is gone is refused.
    #[test]
    #[cfg(feature = "iotlb")]
    fn removing_a_region_flushes_its_iotlb_entries() {
        let (front, back) = UnixStream::pair().unwrap();
        let mut s = FrontendSession::new(back, config(IotlbMode::Required)).unwrap();
        let pf = features::protocol_offer() | features::PROTOCOL_BACKEND_REQ;
        assert_eq!(request(&front, &mut s, 16, &pf.to_ne_bytes(), &[]), 0);
        let f = features::virtio_offer(true) | features::VIRTIO_F_ACCESS_PLATFORM;
        assert_eq!(request(&front, &mut s, 2, &f.to_ne_bytes(), &[]), 0);
        assert!(s.translated());
        let mem = memfd(0x10000);
        let region: Vec<u8> = [0u64, 0, 0x10000, 0x7f00_0000_0000, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(request(&front, &mut s, 37, &region, &[mem.as_raw_fd()]), 0);
        let mut update = vec![0u8; 32];
        update[0..8].copy_from_slice(&0x1000u64.to_ne_bytes());
        update[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        update[16..24].copy_from_slice(&0x7f00_0000_0000u64.to_ne_bytes());
        update[24] = 3;
        update[25] = 2;
        assert_eq!(request(&front, &mut s, 22, &update, &[]), 0);
        assert_eq!(s.mem.iommu().entries(), 1);
        assert_eq!(request(&front, &mut s, 38, &region, &[]), 0);
        assert_eq!(
            s.mem.iommu().entries(),
            0,
            "entries into the removed region are gone"
        );
        assert_ne!(
            request(&front, &mut s, 22, &update, &[]),
            0,
            "nothing to map into any more"
        );
    }
}
