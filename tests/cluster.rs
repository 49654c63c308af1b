//! Multi-process jobs through the `kaizen` binary (`kaizen launch`): a learner process serving
//! the coordinator and actor processes joining it over gRPC, on localhost and across network
//! namespaces; sync-mode results equal to one process; actor and learner processes killed with
//! SIGKILL mid-run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KAIZEN, assert_same, kaizen, metrics, run_dir, small_job, write};

/// A free TCP port on localhost (bound, read and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes killed when the test ends, pass or fail; their logs go to `<name>.log`.
struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str], env: &[(&str, String)]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    /// Waits for `name` to exit and asserts it succeeded, showing its log if not.
    fn wait_ok(&mut self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child(name).try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{name} failed ({status}):\n{}",
                    self.log(name)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still running after {timeout:?}:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    fn kill(&mut self, name: &str) {
        let child = self.child(name);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Metrics without those of where the actors run: the transport's (`cluster/*`), which only a
/// multi-process run logs, and the in-process engines' counters (`actors/*`), which only a
/// single-process run does.
fn job_metrics(run: &Path) -> BTreeMap<(String, u64), f64> {
    metrics(run)
        .into_iter()
        .filter(|((k, _), _)| !k.starts_with("cluster/") && !k.starts_with("actors/"))
        .collect()
}

/// The last value of `key` in a run's metrics.
fn last(run: &Path, key: &str) -> f64 {
    metrics(run)
        .into_iter()
        .filter(|((k, _), _)| k == key)
        .max_by_key(|((_, s), _)| *s)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{key} was never logged"))
}

/// `submitted = reported = trained + faulted + unused` at the end of a run.
fn assert_accounting_closes(run: &Path) {
    let submitted = last(run, "episodes/submitted");
    let reported = last(run, "episodes/reported");
    let trained = last(run, "episodes/trained");
    let faulted = last(run, "episodes/faulted");
    let unused = last(run, "episodes/unused");
    assert!(submitted > 0.0);
    assert_eq!(submitted, reported, "every submitted episode came back");
    assert_eq!(
        reported,
        trained + faulted + unused,
        "every report was trained, faulted or unused"
    );
}

/// Waits until the run under `runs/e2e/` has checkpoint `step`; returns the run directory.
fn wait_for_checkpoint(runs: &Path, step: u64, procs: &mut Procs, learner: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let found = std::fs::read_dir(runs.join("e2e"))
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
            .filter(|p| p.join(format!("checkpoints/step-{step:06}")).is_dir());
        if let Some(p) = found {
            return p;
        }
        assert!(Instant::now() < deadline, "no checkpoint {step} appeared");
        assert!(
            procs.child(learner).try_wait().unwrap().is_none(),
            "the learner ended early:\n{}",
            procs.log(learner)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// torchrun's variables for rank `rank` of `world` with the coordinator on `port`.
fn torchrun(rank: usize, world: usize, addr: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("MASTER_ADDR", addr.to_string()),
        ("MASTER_PORT", port.to_string()),
    ]
}

#[test]
fn a_learner_and_two_actor_processes_match_one_process_in_sync_mode() {
    let tmp = tempfile::tempdir().unwrap();
    // One process, two actors (decode engines).
    let runs_a = tmp.path().join("a");
    let cfg_a = write(tmp.path(), "a.toml", &small_job(&runs_a, 3));
    kaizen(&[
        "train",
        cfg_a.to_str().unwrap(),
        "--no-progress",
        "--set",
        "actors.count=2",
    ]);

    // Three processes started as torchrun starts them: rank 0 learns, ranks 1-2 act (one
    // engine each, so groups split across engines as in the single process).
    let runs_b = tmp.path().join("b");
    let cfg_b = write(tmp.path(), "b.toml", &small_job(&runs_b, 3));
    let port = free_port();
    let mut procs = Procs::new(tmp.path());
    let cfg = cfg_b.to_str().unwrap();
    procs.spawn(
        "learner",
        KAIZEN,
        &[
            "launch",
            cfg,
            "--no-progress",
            "--set",
            "cluster.actor_processes=2",
        ],
        &torchrun(0, 3, "127.0.0.1", port),
    );
    for rank in 1..3 {
        procs.spawn(
            &format!("actor{rank}"),
            KAIZEN,
            &["launch", cfg, "--set", "actors.count=1"],
            &torchrun(rank, 3, "127.0.0.1", port),
        );
    }
    procs.wait_ok("learner", Duration::from_secs(600));
    procs.wait_ok("actor1", Duration::from_secs(60));
    procs.wait_ok("actor2", Duration::from_secs(60));

    let (a, b) = (run_dir(&runs_a, "e2e"), run_dir(&runs_b, "e2e"));
    assert_same(&job_metrics(&a), &job_metrics(&b));
    assert_eq!(last(&b, "cluster/actors"), 2.0);
    assert_eq!(last(&b, "cluster/duplicates"), 0.0);
    assert_accounting_closes(&b);
}

#[test]
fn a_learner_stopped_while_waiting_for_actors_marks_its_run_killed_and_one_that_gives_up_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cfg = write(tmp.path(), "job.toml", &small_job(&runs, 2));
    let cfg = cfg.to_str().unwrap();
    let mut procs = Procs::new(tmp.path());
    let status_of = |runs: &Path| -> String {
        let run = run_dir(runs, "e2e");
        let text = std::fs::read_to_string(run.join("run.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["status"].as_str().unwrap_or_default().to_string()
    };
    // SIGTERM (what Slurm and Kubernetes send) while no actor has joined.
    let coordinator = format!("127.0.0.1:{}", free_port());
    procs.spawn(
        "learner",
        KAIZEN,
        &[
            "launch",
            cfg,
            "--role",
            "learner",
            "--coordinator",
            &coordinator,
            "--no-progress",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !procs.log("learner").contains("waiting for actor processes") {
        assert!(Instant::now() < deadline, "{}", procs.log("learner"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = procs.child("learner").id() as i32;
    // SAFETY: signalling a child process this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = procs.child("learner").wait().unwrap();
    assert!(!status.success());
    assert!(
        procs
            .log("learner")
            .contains("stopped while waiting for actor processes"),
        "{}",
        procs.log("learner")
    );
    assert_eq!(status_of(&runs), "KILLED");

    // Nobody joins within join_timeout_s: FAILED, not RUNNING.
    let runs2 = tmp.path().join("runs2");
    let cfg2 = write(tmp.path(), "job2.toml", &small_job(&runs2, 2));
    let coordinator = format!("127.0.0.1:{}", free_port());
    let out = Command::new(KAIZEN)
        .args([
            "launch",
            cfg2.to_str().unwrap(),
            "--role",
            "learner",
            "--coordinator",
            &coordinator,
            "--no-progress",
            "--set",
            "cluster.join_timeout_s=1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 of 1 actor processes joined"), "{stderr}");
    assert_eq!(status_of(&runs2), "FAILED");
}

#[test]
fn an_actor_process_killed_mid_run_loses_nothing_and_a_new_one_joins() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cfg = write(tmp.path(), "job.toml", &small_job(&runs, 6));
    let cfg = cfg.to_str().unwrap();
    let port = free_port();
    let coordinator = format!("127.0.0.1:{port}");
    let mut procs = Procs::new(tmp.path());
    procs.spawn(
        "learner",
        KAIZEN,
        &[
            "launch",
            cfg,
            "--role",
            "learner",
            "--coordinator",
            &coordinator,
            "--no-progress",
            "--set",
            "cluster.actor_processes=2",
            "--set",
            "cluster.peer_timeout_s=5",
        ],
        &[],
    );
    for name in ["actor-a", "actor-b"] {
        procs.spawn(
            name,
            KAIZEN,
            &[
                "launch",
                cfg,
                "--role",
                "actor",
                "--coordinator",
                &coordinator,
                "--name",
                name,
            ],
            &[],
        );
    }
    let run = wait_for_checkpoint(&runs, 2, &mut procs, "learner");
    procs.kill("actor-a");
    procs.spawn(
        "actor-c",
        KAIZEN,
        &[
            "launch",
            cfg,
            "--role",
            "actor",
            "--coordinator",
            &coordinator,
            "--name",
            "actor-c",
        ],
        &[],
    );
    procs.wait_ok("learner", Duration::from_secs(600));
    procs.wait_ok("actor-b", Duration::from_secs(60));
    procs.wait_ok("actor-c", Duration::from_secs(60));

    assert!(
        run.join("checkpoints/step-000006").is_dir(),
        "the run finished"
    );
    assert_accounting_closes(&run);
    assert!(last(&run, "cluster/departed") >= 1.0);
    assert!(last(&run, "cluster/joined") >= 3.0);
    let log = procs.log("learner");
    assert!(
        log.contains("actor process left the job") && log.contains("actor-a"),
        "the learner names the actor that left:\n{log}"
    );
}

#[test]
fn a_learner_killed_mid_run_resumes_and_its_actors_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cfg = write(tmp.path(), "job.toml", &small_job(&runs, 6));
    let cfg = cfg.to_str().unwrap();
    let port = free_port();
    let coordinator = format!("127.0.0.1:{port}");
    let learner_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["launch".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(
            [
                "--role",
                "learner",
                "--coordinator",
                &coordinator,
                "--no-progress",
                "--set",
                "cluster.actor_processes=2",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    };
    let mut procs = Procs::new(tmp.path());
    let first: Vec<String> = learner_args(&[cfg]);
    procs.spawn(
        "learner1",
        KAIZEN,
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    for name in ["actor-a", "actor-b"] {
        procs.spawn(
            name,
            KAIZEN,
            &[
                "launch",
                cfg,
                "--role",
                "actor",
                "--coordinator",
                &coordinator,
                "--name",
                name,
            ],
            &[],
        );
    }
    let run = wait_for_checkpoint(&runs, 2, &mut procs, "learner1");
    procs.kill("learner1");
    let run_arg = run.to_str().unwrap().to_string();
    let second: Vec<String> = learner_args(&["--resume", &run_arg]);
    procs.spawn(
        "learner2",
        KAIZEN,
        &second.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    procs.wait_ok("learner2", Duration::from_secs(600));
    procs.wait_ok("actor-a", Duration::from_secs(60));
    procs.wait_ok("actor-b", Duration::from_secs(60));
    assert!(
        run.join("checkpoints/step-000006").is_dir(),
        "the run finished"
    );
    assert_accounting_closes(&run);
    for actor in ["actor-a", "actor-b"] {
        let log = procs.log(actor);
        assert!(
            log.matches("joined").count() >= 2,
            "{actor} rejoined the restarted learner:\n{log}"
        );
    }
}

/// "Another host", not just another port: the learner and an actor process in two network
/// namespaces joined by a veth pair, each with its own address. Needs root (CI runs as root);
/// `KAIZEN_SKIP_NETNS=1` skips it loudly elsewhere.
#[test]
fn roles_in_separate_network_namespaces() {
    if std::env::var("KAIZEN_SKIP_NETNS").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: roles_in_separate_network_namespaces (KAIZEN_SKIP_NETNS=1)");
        return;
    }
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("`ip` is needed for this test (iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip {args:?} failed (this test needs root; set KAIZEN_SKIP_NETNS=1 to skip it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let tag = format!("kz{}", std::process::id() % 100_000);
    let (ns_l, ns_a) = (format!("{tag}l"), format!("{tag}a"));
    let (veth_l, veth_a) = (format!("{tag}vl"), format!("{tag}va"));
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    let _cleanup = Cleanup(vec![ns_l.clone(), ns_a.clone()]);
    ip(&["netns", "add", &ns_l]);
    ip(&["netns", "add", &ns_a]);
    ip(&[
        "link", "add", &veth_l, "type", "veth", "peer", "name", &veth_a,
    ]);
    ip(&["link", "set", &veth_l, "netns", &ns_l]);
    ip(&["link", "set", &veth_a, "netns", &ns_a]);
    for (ns, dev, addr) in [
        (&ns_l, &veth_l, "10.231.0.1/24"),
        (&ns_a, &veth_a, "10.231.0.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cfg = write(tmp.path(), "job.toml", &small_job(&runs, 2));
    let cfg = cfg.to_str().unwrap();
    let mut procs = Procs::new(tmp.path());
    let port = "29517";
    procs.spawn(
        "learner",
        "ip",
        &[
            "netns",
            "exec",
            &ns_l,
            KAIZEN,
            "launch",
            cfg,
            "--role",
            "learner",
            "--coordinator",
            &format!("0.0.0.0:{port}"),
            "--no-progress",
        ],
        &[],
    );
    procs.spawn(
        "actor",
        "ip",
        &[
            "netns",
            "exec",
            &ns_a,
            KAIZEN,
            "launch",
            cfg,
            "--role",
            "actor",
            "--coordinator",
            &format!("10.231.0.1:{port}"),
        ],
        &[],
    );
    procs.wait_ok("learner", Duration::from_secs(600));
    procs.wait_ok("actor", Duration::from_secs(60));
    let run = run_dir(&runs, "e2e");
    assert_accounting_closes(&run);
    assert!(
        procs.log("learner").contains("10.231.0.2"),
        "the learner saw the actor join from the other namespace's address"
    );
}

/// The tiny job as 4 processes — 2 data-parallel learner ranks (an MPI group) and 2 actor
/// processes — against 1 process: the same metrics up to the order of float additions in the
/// summed gradients (every episode identical, learner figures within 1e-4 relative).
#[cfg(feature = "mpi")]
#[test]
fn two_learner_ranks_and_two_actor_processes_match_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let runs_a = tmp.path().join("a");
    let cfg_a = write(tmp.path(), "a.toml", &small_job(&runs_a, 3));
    kaizen(&[
        "train",
        cfg_a.to_str().unwrap(),
        "--no-progress",
        "--set",
        "actors.count=2",
    ]);
    let runs_b = tmp.path().join("b");
    let cfg_b = write(tmp.path(), "b.toml", &small_job(&runs_b, 3));
    let cfg = cfg_b.to_str().unwrap();
    let coordinator = format!("127.0.0.1:{}", free_port());
    let mut procs = Procs::new(tmp.path());
    procs.spawn(
        "learners",
        "mpirun",
        &[
            "--oversubscribe",
            "-n",
            "2",
            KAIZEN,
            "launch",
            cfg,
            "--role",
            "learner",
            "--coordinator",
            &coordinator,
            "--no-progress",
            "--set",
            "cluster.learners=2",
            "--set",
            "cluster.actor_processes=2",
        ],
        &[
            ("OMPI_ALLOW_RUN_AS_ROOT", "1".into()),
            ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".into()),
        ],
    );
    for name in ["actor1", "actor2"] {
        procs.spawn(
            name,
            KAIZEN,
            &[
                "launch",
                cfg,
                "--role",
                "actor",
                "--coordinator",
                &coordinator,
                "--set",
                "actors.count=1",
            ],
            &[],
        );
    }
    procs.wait_ok("learners", Duration::from_secs(600));
    procs.wait_ok("actor1", Duration::from_secs(60));
    procs.wait_ok("actor2", Duration::from_secs(60));
    assert!(
        procs
            .log("learners")
            .contains("learner rank 1: 3 data-parallel steps"),
        "rank 1 took every step:\n{}",
        procs.log("learners")
    );
    let (a, b) = (
        job_metrics(&run_dir(&runs_a, "e2e")),
        job_metrics(&run_dir(&runs_b, "e2e")),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same metrics"
    );
    let mut worst = (String::new(), 0.0f64);
    for ((k, s), v) in &a {
        let w = b[&(k.clone(), *s)];
        let rel = (v - w).abs() / v.abs().max(1.0);
        if rel > worst.1 {
            worst = (format!("{k}@{s}: {v} vs {w}"), rel);
        }
    }
    eprintln!("largest relative difference: {} ({:e})", worst.0, worst.1);
    assert!(worst.1 <= 1e-4, "largest difference {}", worst.0);
    assert_accounting_closes(&run_dir(&runs_b, "e2e"));
}
