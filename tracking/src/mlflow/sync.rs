//! `kaizen runs sync`: deliver a run of the local store to MLflow after the fact.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::mirror::{Closing, Mirror};
use super::spool::{Entry, MirrorState, Origin, Spool};
use super::tracker::{MlflowConfig, check_same_server};
use crate::store::{ARTIFACTS_DIR, METRICS_FILE, MLFLOW_DIR, StoredRun, read_metrics};
use crate::{Error, RunStatus};

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The MLflow run id.
    pub mlflow_run_id: Option<String>,
    /// Entries newly taken from the local store into the spool by this call.
    pub imported: usize,
    /// Entries delivered by this call.
    pub delivered: u64,
    /// Entries delivered over the run's life.
    pub delivered_total: u64,
    /// Entries the server refused over the run's life (listed in `mlflow/rejected.jsonl`).
    pub rejected_total: u64,
}

/// Delivers a local run to the MLflow server in `config`, blocking until done or until
/// `config.shutdown_timeout` runs out. Must not be called from inside a tokio runtime (use
/// `spawn_blocking`).
///
/// Idempotent: a run that was mirrored live only gets what its spool still holds; a local-only
/// run is imported once (params, tags, `metrics.jsonl` lines, artifact files and final status
/// not imported before), so running sync twice sends nothing the second time, and a run that
/// grew since (resumed) sends only the new part.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] reading the run; [`Error::Invalid`] when the run is
/// already mirrored to another server; [`Error::NotDelivered`] / [`Error::EntriesRefused`] as
/// for [`crate::Tracker::finish`].
pub fn sync_run(run_dir: &Path, config: &MlflowConfig) -> Result<SyncReport, Error> {
    let run = StoredRun::open(run_dir)?;
    let record = &run.record;
    let mut spool = Spool::open(&run_dir.join(MLFLOW_DIR), || {
        let origin = Origin::Import {
            metrics_lines: 0,
            params: BTreeMap::new(),
            tags: record.tags.clone(),
            artifacts: Vec::new(),
            status: None,
        };
        let (experiment, name, tags) = (
            record.experiment.clone(),
            record.name.clone(),
            record.tags.clone(),
        );
        MirrorState::new(
            config.uri.to_string(),
            experiment,
            name,
            tags,
            record.start_time,
            origin,
        )
    })?;
    check_same_server(&mut spool, config, run_dir)?;
    let imported = import_new(&run, &mut spool)?;
    let delivered_before = spool.state.delivered;
    let mirror = Mirror::new(
        config.client()?,
        spool,
        config.mirror_options(),
        config.secrets(),
        Arc::new(Mutex::new(Default::default())),
        run_dir.to_owned(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting a runtime for", run_dir))?;
    let (result, state) = runtime.block_on(async {
        let closing = Closing {
            deadline: Instant::now() + config.shutdown_timeout,
            reply: None,
        };
        mirror.run(None, Some(closing)).await
    });
    result?;
    Ok(SyncReport {
        mlflow_run_id: state.run_id,
        imported,
        delivered: state.delivered - delivered_before,
        delivered_total: state.delivered,
        rejected_total: state.rejected,
    })
}

/// Adds to the spool what the local store has and an earlier import did not take. A spool
/// written by a live tracker already holds everything, so nothing is imported then.
fn import_new(run: &StoredRun, spool: &mut Spool) -> Result<usize, Error> {
    let Origin::Import {
        metrics_lines,
        params,
        tags,
        artifacts,
        status,
    } = std::mem::take(&mut spool.state.origin)
    else {
        return Ok(0);
    };
    let mut entries = Vec::new();
    let mut params = params;
    for (key, value) in run.params()?.iter() {
        if params.get(key).map(String::as_str) != Some(value) {
            params.insert(key.to_owned(), value.to_owned());
            entries.push(Entry::Param {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
    }
    let mut tags = tags;
    for (key, value) in &run.record.tags {
        if tags.get(key) != Some(value) {
            tags.insert(key.clone(), value.clone());
            entries.push(Entry::Tag {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    let lines = read_metrics(&run.dir.join(METRICS_FILE), |line, metric| {
        if line > metrics_lines {
            entries.push(Entry::Metric(metric));
        }
    })?;
    let mut artifacts = artifacts;
    for file in run.artifacts()? {
        if !artifacts.contains(&file) {
            let dir = file.rsplit_once('/').map(|(dir, _)| dir.to_owned());
            entries.push(Entry::Artifact {
                path: run.dir.join(ARTIFACTS_DIR).join(&file),
                dir,
            });
            artifacts.push(file);
        }
    }
    let mut status = status;
    if run.record.status != RunStatus::Running && status != Some(run.record.status) {
        status = Some(run.record.status);
        entries.push(Entry::Status {
            status: run.record.status,
            end_time: run.record.end_time.unwrap_or(run.record.start_time),
        });
    }
    let mut imported = 0;
    for entry in entries {
        match spool.push_checked(entry)? {
            None => imported += 1,
            Some(reason) => tracing::warn!("{reason}; not synced"),
        }
    }
    spool.flush()?;
    spool.state.origin = Origin::Import {
        metrics_lines: lines.max(metrics_lines),
        params,
        tags,
        artifacts,
        status,
    };
    spool.save_state()?;
    Ok(imported)
}
