//! A fixed-size Bloom filter over xxh3-128 hashes, so that line deduplication needs the same
//! memory however large the corpus is (CCNet keeps exact hashes per shard; we trade a small,
//! known false-positive rate for a bound on memory).

use xxhash_rust::xxh3::xxh3_128;

/// `m` bits, `k` probes per key by double hashing (Kirsch & Mitzenmacher): probe `i` is
/// `h1 + i * h2 mod m`, with `h1`, `h2` the two halves of one 128-bit hash.
pub struct BloomFilter {
    bits: Vec<u64>,
    num_bits: u64,
    hashes: u32,
}

impl BloomFilter {
    /// A filter of `bytes` bytes (at least 8) probing `hashes` bits (at least 1) per key.
    pub fn new(bytes: usize, hashes: u32) -> Self {
        let words = (bytes / 8).max(1);
        Self {
            bits: vec![0; words],
            num_bits: words as u64 * 64,
            hashes: hashes.max(1),
        }
    }

    pub fn num_bits(&self) -> u64 {
        self.num_bits
    }

    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    /// The hash pair of a key; computed once, then used by [`Self::contains_hash`] and
    /// [`Self::insert_hash`].
    pub fn hash(key: &[u8]) -> (u64, u64) {
        let h = xxh3_128(key);
        // An odd step visits distinct bits for any m that is a power of two times an odd number.
        (h as u64, ((h >> 64) as u64) | 1)
    }

    fn probes(&self, (h1, h2): (u64, u64)) -> impl Iterator<Item = u64> + '_ {
        (0..u64::from(self.hashes))
            .map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.num_bits)
    }

    pub fn contains_hash(&self, h: (u64, u64)) -> bool {
        self.probes(h)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    pub fn insert_hash(&mut self, h: (u64, u64)) {
        let (h1, h2) = h;
        for i in 0..u64::from(self.hashes) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % self.num_bits;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.contains_hash(Self::hash(key))
    }

    pub fn insert(&mut self, key: &[u8]) {
        self.insert_hash(Self::hash(key))
    }

    /// The false-positive rate expected after `n` distinct insertions: `(1 - e^(-k n / m))^k`.
    pub fn expected_fp_rate(&self, n: u64) -> f64 {
        let k = f64::from(self.hashes);
        (1.0 - (-k * n as f64 / self.num_bits as f64).exp()).powf(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_always_found() {
        let mut f = BloomFilter::new(4096, 5);
        for i in 0..2000u32 {
            f.insert(&i.to_le_bytes());
        }
        assert!((0..2000u32).all(|i| f.contains(&i.to_le_bytes())));
    }

    #[test]
    fn false_positive_rate_matches_the_formula() {
        // m = 2^20 bits, k = 7, n = 100k: k n / m = 0.667, expected rate about 0.65 %.
        let mut f = BloomFilter::new(1 << 17, 7);
        let n = 100_000u64;
        for i in 0..n {
            f.insert(format!("inserted line {i}").as_bytes());
        }
        let trials = 400_000u64;
        let fps = (0..trials)
            .filter(|i| f.contains(format!("other line {i}").as_bytes()))
            .count();
        let observed = fps as f64 / trials as f64;
        let expected = f.expected_fp_rate(n);
        assert!((0.005..0.008).contains(&expected), "expected {expected}");
        // About 2600 expected hits, standard deviation about 51: 10 % is some 5 sigma.
        assert!(
            (observed - expected).abs() < 0.1 * expected,
            "observed {observed}, formula {expected}"
        );
    }

    #[test]
    fn tiny_sizes_do_not_panic() {
        let mut f = BloomFilter::new(0, 0);
        assert_eq!(f.num_bits(), 64);
        assert_eq!(f.hashes(), 1);
        f.insert(b"x");
        assert!(f.contains(b"x"));
    }
}
