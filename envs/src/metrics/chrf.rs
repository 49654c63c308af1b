//! chrF and chrF++ (Popović 2015, 2017), computed as sacrebleu 2.6.0 does
//! (`sentence_chrf`, `corpus_chrf`, `CHRF(word_order=2)`): character n-grams of orders 1..=6
//! with whitespace removed, optional word n-grams, precision and recall averaged over the
//! orders that have n-grams on both sides, then F-beta with beta = 2. Scores are in [0, 100].
//! <https://aclanthology.org/W15-3049/>

use std::collections::HashMap;
use std::hash::Hash;

/// chrF settings (sacrebleu's `CHRF` defaults: `char_order = 6`, `word_order = 0`, `beta = 2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChrF {
    /// Highest character n-gram order.
    pub char_order: usize,
    /// Highest word n-gram order (2 for chrF++).
    pub word_order: usize,
    /// Recall weight.
    pub beta: f64,
}

impl Default for ChrF {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2.0,
        }
    }
}

/// `[hypothesis n-grams, reference n-grams, matched n-grams]` for one order.
type OrderStats = [u64; 3];

/// Punctuation split off word edges for word n-grams (sacrebleu's `_PUNCTS`).
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn counts<T: Hash + Eq>(items: impl Iterator<Item = T>) -> HashMap<T, u64> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item).or_insert(0) += 1;
    }
    map
}

fn match_stats<T: Hash + Eq>(hyp: &HashMap<T, u64>, reference: &HashMap<T, u64>) -> OrderStats {
    let mut matched = 0;
    let mut hyp_count = 0;
    for (gram, &n) in hyp {
        hyp_count += n;
        if let Some(&r) = reference.get(gram) {
            matched += n.min(r);
        }
    }
    // Like sacrebleu: hypothesis n-grams do not count when the reference has none.
    let hyp_count = if reference.is_empty() { 0 } else { hyp_count };
    [hyp_count, reference.values().sum(), matched]
}

/// Words with a leading or trailing punctuation mark split off (sacrebleu's
/// `_remove_punctuation`; one mark per word, the trailing one first).
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        let mut chars = w.chars();
        let (first, last) = (chars.next(), w.chars().next_back());
        if w.chars().count() == 1 {
            out.push(w);
        } else if let Some(c) = last.filter(|c| PUNCTUATION.contains(*c)) {
            out.push(&w[..w.len() - c.len_utf8()]);
            out.push(&w[w.len() - c.len_utf8()..]);
        } else if let Some(c) = first.filter(|c| PUNCTUATION.contains(*c)) {
            out.push(&w[..c.len_utf8()]);
            out.push(&w[c.len_utf8()..]);
        } else {
            out.push(w);
        }
    }
    out
}

impl ChrF {
    /// chrF++: word n-grams up to order 2 added.
    pub fn plus_plus() -> Self {
        Self {
            word_order: 2,
            ..Self::default()
        }
    }

    fn stats(&self, hypothesis: &str, reference: &str) -> Vec<OrderStats> {
        let hyp_chars: Vec<char> = hypothesis.split_whitespace().flat_map(str::chars).collect();
        let ref_chars: Vec<char> = reference.split_whitespace().flat_map(str::chars).collect();
        let mut stats = Vec::with_capacity(self.char_order + self.word_order);
        for n in 1..=self.char_order {
            let h = counts(hyp_chars.windows(n));
            let r = counts(ref_chars.windows(n));
            stats.push(match_stats(&h, &r));
        }
        let (hyp_words, ref_words) = (words(hypothesis), words(reference));
        for n in 1..=self.word_order {
            let h = counts(hyp_words.windows(n));
            let r = counts(ref_words.windows(n));
            stats.push(match_stats(&h, &r));
        }
        stats
    }

    fn f_score(&self, stats: &[OrderStats]) -> f64 {
        let factor = self.beta * self.beta;
        let (mut avg_prec, mut avg_rec, mut effective_order) = (0.0, 0.0, 0u32);
        for &[n_hyp, n_ref, n_match] in stats {
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += n_match as f64 / n_hyp as f64;
                avg_rec += n_match as f64 / n_ref as f64;
                effective_order += 1;
            }
        }
        if effective_order == 0 {
            return 0.0;
        }
        avg_prec /= f64::from(effective_order);
        avg_rec /= f64::from(effective_order);
        if avg_prec + avg_rec == 0.0 {
            return 0.0;
        }
        let score = (1.0 + factor) * avg_prec * avg_rec / ((factor * avg_prec) + avg_rec);
        100.0 * score
    }

    /// The score of one hypothesis against one reference, in [0, 100].
    pub fn sentence(&self, hypothesis: &str, reference: &str) -> f64 {
        self.f_score(&self.stats(hypothesis, reference))
    }

    /// The corpus score: n-gram statistics summed over all `(hypothesis, reference)` pairs.
    pub fn corpus<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
        let mut total = vec![[0u64; 3]; self.char_order + self.word_order];
        for (h, r) in pairs {
            for (t, s) in total.iter_mut().zip(self.stats(h, r)) {
                for k in 0..3 {
                    t[k] += s[k];
                }
            }
        }
        self.f_score(&total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_100_and_empty_is_0() {
        let chrf = ChrF::default();
        assert_eq!(chrf.sentence("a cat", "a cat"), 100.0);
        assert_eq!(chrf.sentence("", "a cat"), 0.0);
        assert_eq!(chrf.sentence("a cat", ""), 0.0);
    }

    #[test]
    fn punctuation_is_split_from_word_edges() {
        assert_eq!(
            words("Hi, (there) x."),
            vec!["Hi", ",", "(there", ")", "x", "."]
        );
        assert_eq!(words("! ¿qué?"), vec!["!", "¿qué", "?"]);
    }
}
