//! Made-up text for the search scenarios (`search`, `search_streams`): a vocabulary of distinct words, drawn by a Zipf
//! law from a deterministic generator, so runs store the same text.

/// The vocabulary's word of rank `i`: made-up syllables, distinct for every rank.
pub(crate) fn word(i: usize) -> String {
    const SYLLABLES: [&str; 20] = [
        "ka", "lo", "mi", "su", "te", "ra", "no", "vi", "de", "pu", "ze", "ho", "ba", "gi", "fu", "ye", "co", "wa",
        "ni", "tor",
    ];
    let mut n = i + SYLLABLES.len();
    let mut w = String::new();
    while n > 0 {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    w
}

/// A small deterministic generator (xorshift), so runs store the same text.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A rank from a Zipf law, given its cumulative weights (one per word, by rank).
    pub(crate) fn zipf(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative.last().copied().unwrap_or(1.0);
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        cumulative.partition_point(|&c| c < x).min(cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_zipf_favours_the_first() {
        let words: std::collections::HashSet<String> = (0..5000).map(word).collect();
        assert_eq!(words.len(), 5000);
        let cumulative: Vec<f64> = (1..=1000)
            .scan(0.0, |s, r| {
                *s += 1.0 / r as f64;
                Some(*s)
            })
            .collect();
        let mut rng = Rng(7);
        let draws: Vec<usize> = (0..10_000).map(|_| rng.zipf(&cumulative)).collect();
        let first = draws.iter().filter(|&&r| r == 0).count();
        let hundredth = draws.iter().filter(|&&r| r == 99).count();
        assert!(first > 1000 && hundredth < 60, "{first} {hundredth}");
        assert!(draws.iter().all(|&r| r < 1000));
    }
}
