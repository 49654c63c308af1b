//! The learner's side of a multi-process job: a [`CoordinatorLauncher`] serves the
//! [`Coordinator`] that actor processes join, and hands it to the training loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kaizen_learner::{ActorsSpec, ClusterConfig, Error, Launcher, StartedActors};
use kaizen_transport::wire::{Coordinator, CoordinatorConfig, WeightsGroups};

/// Starts a job's actors as actor processes that join a coordinator on `bind`.
#[derive(Debug, Clone)]
pub struct CoordinatorLauncher {
    /// Address the coordinator listens on.
    pub bind: SocketAddr,
    /// The job's configuration fingerprint ([`job_fingerprint`]).
    pub fingerprint: String,
    /// Weights groups to form with group-capable actor processes
    /// (`cluster.weights_transport = "nccl"`; the binary builds them): see
    /// `kaizen_transport::wire::WeightsGroups`. `None`: weights go as chunks.
    pub weights_groups: Option<Arc<dyn WeightsGroups>>,
}

impl Launcher for CoordinatorLauncher {
    fn start(&self, spec: ActorsSpec<'_>) -> Result<StartedActors, Error> {
        let cluster: &ClusterConfig = &spec.config.cluster;
        let grpo = &spec.config.grpo;
        let coordinator = Coordinator::start(
            CoordinatorConfig {
                bind: self.bind,
                peer_timeout: Duration::from_secs_f64(cluster.peer_timeout_s),
                results_capacity: (grpo.prompts_per_step * grpo.num_generations).max(16),
                max_message_bytes: (cluster.max_message_mib * 1024.0 * 1024.0) as usize,
                weights_chunk_bytes: cluster.weights_chunk_kib.max(1) * 1024,
                env_names: spec.envs.iter().map(|e| e.name.clone()).collect(),
                job_fingerprint: self.fingerprint.clone(),
                shutdown_grace: Duration::from_secs_f64(cluster.shutdown_grace_s),
                weights_groups: self.weights_groups.clone(),
            },
            &spec.weights,
            spec.version,
        )?;
        tracing::info!(
            address = %coordinator.local_addr(),
            expected = cluster.actor_processes,
            "waiting for actor processes"
        );
        coordinator.wait_for_actors_or_stop(
            cluster.actor_processes,
            Duration::from_secs_f64(cluster.join_timeout_s),
            spec.stop,
        )?;
        let weights = coordinator.weights();
        Ok(StartedActors {
            rollouts: Box::new(coordinator),
            weights: Box::new(weights),
        })
    }
}

/// A fingerprint of the parts of a resolved job config that decide what actors do (everything
/// but `[actors]`, `[cluster]`, `[tracking]` and the run's `name` and `experiment`, which may
/// differ per process): CRC-32C of its TOML, in hex. Actor processes must present the
/// learner's to join.
pub fn job_fingerprint(resolved: &toml::Table) -> String {
    let mut table = resolved.clone();
    for key in ["actors", "cluster", "tracking"] {
        table.remove(key);
    }
    if let Some(toml::Value::Table(run)) = table.get_mut("run") {
        run.remove("name");
        run.remove("experiment");
    }
    let text = toml::to_string(&table).unwrap_or_default();
    format!("{:08x}", crc32c::crc32c(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn the_fingerprint_ignores_per_process_sections_only() {
        let base = job_fingerprint(&table(
            "[run]\nexperiment = \"a\"\nseed = 1\n[actors]\ncount = 1\n[sampling]\ntop_p = 0.9\n",
        ));
        let same = job_fingerprint(&table(
            "[run]\nexperiment = \"b\"\nseed = 1\n[actors]\ncount = 4\n[cluster]\nport = 1\n\
             [sampling]\ntop_p = 0.9\n",
        ));
        assert_eq!(base, same);
        let other = job_fingerprint(&table(
            "[run]\nexperiment = \"a\"\nseed = 2\n[actors]\ncount = 1\n[sampling]\ntop_p = 0.9\n",
        ));
        assert_ne!(base, other, "the seed decides what actors play");
    }
}
