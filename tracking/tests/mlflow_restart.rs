//! The MLflow server goes away in the middle of a run and comes back: every metric arrives
//! exactly once. The test starts and stops its own server (same lean flags as
//! `scripts/lib/mlflow.sh`) with the venv python that `scripts/test.sh` exports.

mod common;

use std::time::{Duration, Instant};

use kaizen_tracking::{Metric, MlflowTracker, RunSpec, RunStatus, Tracker};

const KEYS: [&str; 2] = ["reward", "loss"];

fn log_steps(tracker: &MlflowTracker, steps: std::ops::Range<u64>) {
    for step in steps {
        let t = 1_795_000_000_000 + step as i64;
        tracker.log_metrics(&[
            Metric::at(KEYS[0], step as f64 * 0.5, step, t),
            Metric::at(KEYS[1], 1000.0 - step as f64, step, t),
        ]);
        if step % 25 == 0 {
            // Spread logging over time so that batches go out while the server is up.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_stopped_mid_run_then_restarted_gets_every_metric_exactly_once() {
    let Some(python) = common::mlflow_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::OwnServer::start(&python, &dir.path().join("server"));
    let uri = server.uri();
    let run_dir = dir.path().join("run");
    let spec = RunSpec::new(common::unique("restart"), "restart");
    let tracker = MlflowTracker::start(&common::config(&uri), &spec, &run_dir).unwrap();

    log_steps(&tracker, 0..300);
    wait_until(
        "the first 600 points are delivered",
        Duration::from_secs(60),
        || tracker.health().delivered >= 600,
    );

    server.stop();
    log_steps(&tracker, 300..600);
    wait_until(
        "the tracker notices the server is gone",
        Duration::from_secs(30),
        || {
            tracker
                .last_error()
                .is_some_and(|e| e.contains("unreachable"))
        },
    );
    assert!(
        tracker.health().pending > 0,
        "points must wait in the spool"
    );
    let spooled = std::fs::read_to_string(run_dir.join("mlflow/spool.jsonl")).unwrap();
    assert!(spooled.lines().count() >= tracker.health().pending);

    server.restart();
    log_steps(&tracker, 600..900);
    tracker
        .finish(RunStatus::Finished)
        .expect("all delivered after the restart");

    let run_id = tracker.mlflow_run_id().unwrap();
    let client = common::client(&uri);
    for key in KEYS {
        let mut points = common::block_on(client.metric_history(&run_id, key)).unwrap();
        assert_eq!(points.len(), 900, "{key}: every point exactly once");
        points.sort_by_key(|p| p.step);
        for (i, p) in points.iter().enumerate() {
            assert_eq!(p.step, i as u64, "{key}");
            let expected = if key == "reward" {
                i as f64 * 0.5
            } else {
                1000.0 - i as f64
            };
            assert_eq!(p.value, expected, "{key} at step {i}");
        }
    }
    let run = common::block_on(client.get_run(&run_id)).unwrap();
    assert_eq!(run.info.status, "FINISHED");
}
