//! The data-parallel learner over MPI: one and two steps with N = 1, 2, 3 ranks equal the
//! single-process steps (weights within 1e-6 relative; ranks bit-identical to each other).
//! Needs the `mpi` feature and `mpirun` (OpenMPI: `apt-get install libopenmpi-dev openmpi-bin`);
//! `scripts/test.sh` provides both.
#![cfg(feature = "mpi")]

use std::process::Command;

fn mpirun(ranks: usize) -> String {
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-n", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_kaizen-dp-check"))
        // OpenMPI refuses to run as root (CI containers) unless told twice.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap_or_else(|e| panic!("mpirun is needed (OpenMPI: openmpi-bin): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{ranks} ranks: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn data_parallel_steps_equal_the_single_process_step() {
    for ranks in 1..=3 {
        let line = mpirun(ranks);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            panic!("{ranks} ranks printed no report ({e}): {line}");
        });
        assert_eq!(v["world"], ranks);
        assert_eq!(v["ranks_identical"], true, "{line}");
        assert_eq!(v["trained"], true, "{line}");
        assert!(v["max_rel_weight_diff"].as_f64().unwrap() <= 1e-6, "{line}");
        assert_eq!(v["ok"], true, "{line}");
    }
}
