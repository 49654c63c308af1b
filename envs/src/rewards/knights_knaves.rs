//! Answer checking for knights-and-knaves puzzles (reasoning-gym's `knights_knaves` family),
//! whose gold answer is a sentence such as "Zoey is a fool, and Riley is a sage.".

use std::collections::BTreeSet;

use super::math_answer::final_answer_span;

/// The role words of reasoning-gym's knight/knave pairs (`knight`/`knave`, `sage`/`fool`, ...).
const ROLES: [&str; 14] = [
    "knight", "knave", "pioneer", "laggard", "saint", "sinner", "hero", "villain", "angel",
    "devil", "altruist", "egoist", "sage", "fool",
];

/// The `(name, role)` assignments stated in `text`, lower-cased, order-free: every role word
/// is paired with the last name before it (`"Zoey is a fool, and Riley is a sage"` gives
/// `{(zoey, fool), (riley, sage)}`).
pub fn assignments(text: &str) -> BTreeSet<(String, String)> {
    let cleaned = text.to_lowercase().replace(['.', ',', '(', ')', '*'], " ");
    let mut out = BTreeSet::new();
    let mut name: Option<&str> = None;
    for word in cleaned.split_whitespace() {
        match word {
            "is" | "a" | "an" | "and" => {}
            w if ROLES.contains(&w) => {
                if let Some(n) = name.take() {
                    out.insert((n.to_string(), w.to_string()));
                }
            }
            w => name = Some(w),
        }
    }
    out
}

/// Whether the final answer of `response` states exactly the assignments of `gold`. The answer
/// is the [`final_answer_span`]; without an answer marker, the last non-empty line.
pub fn knights_knaves_match(gold: &str, response: &str) -> bool {
    let span = final_answer_span(response);
    let span = if span == response.trim() {
        span.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    } else {
        span
    };
    let expected = assignments(gold);
    !expected.is_empty() && assignments(span) == expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_ignore_order_and_punctuation() {
        let gold = "Zoey is a fool, and Riley is a sage.";
        assert!(knights_knaves_match(
            gold,
            "Riley is a sage and Zoey is a fool"
        ));
        assert!(knights_knaves_match(
            gold,
            "thinking...\n<answer>Zoey is a fool, and Riley is a sage.</answer>"
        ));
        assert!(!knights_knaves_match(
            gold,
            "Zoey is a sage, and Riley is a fool."
        ));
        assert!(!knights_knaves_match(gold, "Zoey is a fool."));
        assert!(!knights_knaves_match(gold, ""));
    }
}
