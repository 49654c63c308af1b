//! Exact-answer verification for math: find the final answer in a model's text and compare it
//! with the gold answer by value.

use std::sync::LazyLock;

use regex::Regex;

use super::math_expression::{self, Expr};

static ANSWER_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<answer>(.*?)</answer>").expect("valid regex"));
static ANSWER_IS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\banswer\s*(?:is|:|=)\s*:?\s*(.*)").expect("valid regex"));
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d+(?:,\d{3})*(?:\.\d+)?").expect("valid regex"));

/// The content of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
fn last_boxed(text: &str) -> Option<&str> {
    let start = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|cmd| text.rfind(cmd).map(|i| i + cmd.len()))
        .max()?;
    let rest = text[start..].trim_start();
    let rest = rest.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The part of a response that states the final answer, by the first rule that applies: the
/// last `<answer>...</answer>`, the last `\boxed{...}`, the line after the last `####`, the
/// rest of the line after the last "answer is" / "answer:", else the whole text.
pub fn final_answer_span(text: &str) -> &str {
    if let Some(m) = ANSWER_TAG.captures_iter(text).last() {
        return m.get(1).map_or("", |g| g.as_str()).trim();
    }
    if let Some(boxed) = last_boxed(text) {
        return boxed.trim();
    }
    if let Some(i) = text.rfind("####") {
        return text[i + 4..].lines().next().unwrap_or("").trim();
    }
    if let Some(m) = ANSWER_IS.captures_iter(text).last() {
        let line = m.get(1).map_or("", |g| g.as_str());
        return line.lines().next().unwrap_or("").trim();
    }
    text.trim()
}

/// The last number in `text` (thousands separators allowed), with its minus sign when the sign
/// is not a subtraction (`x-3` gives `3`, `is -3` gives `-3`).
pub fn last_number(text: &str) -> Option<String> {
    let m = NUMBER.find_iter(text).last()?;
    let before: Vec<char> = text[..m.start()].chars().rev().take(2).collect();
    let negative = before.first() == Some(&'-')
        && before
            .get(1)
            .is_none_or(|c| !(c.is_alphanumeric() || *c == ')' || *c == '}'));
    Some(format!("{}{}", if negative { "-" } else { "" }, m.as_str()))
}

/// The final answer of `text` as an expression: the [`final_answer_span`] parsed as math, or
/// else the last number in that span. `None` when there is no answer.
pub fn parse_final_answer(text: &str) -> Option<Expr> {
    let span = final_answer_span(text);
    math_expression::parse(span).or_else(|| math_expression::parse(&last_number(span)?))
}

/// Whether `prediction` states the same final answer as `gold` (both go through
/// [`parse_final_answer`], so `gold` may be `#### 42`, `\boxed{42}` or `42`). Percentages match
/// either reading: `50%` equals both `50` and `0.5`.
pub fn answers_match(gold: &str, prediction: &str) -> bool {
    let (Some(gold), Some(pred)) = (parse_final_answer(gold), parse_final_answer(prediction))
    else {
        return false;
    };
    readings(&gold)
        .iter()
        .any(|g| readings(&pred).iter().any(|p| g.equals(p)))
}

/// The computed number `text` ends its final answer with: the last number in its
/// [`final_answer_span`], unless that number is an operand of an expression left uncomputed
/// (preceded by `+ - * / × ÷ ^`, `\times`, `\cdot` or `\div`). `9 + 1 = 10` gives `10`,
/// `2 - 5 = -3` gives `-3`, `9 + 1` and `3 - 3 + 7` give `None`.
pub fn final_number(text: &str) -> Option<String> {
    let span = final_answer_span(text);
    let m = NUMBER.find_iter(span).last()?;
    let before = span[..m.start()].trim_end();
    let signed = before.strip_suffix('-').filter(|rest| {
        !rest
            .trim_end()
            .ends_with(|c: char| c.is_alphanumeric() || c == ')' || c == '}')
    });
    let rest = signed.map_or(before, str::trim_end);
    let operand = rest.ends_with(['+', '-', '*', '/', '×', '÷', '^', '−'])
        || ["\\times", "\\cdot", "\\div"]
            .iter()
            .any(|op| rest.ends_with(op));
    if operand {
        return None;
    }
    Some(format!(
        "{}{}",
        if signed.is_some() { "-" } else { "" },
        m.as_str().replace(',', "")
    ))
}

/// Whether `prediction`'s [`final_number`] equals `gold`'s, as numbers (`16.0` equals `16`,
/// `1,000` equals `1000`). Unlike [`answers_match`], the answer must be computed: a restated
/// question (`9 + 1` for 10, `\boxed{9+1}`) is wrong, as in reasoning-gym's own scoring of its
/// arithmetic tasks.
pub fn numbers_match(gold: &str, prediction: &str) -> bool {
    let number = |text: &str| math_expression::parse(&final_number(text)?);
    match (number(gold), number(prediction)) {
        (Some(g), Some(p)) => g.equals(&p),
        _ => false,
    }
}

/// An expression and, when it is a top-level percentage, its number without the percent sign.
fn readings(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Percent(inner) => vec![e, inner],
        _ => vec![e],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answer_is_found_in_common_formats() {
        assert_eq!(
            final_answer_span("so \\boxed{\\frac{1}{2}} done"),
            "\\frac{1}{2}"
        );
        assert_eq!(final_answer_span("work\n#### 1,000\n"), "1,000");
        assert_eq!(final_answer_span("<answer> 70 </answer>"), "70");
        assert_eq!(final_answer_span("The answer is 17."), "17.");
        assert_eq!(final_answer_span("Answer: -3"), "-3");
        assert_eq!(final_answer_span("\\boxed{unclosed"), "\\boxed{unclosed");
    }

    #[test]
    fn numbers_match_needs_a_computed_number() {
        for (gold, prediction, expected) in [
            ("10", "10", true),
            ("10", "\\boxed{10}", true),
            ("10", "9 + 1 = 10", true),
            ("16", "10 + 6 - 0 = 16.", true),
            ("16", "The answer is 16.0", true),
            ("1000", "\\boxed{1,000}", true),
            ("-3", "2 - 5 = -3", true),
            ("10", "9 + 1", false),
            ("10", "\\boxed{9+1}", false),
            ("7", "3 - 3 + 7", false),
            ("12", "\\boxed{3 \\times 4}", false),
            ("4", "3 - 3 + 7", false),
            ("10", "no answer", false),
        ] {
            assert_eq!(
                numbers_match(gold, prediction),
                expected,
                "{gold} vs {prediction}"
            );
            if expected {
                assert!(answers_match(gold, prediction), "{gold} vs {prediction}");
            }
        }
        // The restated question that `answers_match` accepts.
        assert!(answers_match("10", "9 + 1"));
    }

    #[test]
    fn answers_match_across_notations() {
        for (gold, pred) in [
            ("42", "\\boxed{42}"),
            ("42", "#### 42"),
            ("42", "42.0"),
            ("1000", "1,000"),
            ("0.75", "\\frac{3}{4}"),
            ("0.5", "50%"),
            ("50", "50%"),
            ("-4", "The total is -4"),
            ("70", "12 x 2 = 24, so there are 70 students in total"),
        ] {
            assert!(answers_match(gold, pred), "{gold} vs {pred}");
        }
        for (gold, pred) in [
            ("42", "41"),
            ("42", ""),
            ("-3", "3"),
            ("3", "the answer is x"),
            ("3", "x-3"),
        ] {
            assert!(!answers_match(gold, pred), "{gold} vs {pred}");
        }
    }

    #[test]
    fn subtraction_is_not_a_negative_sign() {
        assert_eq!(last_number("10-3").as_deref(), Some("3"));
        assert_eq!(last_number("is -3").as_deref(), Some("-3"));
        assert_eq!(last_number("none"), None);
    }
}
