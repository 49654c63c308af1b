//! REST throughput against a local MLflow server (metrics per second).
//!
//! Needs a server: `scripts/bench/mlflow-rest.sh` starts the lean one from
//! `scripts/lib/mlflow.sh` and runs this with `KAIZEN_BENCH_MLFLOW_URI` set.
//!
//! - `log_batch/1000`: one `runs/log-batch` request with 1000 metrics (MLflow's maximum).
//! - `log_batch/1`: one request with one metric (the latency floor).
//! - `tracker/20000`: 20 000 metrics through `MlflowTracker` (10 per call), from the first call
//!   until `finish` returns with everything delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaizen_tracking::mlflow::{Credentials, LogBatch, MlflowClient, TrackingUri};
use kaizen_tracking::{Metric, MlflowConfig, MlflowTracker, RunSpec, RunStatus, Tracker};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn rest(c: &mut Criterion) {
    let Ok(uri) = std::env::var("KAIZEN_BENCH_MLFLOW_URI") else {
        eprintln!(
            "mlflow_rest: KAIZEN_BENCH_MLFLOW_URI is not set; run scripts/bench/mlflow-rest.sh"
        );
        return;
    };
    let rt = runtime();
    let (parsed, _) = TrackingUri::parse(&uri).expect("uri");
    let client =
        MlflowClient::new(parsed, Credentials::none(), Duration::from_secs(60)).expect("client");
    let experiment = format!("bench-{}", kaizen_tracking::now_ms());
    let experiment_id = rt
        .block_on(client.experiment_id(&experiment))
        .expect("experiment");
    let run = rt
        .block_on(client.create_run(&experiment_id, "rest", kaizen_tracking::now_ms(), &[]))
        .expect("run");
    // Fresh steps every request, so the server never takes its duplicate path.
    let step = AtomicU64::new(0);
    let batch = |n: u64| LogBatch {
        metrics: (0..n)
            .map(|_| {
                let s = step.fetch_add(1, Ordering::Relaxed);
                Metric::at("loss", s as f64, s, 1_795_000_000_000 + s as i64)
            })
            .collect(),
        ..LogBatch::default()
    };

    let mut group = c.benchmark_group("mlflow_rest");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in [1000u64, 1] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("log_batch/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let body = batch(n);
                    let start = Instant::now();
                    rt.block_on(client.log_batch(&run.run_id, &body))
                        .expect("log-batch");
                    total += start.elapsed();
                }
                total
            })
        });
    }
    const TRACKED: u64 = 20_000;
    group.throughput(Throughput::Elements(TRACKED));
    group.bench_function(format!("tracker/{TRACKED}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("dir");
                let config = MlflowConfig::with_env(&uri, |_| None).expect("config");
                let spec = RunSpec::new(experiment.clone(), "tracker");
                let start = Instant::now();
                let tracker = MlflowTracker::start(&config, &spec, dir.path()).expect("tracker");
                for s in 0..TRACKED / 10 {
                    let metrics: Vec<Metric> = (0..10)
                        .map(|k| {
                            Metric::at(format!("m{k}"), s as f64, s, 1_795_000_000_000 + s as i64)
                        })
                        .collect();
                    tracker.log_metrics(&metrics);
                }
                tracker.finish(RunStatus::Finished).expect("delivered");
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, rest);
criterion_main!(benches);
