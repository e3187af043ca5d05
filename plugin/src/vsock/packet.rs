//! The virtio-vsock packet header (virtio spec 5.10.6): 44 bytes, little-endian, followed by `len`
//! payload bytes. Every packet in both directions starts with one.

use vm_memory::ByteValued;

/// Size of [`PacketHeader`] on the wire.
pub const HEADER_SIZE: usize = 44;

/// Socket types (`type` field).
pub mod kind {
    pub const STREAM: u16 = 1;
    pub const SEQPACKET: u16 = 2;
}

/// Operations (`op` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `flags` of a SHUTDOWN packet.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    pub const BOTH: u32 = RCV | SEND;
}

/// `flags` of a SEQPACKET RW packet.
pub mod seq {
    /// End of message: the last packet of one `send()`.
    pub const EOM: u32 = 1;
    /// End of record (MSG_EOR); only ever together with EOM.
    pub const EOR: u32 = 2;
}

/// The well-known host CID.
pub const HOST_CID: u64 = 2;

/// `struct virtio_vsock_hdr`, stored exactly as on the wire (all fields little-endian).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct PacketHeader {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

// SAFETY: plain old data: integers only, every bit pattern valid; no padding (packed, and the
// size check below proves the fields fill all 44 bytes).
unsafe impl ByteValued for PacketHeader {}

const _: () = assert!(std::mem::size_of::<PacketHeader>() == HEADER_SIZE);

/// The address pair of a packet, as seen from its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub src_cid: u64,
    pub src_port: u32,
    pub dst_cid: u64,
    pub dst_port: u32,
}

impl Endpoints {
    /// The same pair seen from the other end.
    pub fn reversed(self) -> Endpoints {
        Endpoints {
            src_cid: self.dst_cid,
            src_port: self.dst_port,
            dst_cid: self.src_cid,
            dst_port: self.src_port,
        }
    }
}

macro_rules! le_accessors {
    ($($get:ident / $set:ident : $field:ident : $ty:ty),* $(,)?) => {
        $(
            pub fn $get(&self) -> $ty {
                <$ty>::from_le(self.$field)
            }
            pub fn $set(&mut self, v: $ty) -> &mut Self {
                self.$field = v.to_le();
                self
            }
        )*
    };
}

// `len` is the payload length field, not a collection size.
#[allow(clippy::len_without_is_empty)]
impl PacketHeader {
    le_accessors! {
        src_cid / set_src_cid: src_cid: u64,
        dst_cid / set_dst_cid: dst_cid: u64,
        src_port / set_src_port: src_port: u32,
        dst_port / set_dst_port: dst_port: u32,
        len / set_len: len: u32,
        kind / set_kind: kind: u16,
        op_raw / set_op_raw: op: u16,
        flags / set_flags: flags: u32,
        buf_alloc / set_buf_alloc: buf_alloc: u32,
        fwd_cnt / set_fwd_cnt: fwd_cnt: u32,
    }

    /// A header for `op` between `ends`, with no payload and no credit information yet.
    pub fn new(ends: Endpoints, kind: u16, op: Op) -> PacketHeader {
        let mut h = PacketHeader::default();
        h.set_src_cid(ends.src_cid)
            .set_dst_cid(ends.dst_cid)
            .set_src_port(ends.src_port)
            .set_dst_port(ends.dst_port)
            .set_kind(kind)
            .set_op_raw(op as u16);
        h
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op_raw())
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            src_cid: self.src_cid(),
            src_port: self.src_port(),
            dst_cid: self.dst_cid(),
            dst_port: self.dst_port(),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(self.as_slice());
        out
    }

    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> PacketHeader {
        let mut h = PacketHeader::default();
        h.as_mut_slice().copy_from_slice(bytes);
        h
    }
}

impl std::fmt::Debug for PacketHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{} type={} op={} len={} flags={:#x} buf_alloc={} fwd_cnt={}",
            self.src_cid(),
            self.src_port(),
            self.dst_cid(),
            self.dst_port(),
            self.kind(),
            self.op_raw(),
            self.len(),
            self.flags(),
            self.buf_alloc(),
            self.fwd_cnt()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_wire_format() {
        let ends = Endpoints {
            src_cid: 3,
            src_port: 0x1234,
            dst_cid: 2,
            dst_port: 0x50,
        };
        let mut h = PacketHeader::new(ends, kind::STREAM, Op::Rw);
        h.set_len(7)
            .set_flags(3)
            .set_buf_alloc(0x10000)
            .set_fwd_cnt(9);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..20], &0x1234u32.to_le_bytes());
        assert_eq!(&b[20..24], &0x50u32.to_le_bytes());
        assert_eq!(&b[24..28], &7u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[32..36], &3u32.to_le_bytes());
        assert_eq!(&b[36..40], &0x10000u32.to_le_bytes());
        assert_eq!(&b[40..44], &9u32.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&b), h);
        assert_eq!(h.op(), Some(Op::Rw));
        assert_eq!(h.endpoints().reversed().src_cid, 2);
    }

    #[test]
    fn unknown_ops_are_none() {
        for v in [0u16, 8, 0xffff] {
            assert_eq!(Op::from_u16(v), None);
        }
    }
}
