//! A run's metric history and its summaries (last, min, max, best).

use std::collections::BTreeMap;

use crate::Metric;

/// One point of a metric's history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Training step.
    pub step: u64,
    /// Value (may be NaN).
    pub value: f64,
    /// Wall-clock time, ms since the Unix epoch.
    pub timestamp: i64,
}

/// Every metric of a run: key → points in logging order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricHistory {
    series: BTreeMap<String, Vec<Point>>,
}

/// Whether larger or smaller values of a metric are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Larger is better (reward, accuracy, tokens/s).
    Maximize,
    /// Smaller is better (loss, KL, error, time).
    Minimize,
}

impl Goal {
    /// The goal kaizen assumes for a metric name: names whose words include `loss`, `kl`,
    /// `error`, `err`, `lag`, `perplexity`, `ppl`, `time`, or that end in a time unit (`_s`,
    /// `_ms`), are minimised; everything else (reward, accuracy, ...) is maximised.
    pub fn for_metric(key: &str) -> Self {
        const LOWER_IS_BETTER: &[&str] = &[
            "loss",
            "kl",
            "error",
            "err",
            "lag",
            "perplexity",
            "ppl",
            "time",
        ];
        let words = crate::metric::name_words(key);
        let per_second = words.windows(2).any(|w| w[0] == "per" && w[1] == "s");
        let time_unit = matches!(words.last().map(String::as_str), Some("s" | "ms")) && !per_second;
        if time_unit || words.iter().any(|w| LOWER_IS_BETTER.contains(&w.as_str())) {
            Goal::Minimize
        } else {
            Goal::Maximize
        }
    }
}

/// What `kaizen runs show` prints for one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of points.
    pub count: usize,
    /// The last point logged.
    pub last: Point,
    /// The smallest value (NaN ignored; `last` if all are NaN).
    pub min: Point,
    /// The largest value (NaN ignored; `last` if all are NaN).
    pub max: Point,
    /// `max` or `min`, by [`Goal::for_metric`].
    pub best: Point,
    /// The goal used for `best`.
    pub goal: Goal,
}

impl MetricHistory {
    /// Adds a point.
    pub fn push(&mut self, metric: Metric) {
        self.series
            .entry(metric.key.into_owned())
            .or_default()
            .push(Point {
                step: metric.step,
                value: metric.value,
                timestamp: metric.timestamp,
            });
    }

    /// The points of `key`, in logging order.
    pub fn series(&self, key: &str) -> Option<&[Point]> {
        self.series.get(key).map(Vec::as_slice)
    }

    /// Metric keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// True when no metric was logged.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Last, min, max and best of `key`.
    pub fn summary(&self, key: &str) -> Option<Summary> {
        let points = self.series.get(key)?;
        let last = *points.last()?;
        let finite = || points.iter().filter(|p| !p.value.is_nan());
        let min = finite()
            .copied()
            .min_by(|a, b| a.value.total_cmp(&b.value))
            .unwrap_or(last);
        let max = finite()
            .copied()
            .max_by(|a, b| a.value.total_cmp(&b.value))
            .unwrap_or(last);
        let goal = Goal::for_metric(key);
        Some(Summary {
            count: points.len(),
            last,
            min,
            max,
            best: if goal == Goal::Maximize { max } else { min },
            goal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_picks_best_by_goal_and_ignores_nan() {
        let mut h = MetricHistory::default();
        for (step, v) in [(0, 0.2), (1, f64::NAN), (2, 0.9), (3, 0.5)] {
            h.push(Metric::at("reward", v, step, 0));
            h.push(Metric::at("loss", v, step, 0));
        }
        let reward = h.summary("reward").unwrap();
        assert_eq!(reward.count, 4);
        assert_eq!((reward.last.step, reward.last.value), (3, 0.5));
        assert_eq!((reward.best.step, reward.best.value), (2, 0.9));
        assert_eq!(reward.goal, Goal::Maximize);
        let loss = h.summary("loss").unwrap();
        assert_eq!((loss.best.step, loss.best.value), (0, 0.2));
        assert!(h.summary("missing").is_none());
    }

    #[test]
    fn goals_follow_metric_names() {
        for key in [
            "loss",
            "policy_loss",
            "approx_kl",
            "kl",
            "policy_lag",
            "step_time_s",
            "gen_ms",
        ] {
            assert_eq!(Goal::for_metric(key), Goal::Minimize, "{key}");
        }
        for key in [
            "reward",
            "accuracy_t2",
            "tokens_per_s",
            "delta_t1_t2",
            "entropy",
        ] {
            assert_eq!(Goal::for_metric(key), Goal::Maximize, "{key}");
        }
    }
}
