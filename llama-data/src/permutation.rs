//! A seeded pseudo-random permutation of `0..n` with O(1) memory and O(1) random access: a
//! four-round Feistel network on the smallest even power of two ≥ n, cycle-walking back into
//! range. Shuffling billions of windows needs no index array, and a position in an epoch maps
//! to the same window on every run (resumption, several data-loader workers).

use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Debug, Clone, Copy)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    /// A permutation of `0..n` determined by `seed`.
    pub fn new(n: u64, seed: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut keys = [0u64; 4];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = xxh3_64_with_seed(&(i as u64).to_le_bytes(), seed);
        }
        Self { n, half_bits, keys }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The image of `i` (`i < n`). The domain is at most 4n, so cycle-walking takes under four
    /// rounds on average.
    pub fn get(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = i;
        loop {
            x = self.feistel(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            let f = xxh3_64_with_seed(&right.to_le_bytes(), key) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_permutation_for_many_sizes() {
        for n in [1u64, 2, 3, 7, 64, 100, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = p.get(i);
                assert!(j < n && !seen[j as usize], "n={n} i={i} j={j}");
                seen[j as usize] = true;
            }
        }
    }

    #[test]
    fn seeds_give_different_orders_and_orders_look_shuffled() {
        let n = 10_000;
        let (a, b) = (Permutation::new(n, 1), Permutation::new(n, 2));
        let differ = (0..n).filter(|&i| a.get(i) != b.get(i)).count();
        assert!(differ > 9_900, "{differ}");
        // Few fixed points and no long runs of consecutive outputs.
        let fixed = (0..n).filter(|&i| a.get(i) == i).count();
        assert!(fixed < 10, "{fixed}");
        let consecutive = (1..n).filter(|&i| a.get(i) == a.get(i - 1) + 1).count();
        assert!(consecutive < 20, "{consecutive}");
        // Same seed, same order.
        assert!((0..n).all(|i| a.get(i) == Permutation::new(n, 1).get(i)));
    }
}
