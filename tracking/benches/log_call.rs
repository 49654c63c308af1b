//! Cost of a logging call on the caller's (training) thread.
//!
//! `burst`: calls while the queue has room (the normal case: training logs a few calls per
//! step); every 16 384 calls the tracker is replaced, outside the timed region, so the queue
//! never fills. `drained`: calls back to back on one tracker per sample (the queue fills and
//! calls wait), and the clock runs until the background thread has written everything (the
//! tracker is dropped inside the timed region): the full cost per call, i.e. how fast the
//! tracker writes. Samples are ~1 s long, so the background thread's poll interval (10 ms) adds
//! at most ~1 %.
//!
//! `cargo bench -p kaizen-tracking --bench log_call`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaizen_tracking::{
    LocalTracker, Metric, MlflowConfig, MlflowTracker, RunSpec, Tracker, Trackers,
};

const BURST: u64 = 16_384;

fn local(root: &Path) -> LocalTracker {
    LocalTracker::start(root, &RunSpec::new("bench", "log-call")).expect("local tracker")
}

/// An MLflow mirror whose server is unreachable: everything goes to the spool, which is what
/// the caller pays whatever the server does.
fn mirror(root: &Path) -> MlflowTracker {
    let mut config = MlflowConfig::with_env("http://127.0.0.1:9", |_| None).expect("uri");
    config.drop_timeout = Duration::ZERO;
    config.backoff_min = Duration::from_secs(3600);
    let dir = tempfile::tempdir_in(root).expect("dir").keep();
    MlflowTracker::start(&config, &RunSpec::new("bench", "log-call"), &dir).expect("mlflow tracker")
}

fn both(root: &Path) -> Trackers {
    let l = local(root);
    let dir = l.run_dir().to_owned();
    let mut config = MlflowConfig::with_env("http://127.0.0.1:9", |_| None).expect("uri");
    config.drop_timeout = Duration::ZERO;
    config.backoff_min = Duration::from_secs(3600);
    let m =
        MlflowTracker::start(&config, &RunSpec::new("bench", "log-call"), &dir).expect("mirror");
    Trackers::new().with(l).with(m)
}

/// Times `iters` calls: in chunks of at most `BURST` calls on a fresh tracker each, or with
/// `drained`, all on one tracker, the clock running until it has written everything.
fn timed<T: Tracker>(
    iters: u64,
    drained: bool,
    make: &dyn Fn(&Path) -> T,
    call: &dyn Fn(&T, u64),
) -> Duration {
    let root = tempfile::tempdir().expect("tempdir");
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = if drained {
            iters
        } else {
            BURST.min(iters - done)
        };
        let tracker = make(root.path());
        let start = Instant::now();
        for i in done..done + n {
            call(&tracker, i);
        }
        if drained {
            drop(tracker); // waits until the background thread has written everything
            total += start.elapsed();
        } else {
            total += start.elapsed();
            drop(tracker);
        }
        done += n;
    }
    total
}

fn one_metric<T: Tracker>(t: &T, i: u64) {
    t.log_metric("loss", black_box(i as f64), i);
}

fn eight_metrics<T: Tracker>(t: &T, i: u64) {
    let now = kaizen_tracking::now_ms();
    let v = black_box(i as f64);
    t.log_metrics(&[
        Metric::at("reward", v, i, now),
        Metric::at("accuracy_t1", v, i, now),
        Metric::at("accuracy_t2", v, i, now),
        Metric::at("delta_t1_t2", v, i, now),
        Metric::at("loss", v, i, now),
        Metric::at("approx_kl", v, i, now),
        Metric::at("entropy", v, i, now),
        Metric::at("tokens_per_s", v, i, now),
    ]);
}

fn log_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_call");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("burst/local/1_metric", |b| {
        b.iter_custom(|n| timed(n, false, &local, &one_metric))
    });
    group.bench_function("burst/local/8_metrics", |b| {
        b.iter_custom(|n| timed(n, false, &local, &eight_metrics))
    });
    group.bench_function("burst/mlflow/1_metric", |b| {
        b.iter_custom(|n| timed(n, false, &mirror, &one_metric))
    });
    group.bench_function("burst/local+mlflow/8_metrics", |b| {
        b.iter_custom(|n| timed(n, false, &both, &eight_metrics))
    });
    group.finish();

    let mut group = c.benchmark_group("log_call");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("drained/local/1_metric", |b| {
        b.iter_custom(|n| timed(n, true, &local, &one_metric))
    });
    group.bench_function("drained/local/8_metrics", |b| {
        b.iter_custom(|n| timed(n, true, &local, &eight_metrics))
    });
    group.bench_function("drained/local+mlflow/8_metrics", |b| {
        b.iter_custom(|n| timed(n, true, &both, &eight_metrics))
    });
    group.finish();
}

criterion_group!(benches, log_call);
criterion_main!(benches);
