//! Strategy choice (SMART; Liu et al. 2025, "SMART: Self-learning Meta-strategy Agent for
//! Reasoning Tasks", <https://arxiv.org/abs/2410.16128>): the policy is offered a menu of ways
//! to solve a problem — answer directly, reason step by step, or write a program and run it —
//! names the one it follows, and may switch on a later attempt. The strategy that finally
//! succeeded is relabelled onto the first attempt for training by the self-generated warm
//! start (`sft.self_generated.relabel_first`), so the model learns to pick the winning
//! strategy at once.

use serde::{Deserialize, Serialize};

use super::code::fenced_blocks;

/// A way to solve a problem (one entry of `self_correct`'s `strategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the final answer.
    Direct,
    /// Reasoning written out, then the final answer (chain of thought).
    StepByStep,
    /// A Python program that prints the answer, run in the sandbox; what it prints is the
    /// attempt's answer (program of thought).
    Program,
}

impl Strategy {
    /// Every strategy, in menu order.
    pub const ALL: [Strategy; 3] = [Strategy::Direct, Strategy::StepByStep, Strategy::Program];

    /// The name the policy declares (`Strategy: <name>`) and metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::StepByStep => "step_by_step",
            Strategy::Program => "program",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Strategy::Direct => "give only the final answer, like \\boxed{5}.",
            Strategy::StepByStep => {
                "work it out step by step, then give the final answer, like \\boxed{5}."
            }
            Strategy::Program => {
                "write a Python program in a ```python block that prints the final answer."
            }
        }
    }
}

/// The menu shown with the question: one line per offered strategy, and how to declare one.
/// A menu of one strategy is its instruction alone ("Write a Python program in a ```python
/// block that prints the final answer.").
pub fn menu(offered: &[Strategy]) -> String {
    if let [only] = offered {
        let describe = only.describe();
        let mut chars = describe.chars();
        return chars.next().map_or_else(String::new, |c| {
            c.to_uppercase().chain(chars).collect::<String>()
        });
    }
    let mut text = String::from(
        "Choose one of these strategies and start your reply with its name, like \
         \"Strategy: ",
    );
    text.push_str(offered.first().map_or("direct", |s| s.name()));
    text.push_str("\":");
    for s in offered {
        text.push_str(&format!("\n- {}: {}", s.name(), s.describe()));
    }
    text
}

/// The strategy a reply follows, and whether it declared it: a declaration `Strategy: <name>`
/// in the reply's first line (case-insensitive; spaces or hyphens for `_`) of an offered
/// strategy, else the reply's shape among the offered ones — a fenced code block is a program,
/// more than one non-empty line is step by step, anything else direct — falling back to the
/// first offered strategy when the shape's is not on the menu.
pub fn chosen(reply: &str, offered: &[Strategy]) -> (Strategy, bool) {
    let first_line = reply
        .trim_start()
        .lines()
        .next()
        .unwrap_or("")
        .to_lowercase();
    if let Some(at) = first_line.find("strategy") {
        let named = first_line[at + "strategy".len()..]
            .trim_start_matches([':', ' ', '-', '*', '='])
            .replace([' ', '-'], "_");
        // The longest name first: `step_by_step` before a name that prefixes it.
        let mut by_length: Vec<&Strategy> = offered.iter().collect();
        by_length.sort_by_key(|s| std::cmp::Reverse(s.name().len()));
        if let Some(s) = by_length.into_iter().find(|s| named.starts_with(s.name())) {
            return (*s, true);
        }
    }
    let shape = if program(reply).is_some() {
        Strategy::Program
    } else if reply.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
        Strategy::StepByStep
    } else {
        Strategy::Direct
    };
    let fallback = offered.first().copied().unwrap_or(Strategy::Direct);
    (
        if offered.contains(&shape) {
            shape
        } else {
            fallback
        },
        false,
    )
}

/// The program of a reply: its first closed fenced block, else an unclosed last one; `None`
/// without a block.
pub fn program(reply: &str) -> Option<&str> {
    let (closed, unclosed) = fenced_blocks(reply);
    closed.first().copied().or(unclosed)
}

/// The answer a program printed: its last non-empty line of output, trimmed.
pub fn printed_answer(stdout: &str) -> &str {
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_strategy_wins_over_the_replys_shape() {
        let all = Strategy::ALL;
        assert_eq!(
            chosen("Strategy: program\n\\boxed{4}", &all),
            (Strategy::Program, true)
        );
        assert_eq!(
            chosen("strategy - Step by step\n2+2=4", &all),
            (Strategy::StepByStep, true)
        );
        assert_eq!(
            chosen("**Strategy:** direct \\boxed{4}", &all),
            (Strategy::Direct, true)
        );
        // Not on the menu: read from the shape instead.
        let no_program = [Strategy::Direct, Strategy::StepByStep];
        assert_eq!(
            chosen("Strategy: program\nx", &no_program),
            (Strategy::StepByStep, false)
        );
    }

    #[test]
    fn an_undeclared_strategy_is_read_from_the_replys_shape() {
        let all = Strategy::ALL;
        assert_eq!(
            chosen("```python\nprint(4)\n```", &all),
            (Strategy::Program, false)
        );
        assert_eq!(
            chosen("2 + 2 = 4\nSo \\boxed{4}", &all),
            (Strategy::StepByStep, false)
        );
        assert_eq!(chosen("\\boxed{4}", &all), (Strategy::Direct, false));
        // A shape off the menu falls back to the first offered strategy.
        assert_eq!(
            chosen("\\boxed{4}", &[Strategy::Program]),
            (Strategy::Program, false)
        );
    }

    #[test]
    fn the_menu_lists_the_offered_strategies_and_programs_print_their_answer() {
        assert_eq!(
            menu(&[Strategy::Program]),
            "Write a Python program in a ```python block that prints the final answer."
        );
        let text = menu(&[Strategy::StepByStep, Strategy::Program]);
        assert!(text.contains("\"Strategy: step_by_step\""), "{text}");
        assert!(text.contains("- program: write a Python program"), "{text}");
        assert!(!text.contains("- direct"), "{text}");
        assert_eq!(
            program("Strategy: program\n```python\nprint(2+2)\n```\nDone"),
            Some("print(2+2)\n")
        );
        assert_eq!(
            program("```\nprint(1)"),
            Some("print(1)"),
            "cut off by the budget"
        );
        assert_eq!(program("\\boxed{4}"), None);
        assert_eq!(printed_answer("1\n4\n\n"), "4");
        assert_eq!(printed_answer(""), "");
    }
}
