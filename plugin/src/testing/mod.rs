//! Helpers for the crate's own unit tests (compiled for tests only).

/// A small deterministic PRNG (xorshift64*), so fuzz-style tests are repeatable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An "interesting" u64: small, near a power of two, near the top, or random.
    #[cfg_attr(not(feature = "iotlb"), allow(dead_code))]
    pub fn edgy(&mut self) -> u64 {
        match self.below(6) {
            0 => self.below(16),
            1 => 1u64 << self.below(64),
            2 => (1u64 << self.below(64)).wrapping_sub(1),
            3 => u64::MAX - self.below(16),
            4 => self.below(0x10_0000),
            _ => self.next(),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
