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
    let in_range = |v: f64| (0.0..=max).contains(&v).then_some(v / max);
    let number = |m: Option<regex::Match<'_>>| m.and_then(|m| m.as_str().parse::<f64>().ok());
    if let Some(c) = SCORE_TAG.captures_iter(text).last() {
        return number(c.get(1)).and_then(in_range);
    }
    if let Some(c) = SCORE_LABEL.captures_iter(text).last() {
        return number(c.get(1)).and_then(in_range);
    }
    if let Some(c) = OUT_OF.captures_iter(text).last() {
        let (v, scale) = (number(c.get(1))?, number(c.get(2))?);
        return (scale > 0.0 && (0.0..=scale).contains(&v)).then(|| v / scale);
    }
    BARE_NUMBER
        .captures(text)
        .and_then(|c| number(c.get(1)))
        .and_then(in_range)
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
}
