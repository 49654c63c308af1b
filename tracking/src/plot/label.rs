//! Axis labels with units, read from metric names.

/// The y-axis label for a metric, with its unit when the name tells it. kaizen's metric names
/// follow these conventions (see `docs/tracking.md`):
///
/// | name | label |
/// |---|---|
/// | `…_per_s` (`tokens_per_s`) | `tokens/s` |
/// | `…_s`, `…_seconds` / `…_ms` | `… (s)` / `… (ms)` |
/// | `…_bytes` | `… (bytes)` |
/// | words `kl` / `entropy` | `… (nats)` / `… (nats/token)` |
/// | words `accuracy`, `acc`, `frac`, `rate` | `… (fraction, 0–1)` |
/// | words `delta` (`delta_t1_t2`) | `… (difference)` |
/// | anything else | the name itself |
pub fn axis_label(key: &str) -> String {
    let words = crate::metric::name_words(key);
    let has = |w: &str| words.iter().any(|x| x == w);
    let n = words.len();
    if n >= 3 && words[n - 2] == "per" && words[n - 1] == "s" {
        return format!("{}/s", words[..n - 2].join(" "));
    }
    let unit = match words.last().map(String::as_str) {
        Some("s" | "seconds" | "secs") => Some("s"),
        Some("ms") => Some("ms"),
        Some("bytes") => Some("bytes"),
        _ if has("kl") => Some("nats"),
        _ if has("entropy") => Some("nats/token"),
        _ if ["accuracy", "acc", "frac", "fraction", "rate"]
            .iter()
            .any(|w| has(w)) =>
        {
            Some("fraction, 0–1")
        }
        _ if has("delta") || key.contains('Δ') => Some("difference"),
        _ => None,
    };
    match unit {
        Some(unit) => format!("{key} ({unit})"),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_naming_conventions() {
        assert_eq!(axis_label("tokens_per_s"), "tokens/s");
        assert_eq!(axis_label("step_time_s"), "step_time_s (s)");
        assert_eq!(axis_label("gen_ms"), "gen_ms (ms)");
        assert_eq!(axis_label("approx_kl"), "approx_kl (nats)");
        assert_eq!(axis_label("entropy"), "entropy (nats/token)");
        assert_eq!(axis_label("accuracy_t2"), "accuracy_t2 (fraction, 0–1)");
        assert_eq!(axis_label("delta_t1_t2"), "delta_t1_t2 (difference)");
        assert_eq!(axis_label("reward"), "reward");
    }
}
