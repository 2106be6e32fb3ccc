//! Book-level near-duplicate detection: MinHash signatures of word shingles (Broder, 1997) with
//! LSH banding to find candidates among the books kept so far. Overlap is measured as the Dice
//! coefficient of the shingle sets, `2|A∩B| / (|A|+|B|)`: the share of each book's shingles
//! found in the other (for books of similar length), estimated as `2J / (1+J)` from the
//! MinHash estimate of the Jaccard index `J`.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

/// SplitMix64: the fixed-seed generator of the permutation constants (deterministic runs).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Signs documents: `num_perm` bijections of the 64-bit shingle hashes, each
/// `x ↦ xorshift((x ^ s) * m)` with `m` odd, so each is a permutation of u64.
pub struct MinHasher {
    perms: Vec<(u64, u64)>,
    shingle_words: usize,
}

impl MinHasher {
    pub fn new(num_perm: usize, shingle_words: usize) -> Self {
        let mut state = 0x11A7_A0D7_A5EE_D000;
        let perms = (0..num_perm)
            .map(|_| (splitmix64(&mut state), splitmix64(&mut state) | 1))
            .collect();
        Self {
            perms,
            shingle_words: shingle_words.max(1),
        }
    }

    /// The signature of `text`: per permutation, the minimum over shingles of consecutive
    /// lowercased words (punctuation ignored). Texts shorter than one shingle are one shingle.
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let mut sig = vec![u64::MAX; self.perms.len()];
        let mut window: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut word = String::new();
        let mut any = false;
        let mut words = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty());
        loop {
            let next = words.next();
            if let Some(w) = next {
                word.clear();
                word.extend(w.chars().flat_map(char::to_lowercase));
                window.push_back(xxh3_64(word.as_bytes()));
                if window.len() > self.shingle_words {
                    window.pop_front();
                }
            }
            let full = window.len() == self.shingle_words;
            if full || (next.is_none() && !any && !window.is_empty()) {
                any = true;
                // Combine the word hashes in order (a rotate-xor chain: order matters).
                let h = window
                    .iter()
                    .fold(0u64, |acc, &w| acc.rotate_left(17) ^ w)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for (s, &(xor, mul)) in sig.iter_mut().zip(&self.perms) {
                    let mut v = (h ^ xor).wrapping_mul(mul);
                    v ^= v >> 29;
                    *s = (*s).min(v);
                }
            }
            if next.is_none() {
                break;
            }
        }
        sig
    }
}

/// The estimated Jaccard index of two signatures: the share of equal slots.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// Dice overlap from a Jaccard index.
pub fn dice_from_jaccard(j: f64) -> f64 {
    2.0 * j / (1.0 + j)
}

/// The signatures of kept documents, indexed by band.
pub struct LshIndex {
    bands: usize,
    rows: usize,
    buckets: HashMap<(usize, u64), Vec<usize>>,
    signatures: Vec<Vec<u64>>,
}

impl LshIndex {
    /// `bands * rows` must equal the signature length.
    pub fn new(bands: usize, rows: usize) -> Self {
        Self {
            bands,
            rows,
            buckets: HashMap::new(),
            signatures: Vec::new(),
        }
    }

    fn band_keys<'a>(&'a self, sig: &'a [u64]) -> impl Iterator<Item = (usize, u64)> + 'a {
        (0..self.bands).map(move |b| {
            let band = &sig[b * self.rows..(b + 1) * self.rows];
            let bytes: Vec<u8> = band.iter().flat_map(|v| v.to_le_bytes()).collect();
            (b, xxh3_64(&bytes))
        })
    }

    /// The highest estimated overlap (Dice) with an indexed signature sharing a band.
    pub fn best_overlap(&self, sig: &[u64]) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut checked = std::collections::HashSet::new();
        for key in self.band_keys(sig) {
            for &i in self.buckets.get(&key).into_iter().flatten() {
                if checked.insert(i) {
                    let d = dice_from_jaccard(jaccard(sig, &self.signatures[i]));
                    best = Some(best.map_or(d, |b: f64| b.max(d)));
                }
            }
        }
        best
    }

    pub fn insert(&mut self, sig: Vec<u64>) {
        let i = self.signatures.len();
        let keys: Vec<_> = self.band_keys(&sig).collect();
        for key in keys {
            self.buckets.entry(key).or_default().push(i);
        }
        self.signatures.push(sig);
    }

    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, seed: u64) -> Vec<String> {
        let mut s = seed;
        (0..n)
            .map(|_| format!("w{}", splitmix64(&mut s) % 5000))
            .collect()
    }

    #[test]
    fn estimates_track_the_true_jaccard() {
        let h = MinHasher::new(256, 1);
        // Distinct single words 0..1000 and 500..1500: J = 500 / 1500.
        let a: Vec<String> = (0..1000).map(|i| format!("x{i}")).collect();
        let b: Vec<String> = (500..1500).map(|i| format!("x{i}")).collect();
        let j = jaccard(&h.signature(&a.join(" ")), &h.signature(&b.join(" ")));
        assert!((j - 1.0 / 3.0).abs() < 0.08, "{j}");
        let same = h.signature("The same text, the SAME text!");
        assert_eq!(same, h.signature("the same text the same text"));
        assert!(jaccard(&same, &h.signature("other words entirely here")) < 0.2);
    }

    #[test]
    fn lsh_finds_near_duplicates_and_not_unrelated_texts() {
        let h = MinHasher::new(128, 5);
        let mut idx = LshIndex::new(32, 4);
        let base = words(5000, 1);
        idx.insert(h.signature(&base.join(" ")));
        let mut edited = base.clone();
        for i in (0..edited.len()).step_by(200) {
            edited[i] = "changed".into();
        }
        let near = idx
            .best_overlap(&h.signature(&edited.join(" ")))
            .expect("candidate");
        assert!(near > 0.93, "{near}");
        let other = idx.best_overlap(&h.signature(&words(5000, 2).join(" ")));
        assert!(other.is_none_or(|o| o < 0.2), "{other:?}");
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn empty_and_short_texts_do_not_panic() {
        let h = MinHasher::new(16, 5);
        assert!(h.signature("").iter().all(|&v| v == u64::MAX));
        assert!(h.signature("two words").iter().all(|&v| v != u64::MAX));
    }
}
