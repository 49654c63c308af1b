//! Model-judged scores: parse the score a judging request's answer gives.

use std::sync::LazyLock;

use regex::Regex;

static SCORE_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?is)<score>\s*(-?\d+(?:\.\d+)?)\s*</score>").expect("valid regex")
});
static SCORE_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:score|rating)\b[*\s]*(?:is|[:=])?[*\s]*(-?\d+(?:\.\d+)?)")
        .expect("valid regex")
});
static OUT_OF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)").expect("valid regex")
});
static BARE_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\s*#`]*(-?\d+(?:\.\d+)?)[\s*.`]*$").expect("valid regex"));

/// The score in `text` on a `0..=max` scale, normalised to `[0, 1]`.
///
/// Rules, first match wins: `<score>N</score>`; the last `Score: N` / `Rating: N` (any case,
/// markdown bold allowed); the last `N/M` or `N out of M` (rescaled from `M`); a text that is
/// only a number. A score outside the scale, or no score, gives `None`: the caller counts it
/// and rewards 0.
pub fn parse_judge_score(text: &str, max: f64) -> Option<f64> {
    parse(text, max, false)
}

/// As [`parse_judge_score`], but a score written as a decimal fraction of one (`0.85`,
/// `Score: 0.9`; a number in `[0, 1]` with a decimal point and no `/M` scale) is read on a
/// 0–1 scale: `0.85` is 0.85, not 0.85 / `max`. Small judges answer on that scale whatever the
/// prompt asks (SmolLM2-135M judging translations answers "0.99"; BENCHMARKS.md, SSR-Zero).
/// Whole numbers (`1`, `85`) stay on the `0..=max` scale.
pub fn parse_judge_score_reading_fractions(text: &str, max: f64) -> Option<f64> {
    parse(text, max, true)
}

fn parse(text: &str, max: f64, fractions: bool) -> Option<f64> {
    let on_scale = |m: regex::Match<'_>| {
        let raw = m.as_str();
        let v = raw.parse::<f64>().ok()?;
        if fractions && raw.contains('.') && (0.0..=1.0).contains(&v) {
            return Some(v);
        }
        (0.0..=max).contains(&v).then_some(v / max)
    };
    let number = |m: Option<regex::Match<'_>>| m.and_then(|m| m.as_str().parse::<f64>().ok());
    if let Some(c) = SCORE_TAG.captures_iter(text).last() {
        return c.get(1).and_then(on_scale);
    }
    if let Some(c) = SCORE_LABEL.captures_iter(text).last() {
        return c.get(1).and_then(on_scale);
    }
    if let Some(c) = OUT_OF.captures_iter(text).last() {
        let (v, scale) = (number(c.get(1))?, number(c.get(2))?);
        return (scale > 0.0 && (0.0..=scale).contains(&v)).then(|| v / scale);
    }
    BARE_NUMBER
        .captures(text)
        .and_then(|c| c.get(1))
        .and_then(on_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_score_formats_parse() {
        let cases = [
            ("Score: 85", Some(0.85)),
            ("The translation is fine.\n**Score:** 70", Some(0.70)),
            ("rating = 40", Some(0.40)),
            ("<score>100</score>", Some(1.0)),
            ("I'd give it 90/100.", Some(0.90)),
            ("8 out of 10", Some(0.80)),
            ("  55 ", Some(0.55)),
            ("Score: 0", Some(0.0)),
        ];
        for (text, want) in cases {
            let got = parse_judge_score(text, 100.0);
            assert_eq!(
                got.map(|v| (v * 1e6).round()),
                want.map(|v| (v * 1e6f64).round()),
                "{text}"
            );
        }
    }

    #[test]
    fn out_of_range_or_missing_scores_are_none() {
        for text in [
            "Score: 150",
            "Score: -5",
            "great translation",
            "",
            "3 apples and 4 pears",
        ] {
            assert_eq!(parse_judge_score(text, 100.0), None, "{text}");
        }
    }

    #[test]
    fn decimal_fractions_of_one_read_on_a_zero_to_one_scale_when_asked() {
        let cases = [
            ("0.99", Some(0.99), Some(0.0099)),
            ("Score: 0.5", Some(0.5), Some(0.005)),
            ("<score>0.25</score>", Some(0.25), Some(0.0025)),
            ("Score: 1", Some(0.01), Some(0.01)),
            ("85", Some(0.85), Some(0.85)),
            ("Score: 72.5", Some(0.725), Some(0.725)),
            ("0.5/10", Some(0.05), Some(0.05)),
            ("1.5", Some(0.015), Some(0.015)),
            ("no score", None, None),
        ];
        for (text, fractions, plain) in cases {
            let round = |v: Option<f64>| v.map(|v| (v * 1e9).round());
            assert_eq!(
                round(parse_judge_score_reading_fractions(text, 100.0)),
                round(fractions),
                "{text}"
            );
            assert_eq!(
                round(parse_judge_score(text, 100.0)),
                round(plain),
                "{text}"
            );
        }
    }
}
