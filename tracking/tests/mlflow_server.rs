//! The MLflow mirror against a real MLflow server (started by `scripts/test.sh`): what is
//! logged reads back exactly through the REST API, refused entries and a wrong URI give clear
//! errors while logging goes on, and `sync_run` delivers local runs once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use kaizen_tracking::mlflow::{MlflowClient, sync_run};
use kaizen_tracking::{
    Error, LocalTracker, Metric, MlflowTracker, Params, RunSpec, RunStatus, StoredRun, Tracker,
    Trackers,
};

fn history(client: &MlflowClient, run_id: &str, key: &str) -> Vec<Metric> {
    let mut points = common::block_on(client.metric_history(run_id, key)).expect("get-history");
    points.sort_by_key(|m| m.step);
    points
}

#[test]
fn logged_run_reads_back_exactly_through_the_rest_api() {
    let Some(uri) = common::mlflow_uri() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec =
        RunSpec::new(common::unique("roundtrip"), "roundtrip").tag("suite", "kaizen-tracking");
    let tracker = MlflowTracker::start(&common::config(&uri), &spec, dir.path()).unwrap();

    // 150 params (two log-batch calls at MLflow's 100-param limit), one over the value limit.
    let mut config = serde_json::Map::new();
    for i in 0..150 {
        config.insert(format!("p{i:03}"), serde_json::json!(i));
    }
    config.insert(
        "learner".into(),
        serde_json::json!({ "lr": 1e-5, "notes": "x".repeat(7000) }),
    );
    let params = Params::flatten_json(&serde_json::Value::Object(config));
    tracker.log_params(&params);

    // 3 keys x 900 steps = 2700 points (several 1000-metric batches), plus non-finite values.
    let t0 = 1_795_535_848_185i64;
    for step in 0..900u64 {
        let t = t0 + step as i64 * 37;
        tracker.log_metrics(&[
            Metric::at("reward", (step as f64).sin(), step, t),
            Metric::at("loss", 1.0 / (step as f64 + 1.0), step, t),
            Metric::at(
                "train/tokens_per_s",
                1000.0 + step as f64 * 0.25,
                step,
                t + 1,
            ),
        ]);
    }
    tracker.log_metrics(&[
        Metric::at("edge", f64::NAN, 0, t0),
        Metric::at("edge", 2.5, 1, t0),
    ]);

    let files = tempfile::tempdir().unwrap();
    let config_file = files.path().join("config.toml");
    let config_text = "[learner]\nlr = 1e-5\n";
    std::fs::write(&config_file, config_text).unwrap();
    tracker.log_artifact(&config_file, Some("config"));
    let samples = files.path().join("samples");
    std::fs::create_dir_all(samples.join("turn2")).unwrap();
    std::fs::write(samples.join("a.jsonl"), "{\"reward\":1}\n").unwrap();
    std::fs::write(samples.join("turn2/b.jsonl"), "{\"reward\":0}\n").unwrap();
    tracker.log_artifact(&samples, None);
    tracker.set_tags(&BTreeMap::from([("phase".to_owned(), "eval".to_owned())]));

    tracker
        .finish(RunStatus::Finished)
        .expect("everything delivered");
    let health = tracker.health();
    assert_eq!(health.pending, 0);
    assert_eq!(health.rejected, 0);
    let run_id = health.run_id.expect("run created");

    let client = common::client(&uri);
    let run = common::block_on(client.get_run(&run_id)).unwrap();
    assert_eq!(run.info.status, "FINISHED");
    assert_eq!(run.info.run_name, "roundtrip");
    assert!(run.info.end_time.unwrap() >= run.info.start_time.unwrap());
    assert_eq!(run.data.params.len(), 152);
    assert_eq!(run.param("p149"), Some("149"));
    assert_eq!(run.param("learner.lr"), Some("0.00001"));
    assert_eq!(
        run.param("learner.notes").map(str::len),
        Some(6000),
        "cut to MLflow's limit"
    );
    assert_eq!(run.tag("suite"), Some("kaizen-tracking"));
    assert_eq!(run.tag("phase"), Some("eval"));

    let reward = history(&client, &run_id, "reward");
    let loss = history(&client, &run_id, "loss");
    let tps = history(&client, &run_id, "train/tokens_per_s");
    for points in [&reward, &loss, &tps] {
        assert_eq!(points.len(), 900);
        assert!(points.iter().enumerate().all(|(i, p)| p.step == i as u64));
    }
    for (i, p) in reward.iter().enumerate() {
        assert_eq!(p.value, (i as f64).sin(), "reward at step {i}");
        assert_eq!(p.timestamp, t0 + i as i64 * 37);
    }
    assert_eq!(loss[899].value, 1.0 / 900.0);
    assert_eq!(tps[10].value, 1002.5);
    assert_eq!(tps[10].timestamp, t0 + 371);
    let edge = history(&client, &run_id, "edge");
    assert!(edge[0].value.is_nan());
    assert_eq!(edge[1].value, 2.5);

    let root: Vec<String> = common::block_on(client.list_artifacts(&run_id, None))
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(root, vec!["config", "samples"]);
    let config_dir = common::block_on(client.list_artifacts(&run_id, Some("config"))).unwrap();
    assert_eq!(config_dir[0].path, "config/config.toml");
    assert_eq!(config_dir[0].file_size, Some(config_text.len() as u64));
    let nested = common::block_on(client.list_artifacts(&run_id, Some("samples/turn2"))).unwrap();
    assert_eq!(nested[0].path, "samples/turn2/b.jsonl");

    // Everything acknowledged: the spool holds nothing.
    let spool = std::fs::read_to_string(dir.path().join("mlflow/spool.jsonl")).unwrap();
    assert!(spool.is_empty(), "{} bytes left in the spool", spool.len());
}

#[test]
fn refused_entries_report_the_server_message_and_the_rest_arrives() {
    let Some(uri) = common::mlflow_uri() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = RunSpec::new(common::unique("refused"), "refused");
    let tracker = MlflowTracker::start(&common::config(&uri), &spec, dir.path()).unwrap();
    tracker.log_params(&[("lr", "1")].into_iter().collect());
    for step in 0..50 {
        tracker.log_metrics(&[Metric::at("loss", step as f64, step, 1000)]);
    }
    // Wait until the param has reached the server, so that the change below is a change.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tracker.health().delivered < 51 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A changed param (HTTP 400 from the server) and a name MLflow refuses (caught locally),
    // among good metrics in the same batches.
    tracker.log_params(&[("lr", "2")].into_iter().collect());
    for step in 50..100 {
        tracker.log_metrics(&[
            Metric::at("loss", step as f64, step, 1000),
            Metric::at("Δ(t1→t2)", 0.1, step, 1000),
        ]);
    }
    let err = tracker.finish(RunStatus::Finished).unwrap_err();
    let Error::EntriesRefused {
        rejected, first, ..
    } = &err
    else {
        panic!("expected EntriesRefused, got {err}");
    };
    assert_eq!(*rejected, 51, "{err}");
    assert!(err.to_string().contains("rejected.jsonl"), "{err}");
    assert!(first.contains("Δ(t1→t2)"), "{first}");
    let refused = std::fs::read_to_string(dir.path().join("mlflow/rejected.jsonl")).unwrap();
    assert!(
        refused.contains("Changing param values is not allowed") && refused.contains("HTTP 400"),
        "{refused}"
    );
    assert!(tracker.last_error().is_some());

    let run_id = tracker.mlflow_run_id().unwrap();
    let client = common::client(&uri);
    let loss = history(&client, &run_id, "loss");
    assert_eq!(loss.len(), 100, "every good metric arrived once");
    let run = common::block_on(client.get_run(&run_id)).unwrap();
    assert_eq!(run.param("lr"), Some("1"));
    assert_eq!(run.info.status, "FINISHED");
}

#[test]
fn wrong_uri_fails_clearly_while_logging_goes_on_and_sync_delivers_later() {
    let Some(uri) = common::mlflow_uri() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let spec = RunSpec::new(common::unique("wrong-uri"), "wrong-uri");
    let local = LocalTracker::start(root.path(), &spec).unwrap();
    let run_dir = local.run_dir().to_owned();
    // Port 9 (discard) is closed on test machines: connection refused.
    let mut wrong = common::config("http://127.0.0.1:9");
    wrong.shutdown_timeout = Duration::from_millis(500);
    let mirror = MlflowTracker::start(&wrong, &spec, &run_dir).unwrap();
    let trackers = Trackers::new().with(local).with(mirror);
    trackers.log_params(&[("group_size", "8")].into_iter().collect());
    for step in 0..2000u64 {
        trackers.log_metrics(&[Metric::at(
            "reward",
            step as f64 / 2000.0,
            step,
            5000 + step as i64,
        )]);
    }
    let err = trackers
        .finish(RunStatus::Finished)
        .unwrap_err()
        .to_string();
    for part in [
        "127.0.0.1:9",
        "unreachable",
        "kaizen runs sync",
        "2002 entries",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // The local run store has everything regardless.
    let stored = StoredRun::open(&run_dir).unwrap();
    assert_eq!(stored.record.status, RunStatus::Finished);
    assert_eq!(
        stored.metrics().unwrap().series("reward").unwrap().len(),
        2000
    );
    assert_eq!(stored.mirror.as_ref().unwrap().pending, 2002);

    // Later, against the right server: delivered once, and a second sync sends nothing.
    let report = sync_run(&run_dir, &common::config(&uri)).unwrap();
    assert_eq!((report.imported, report.delivered), (0, 2002));
    let run_id = report.mlflow_run_id.unwrap();
    let again = sync_run(&run_dir, &common::config(&uri)).unwrap();
    assert_eq!((again.imported, again.delivered), (0, 0));
    let client = common::client(&uri);
    let reward = history(&client, &run_id, "reward");
    assert_eq!(reward.len(), 2000);
    assert_eq!(reward[1999].value, 1999.0 / 2000.0);
    let run = common::block_on(client.get_run(&run_id)).unwrap();
    assert_eq!(run.info.status, "FINISHED");
    assert_eq!(run.param("group_size"), Some("8"));
}

#[test]
fn local_run_syncs_once_and_later_syncs_add_only_what_is_new() {
    let Some(uri) = common::mlflow_uri() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let spec = RunSpec::new(common::unique("sync"), "sync").tag("git", "abc123");
    let local = LocalTracker::start(root.path(), &spec).unwrap();
    local.log_params(&[("learner.lr", "1e-5")].into_iter().collect());
    for step in 0..1500u64 {
        local.log_metric("loss", 1.0 / (step as f64 + 1.0), step);
    }
    let file = root.path().join("config.toml");
    std::fs::write(&file, "lr = 1e-5\n").unwrap();
    local.log_artifact(&file, Some("config"));
    let run_dir = local.run_dir().to_owned();
    local.finish(RunStatus::Killed).unwrap();

    let config = common::config(&uri);
    let first = sync_run(&run_dir, &config).unwrap();
    // 1 param + 1500 metrics + 1 artifact + status.
    assert_eq!((first.imported, first.delivered), (1503, 1503));
    let second = sync_run(&run_dir, &config).unwrap();
    assert_eq!((second.imported, second.delivered), (0, 0));
    let run_id = first.mlflow_run_id.clone().unwrap();
    assert_eq!(second.mlflow_run_id.as_deref(), Some(run_id.as_str()));

    // The run is resumed and grows; the next sync sends only the new points and status.
    let resumed = LocalTracker::resume(&run_dir).unwrap();
    for step in 1500..1600u64 {
        resumed.log_metric("loss", 1.0 / (step as f64 + 1.0), step);
    }
    resumed.finish(RunStatus::Finished).unwrap();
    let third = sync_run(&run_dir, &config).unwrap();
    assert_eq!((third.imported, third.delivered), (101, 101));

    let client = common::client(&uri);
    let loss = history(&client, &run_id, "loss");
    assert_eq!(loss.len(), 1600);
    assert!(loss.iter().enumerate().all(|(i, p)| p.step == i as u64));
    let run = common::block_on(client.get_run(&run_id)).unwrap();
    assert_eq!(run.info.status, "FINISHED");
    assert_eq!(run.tag("git"), Some("abc123"));
    assert_eq!(run.param("learner.lr"), Some("1e-5"));
    let artifacts = common::block_on(client.list_artifacts(&run_id, Some("config"))).unwrap();
    assert_eq!(artifacts[0].path, "config/config.toml");
}

#[test]
fn entries_spooled_while_the_server_was_unreachable_are_delivered_at_the_next_start() {
    let Some(uri) = common::mlflow_uri() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = RunSpec::new(common::unique("next-start"), "next-start");
    // First process: the server cannot be reached, and the process ends without `finish`.
    let mut unreachable = common::config("http://127.0.0.1:9");
    unreachable.drop_timeout = Duration::from_millis(100);
    let first = MlflowTracker::start(&unreachable, &spec, dir.path()).unwrap();
    for step in 0..500u64 {
        first.log_metric("loss", step as f64, step);
    }
    drop(first);
    // The job is resumed with the server reachable: the spool goes first, then the new points.
    let second = MlflowTracker::start(&common::config(&uri), &spec, dir.path()).unwrap();
    for step in 500..700u64 {
        second.log_metric("loss", step as f64, step);
    }
    second.finish(RunStatus::Finished).unwrap();
    let run_id = second.mlflow_run_id().unwrap();
    let loss = history(&common::client(&uri), &run_id, "loss");
    assert_eq!(loss.len(), 700);
    assert!(
        loss.iter()
            .enumerate()
            .all(|(i, p)| p.step == i as u64 && p.value == i as f64)
    );
}
