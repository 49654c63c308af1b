//! How the MLflow mirror reacts to a server that answers with errors: 5xx and 429 are retried
//! with backoff while logging goes on; 401/403/404 stop delivery at once; either way `finish`
//! reports what was not delivered and everything stays spooled for `kaizen runs sync`.

mod common;

use std::time::Duration;

use kaizen_tracking::{Error, MlflowConfig, MlflowTracker, RunSpec, RunStatus, Tracker};

/// Runs a short tracker against a fake server answering `status` to everything; returns the
/// `finish` error, the tracker's health and how many requests the server got.
fn against(status: &'static str) -> (Error, kaizen_tracking::mlflow::MirrorHealth, usize) {
    let body =
        format!(r#"{{"error_code":"TEMPORARILY_UNAVAILABLE","message":"server says {status}"}}"#);
    let (uri, requests) = common::fake_server(move |_| (status, body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut config = MlflowConfig::with_env(&uri, |_| None).unwrap();
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.shutdown_timeout = Duration::from_millis(800);
    let tracker =
        MlflowTracker::start(&config, &RunSpec::new("retry", "retry"), dir.path()).unwrap();
    for step in 0..100 {
        tracker.log_metric("loss", step as f64, step);
    }
    let error = tracker.finish(RunStatus::Finished).unwrap_err();
    let health = tracker.health();
    let spooled = std::fs::read_to_string(dir.path().join("mlflow/spool.jsonl")).unwrap();
    assert_eq!(
        spooled.lines().count(),
        101,
        "100 metrics and the status stay spooled"
    );
    let count = requests.lock().unwrap().len();
    (error, health, count)
}

#[test]
fn server_errors_are_retried_with_backoff_until_the_timeout() {
    for status in [
        "503 Service Unavailable",
        "429 Too Many Requests",
        "500 Internal Server Error",
    ] {
        let (error, health, requests) = against(status);
        let message = error.to_string();
        assert!(
            matches!(error, Error::NotDelivered { pending: 101, .. }),
            "{message}"
        );
        assert!(
            message.contains(&status[..3]) && message.contains("kaizen runs sync"),
            "{message}"
        );
        assert_eq!(health.stopped, None, "{status} must not stop delivery");
        // 800 ms of backoff starting at 20 ms, doubling up to 100 ms: several attempts.
        assert!(requests >= 4, "{status}: only {requests} requests");
    }
}

#[test]
fn client_errors_other_than_400_stop_delivery_at_once() {
    for status in ["401 Unauthorized", "403 Forbidden", "404 Not Found"] {
        let (error, health, requests) = against(status);
        let message = error.to_string();
        assert!(
            matches!(error, Error::NotDelivered { pending: 101, .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("server says {status}")),
            "{message}"
        );
        assert!(health.stopped.is_some(), "{status} must stop delivery");
        assert_eq!(requests, 1, "{status}: no retries");
    }
}
