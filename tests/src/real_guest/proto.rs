//! What the host harness and the guest agent share: the test data pattern, SHA-256 and the control
//! protocol. std only: `vsock-guest-agent` includes this file with `#[path]`, so the static guest
//! binary does not link the rest of the test crate.
//!
//! Control protocol (lines on the guest's second serial port, `/dev/ttyS1`, raw mode; the host end is
//! a QEMU chardev socket, so control never depends on the vsock device under test):
//! - guest → host `HELLO release=<uname -r> cid=<local cid>`, repeated until the first command;
//! - host → guest `RUN <id> <case> <op> key=value...`;
//! - guest → host `READY <id>` when an op's listener is up, then `RESULT <id> PASS|FAIL <detail>`;
//! - host → guest `QUIT`: the agent exits and `/init` powers off.
//!
//! The agent also prints `CASE <case> PASS|FAIL <detail>` on the console (`ttyS0`).

#![allow(dead_code)]

/// The serial device the agent reads commands from.
pub const CONTROL_TTY: &str = "/dev/ttyS1";
/// Host CID as seen from the guest.
pub const HOST_CID: u32 = 2;

/// Fills `buf` with the pattern of stream `seed` starting at absolute offset `offset`: every byte
/// depends on its position, so a lost, duplicated or reordered chunk changes the digest.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pos / 8));
        let bytes = word.to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Streaming SHA-256 (FIPS 180-4).
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    fill: usize,
    total: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            fill: 0,
            total: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.fill > 0 {
            let n = (64 - self.fill).min(data.len());
            self.block[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill < 64 {
                return;
            }
            let block = self.block;
            self.compress(&block);
            self.fill = 0;
        }
        while data.len() >= 64 {
            let (block, rest) = data.split_at(64);
            self.compress(block.try_into().unwrap());
            data = rest;
        }
        self.block[..data.len()].copy_from_slice(data);
        self.fill = data.len();
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let pad_len = if self.fill < 56 {
            56 - self.fill
        } else {
            120 - self.fill
        };
        pad[pad_len..pad_len + 8].copy_from_slice(&bits.to_be_bytes());
        let total = self.total;
        self.update(&pad[..pad_len + 8]);
        self.total = total;
        let mut out = [0u8; 32];
        for (i, w) in self.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `len` bytes of pattern `seed` from offset 0.
pub fn pattern_sha256(seed: u64, len: u64) -> [u8; 32] {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill_pattern(seed, off, &mut buf[..n]);
        sha.update(&buf[..n]);
        off += n as u64;
    }
    sha.finish()
}

/// Parses `key=value` words into pairs.
pub fn parse_kv<'a>(words: impl Iterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    words.filter_map(|w| w.split_once('=')).collect()
}

/// A cheap position-dependent checksum for bulk transfers (throughput runs, where SHA-256 in a TCG
/// guest would be the bottleneck): every 8-byte little-endian word is mixed with its index, so a lost,
/// duplicated or reordered chunk changes the result. Feed it chunks of any size.
#[derive(Clone, Default)]
pub struct FastSum {
    acc: u64,
    words: u64,
    partial: [u8; 8],
    fill: usize,
    total: u64,
}

impl FastSum {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.acc = (self.acc.rotate_left(23) ^ w ^ self.words).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.words += 1;
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.fill > 0 {
            let n = (8 - self.fill).min(data.len());
            self.partial[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.partial);
            self.word(w);
            self.fill = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    pub fn finish(mut self) -> u64 {
        if self.fill > 0 {
            for b in &mut self.partial[self.fill..] {
                *b = 0;
            }
            let w = u64::from_le_bytes(self.partial);
            self.word(w);
        }
        self.acc ^ self.total
    }
}

/// `%XX`-escapes bytes outside `[A-Za-z0-9._:/-]` so text fits in one `key=value` word.
pub fn escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"._:/-()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape`].
pub fn unescape(word: &str) -> String {
    let b = word.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sizes of the SEQPACKET messages the `seqpacket` case exchanges (boundaries must survive).
pub const SEQPACKET_SIZES: [usize; 8] = [1, 7, 100, 1000, 4096, 4097, 30000, 60000];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_sum_is_chunk_independent_and_position_dependent() {
        let mut data = vec![0u8; 10_000];
        fill_pattern(3, 0, &mut data);
        let mut a = FastSum::new();
        a.update(&data);
        let mut b = FastSum::new();
        for c in data.chunks(13) {
            b.update(c);
        }
        let a = a.finish();
        assert_eq!(a, b.finish());
        data.swap(0, 8);
        let mut c = FastSum::new();
        c.update(&data);
        assert_ne!(a, c.finish());
    }

    #[test]
    fn escape_round_trip() {
        let t = "hello from the guest: 100% (CID 3)";
        assert!(!escape(t).contains(' '));
        assert_eq!(unescape(&escape(t)), t);
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&Sha256::new().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut s = Sha256::new();
        s.update(b"abc");
        assert_eq!(
            hex(&s.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let msg = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let mut s = Sha256::new();
        for c in msg.chunks(5) {
            s.update(c);
        }
        assert_eq!(
            hex(&s.finish()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn pattern_is_position_dependent_and_chunk_independent() {
        let mut whole = vec![0u8; 1000];
        fill_pattern(7, 0, &mut whole);
        let mut parts = vec![0u8; 1000];
        fill_pattern(7, 0, &mut parts[..13]);
        fill_pattern(7, 13, &mut parts[13..]);
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 1000];
        fill_pattern(8, 0, &mut other);
        assert_ne!(whole, other);
    }
}
