//! BLEU (Papineni et al. 2002) computed as sacrebleu 2.6.0 does: the `13a` tokenizer
//! (mteval-v13a), n-grams up to 4, `exp` smoothing (NIST), brevity penalty; `sentence_bleu`
//! uses the effective order. Scores are in [0, 100]. <https://aclanthology.org/P02-1040/>

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

const MAX_ORDER: usize = 4;

static TOKENIZER_13A: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("valid regex");
    [
        // punctuation and symbols, except . , - between digits
        (re(r"([{-~\[-` -&(-+:-@/])"), " ${1} "),
        // period and comma unless preceded by a digit
        (re(r"([^0-9])([.,])"), "${1} ${2} "),
        // period and comma unless followed by a digit
        (re(r"([.,])([^0-9])"), " ${1} ${2}"),
        // dash when preceded by a digit
        (re(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

/// The `13a` tokenization of one line (sacrebleu's `Tokenizer13a`), tokens joined by spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, replacement) in TOKENIZER_13A.iter() {
        line = re.replace_all(&line, *replacement).into_owned();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// BLEU's sufficient statistics: lengths and per-order matched/total n-gram counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    hyp_len: u64,
    ref_len: u64,
    correct: [u64; MAX_ORDER],
    total: [u64; MAX_ORDER],
}

fn ngrams(tokens: &[&str]) -> HashMap<Vec<String>, u64> {
    let mut map = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *map.entry(w.iter().map(|s| s.to_string()).collect())
                .or_insert(0) += 1;
        }
    }
    map
}

fn stats(hypothesis: &str, reference: &str) -> Stats {
    let (hyp, reference) = (
        tokenize_13a(hypothesis.trim_end()),
        tokenize_13a(reference.trim_end()),
    );
    let hyp: Vec<&str> = hyp.split_whitespace().collect();
    let reference: Vec<&str> = reference.split_whitespace().collect();
    let ref_ngrams = ngrams(&reference);
    let mut s = Stats {
        hyp_len: hyp.len() as u64,
        ref_len: reference.len() as u64,
        ..Stats::default()
    };
    for (gram, count) in ngrams(&hyp) {
        let n = gram.len() - 1;
        s.total[n] += count;
        if let Some(&r) = ref_ngrams.get(&gram) {
            s.correct[n] += count.min(r);
        }
    }
    s
}

/// sacrebleu's `my_log`: log with log(0) floored to -9999999999.
fn floored_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

fn score(s: &Stats, effective_order: bool) -> f64 {
    let bp = if s.hyp_len < s.ref_len {
        if s.hyp_len > 0 {
            (1.0 - s.ref_len as f64 / s.hyp_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    if s.correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for (n, precision) in precisions.iter_mut().enumerate() {
        let (correct, total) = (s.correct[n], s.total[n]);
        if total == 0 {
            break;
        }
        if effective_order {
            eff_order = n + 1;
        }
        if correct == 0 {
            smooth_mteval *= 2.0;
            *precision = 100.0 / (smooth_mteval * total as f64);
        } else {
            *precision = 100.0 * correct as f64 / total as f64;
        }
    }
    let log_sum = precisions[..eff_order]
        .iter()
        .fold(0.0, |acc, &p| acc + floored_log(p));
    bp * (log_sum / eff_order as f64).exp()
}

/// Sentence BLEU of one hypothesis against one reference (sacrebleu's `sentence_bleu`:
/// effective order), in [0, 100].
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> f64 {
    score(&stats(hypothesis, reference), true)
}

/// Corpus BLEU over `(hypothesis, reference)` pairs (sacrebleu's `corpus_bleu`), in [0, 100].
pub fn corpus_bleu<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let mut total = Stats::default();
    for (h, r) in pairs {
        let s = stats(h, r);
        total.hyp_len += s.hyp_len;
        total.ref_len += s.ref_len;
        for n in 0..MAX_ORDER {
            total.correct[n] += s.correct[n];
            total.total[n] += s.total[n];
        }
    }
    score(&total, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(
            tokenize_13a("It costs $3,000.50 (approx)"),
            "It costs $ 3,000.50 ( approx )"
        );
        assert_eq!(tokenize_13a("1990-2000 &amp; more"), "1990 - 2000 & more");
    }

    #[test]
    fn identical_is_100_and_no_match_is_0() {
        assert!((sentence_bleu("a b c d e", "a b c d e") - 100.0).abs() < 1e-9);
        assert_eq!(sentence_bleu("x y", "a b"), 0.0);
        assert_eq!(sentence_bleu("", "a b"), 0.0);
    }
}
