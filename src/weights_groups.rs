//! What `cluster.weights_transport` selects in this build: chunks over each actor's gRPC
//! weights stream (`"grpc"`), or weights groups over NCCL (`"nccl"`, feature `gpu`) — one
//! broadcast per version from the learner to the actor processes that join — or, where the
//! build lacks the feature or the machine lacks the driver or NCCL, an error naming the key
//! before anything starts.

use std::sync::Arc;

use kaizen_learner::{JobConfig, WeightsTransport};
use kaizen_transport::wire::WeightsGroups;

/// Why `transport` cannot run in a build with (`gpu = true`) or without the `gpu` feature,
/// naming the key and the feature; `None` when it can.
fn missing_feature(transport: WeightsTransport, gpu: bool) -> Option<String> {
    (transport == WeightsTransport::Nccl && !gpu).then(|| {
        "`cluster.weights_transport = \"nccl\"` needs kaizen built with `--features gpu` \
         (cargo build --release --features gpu; docs/cluster.md)"
            .into()
    })
}

/// The weights groups this process forms (the learner) or joins (an actor process), on GPU
/// `ordinal` (the launcher's local rank): `None` for `"grpc"`.
///
/// # Errors
/// A message naming `cluster.weights_transport`: a build without the `gpu` feature, a machine
/// without the NVIDIA driver or NCCL (named with what was tried).
pub(crate) fn groups(
    config: &JobConfig,
    ordinal: usize,
) -> anyhow::Result<Option<Arc<dyn WeightsGroups>>> {
    if let Some(message) = missing_feature(config.cluster.weights_transport, cfg!(feature = "gpu"))
    {
        anyhow::bail!(message);
    }
    match config.cluster.weights_transport {
        WeightsTransport::Grpc => Ok(None),
        WeightsTransport::Nccl => nccl_groups(ordinal).map(Some),
    }
}

#[cfg(feature = "gpu")]
fn nccl_groups(ordinal: usize) -> anyhow::Result<Arc<dyn WeightsGroups>> {
    for library in [kaizen_gpu::Library::Driver, kaizen_gpu::Library::Nccl] {
        kaizen_gpu::require(library)
            .map_err(|e| anyhow::anyhow!("`cluster.weights_transport = \"nccl\"`: {e}"))?;
    }
    Ok(Arc::new(nccl::NcclWeightsGroups { ordinal }))
}

#[cfg(not(feature = "gpu"))]
fn nccl_groups(_ordinal: usize) -> anyhow::Result<Arc<dyn WeightsGroups>> {
    // `missing_feature` has refused `nccl` in this build.
    anyhow::bail!("`cluster.weights_transport = \"nccl\"` needs kaizen built with `--features gpu`")
}

/// Weights groups as NCCL communicators, through `kaizen_gpu::NcclCollective`.
#[cfg(feature = "gpu")]
mod nccl {
    use kaizen_gpu::{DEFAULT_BUCKET_ELEMS, NcclCollective, NcclId};
    use kaizen_transport::Error;
    use kaizen_transport::wire::{WeightsGroup, WeightsGroups};

    /// NCCL communicators on GPU `ordinal`: the id is NCCL's 128-byte unique id, a join is
    /// `ncclCommInitRank`, a broadcast `ncclBroadcast` from rank 0 in 64 MiB buckets (host
    /// buffers: the payload is the host copy each side already has).
    #[derive(Debug)]
    pub(super) struct NcclWeightsGroups {
        pub ordinal: usize,
    }

    fn failed(what: &str, e: kaizen_gpu::GpuError) -> Error {
        Error::Weights(format!("NCCL weights group: {what}: {e}"))
    }

    impl WeightsGroups for NcclWeightsGroups {
        fn new_id(&self) -> Result<Vec<u8>, Error> {
            let id = NcclId::create().map_err(|e| failed("creating the unique id", e))?;
            Ok(id.as_bytes().to_vec())
        }

        fn join(
            &self,
            id: &[u8],
            rank: usize,
            world_size: usize,
        ) -> Result<Box<dyn WeightsGroup>, Error> {
            let id = NcclId::from_bytes(id).map_err(|e| failed("the invite's id", e))?;
            let what = format!(
                "joining as rank {rank} of {world_size} on GPU {}",
                self.ordinal
            );
            let collective =
                NcclCollective::init(self.ordinal, rank, world_size, &id, DEFAULT_BUCKET_ELEMS)
                    .map_err(|e| failed(&what, e))?;
            Ok(Box::new(NcclWeightsGroup(collective)))
        }
    }

    #[derive(Debug)]
    struct NcclWeightsGroup(NcclCollective);

    impl WeightsGroup for NcclWeightsGroup {
        fn broadcast(&mut self, values: &mut [f32]) -> Result<(), Error> {
            self.0
                .broadcast(values, 0)
                .map_err(|e| failed("broadcast from rank 0", e))
        }

        fn rank(&self) -> usize {
            kaizen_learner::Collective::rank(&self.0)
        }

        fn world_size(&self) -> usize {
            kaizen_learner::Collective::world_size(&self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_weights_without_the_gpu_feature_are_refused_naming_the_key() {
        let message = missing_feature(WeightsTransport::Nccl, false).unwrap();
        assert!(
            message.contains("cluster.weights_transport") && message.contains("--features gpu"),
            "{message}"
        );
        assert!(missing_feature(WeightsTransport::Nccl, true).is_none());
        assert!(missing_feature(WeightsTransport::Grpc, false).is_none());
    }

    /// In this build: `"nccl"` is refused without `gpu`, and with it on a machine without the
    /// driver or NCCL — an error naming the key, not a panic; parsed from a job's TOML.
    #[test]
    fn nccl_weights_on_this_build_and_machine_are_an_error_not_a_panic() {
        let text = "[run]\nexperiment = \"t\"\nmax_steps = 3\n[model]\nsource = \"tiny\"\n\
                    [[env]]\nname = \"self_correct\"\n\
                    [cluster]\nweights_transport = \"nccl\"\n";
        let (config, _) = JobConfig::parse(text, std::path::Path::new("job.toml"), &[]).unwrap();
        assert_eq!(config.cluster.weights_transport, WeightsTransport::Nccl);
        let present = cfg!(feature = "gpu") && libraries_present();
        match groups(&config, 0) {
            Ok(Some(_)) => assert!(present),
            Ok(None) => panic!("nccl gave no groups"),
            Err(e) => {
                assert!(!present);
                assert!(e.to_string().contains("cluster.weights_transport"), "{e}");
            }
        }
        let (grpc, _) = JobConfig::parse(
            text,
            std::path::Path::new("job.toml"),
            &["cluster.weights_transport=\"grpc\"".into()],
        )
        .unwrap();
        assert!(groups(&grpc, 0).unwrap().is_none());
        let bad = JobConfig::parse(
            text,
            std::path::Path::new("job.toml"),
            &["cluster.weights_transport=\"gloo\"".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("weights_transport"), "{bad}");
    }

    #[cfg(feature = "gpu")]
    fn libraries_present() -> bool {
        kaizen_gpu::Library::Driver.is_present() && kaizen_gpu::Library::Nccl.is_present()
    }

    #[cfg(not(feature = "gpu"))]
    fn libraries_present() -> bool {
        false
    }
}
