//! What `learner.device` and `learner.collective` select in this build: the learner's training
//! backend (`kaizen-gpu`'s CUDA pass, feature `gpu`) and the data-parallel learner ranks'
//! collective (NCCL, features `gpu` and `mpi`) — or, where the build lacks a feature or the
//! machine lacks the driver, an error naming the field, before anything is loaded.

use kaizen_learner::{BackendFactory, JobConfig, LearnerCollective, LearnerDevice};

/// The features of this build that `learner.device` and `learner.collective` need.
#[derive(Debug, Clone, Copy)]
struct Features {
    gpu: bool,
    mpi: bool,
}

impl Features {
    const BUILT: Self = Self {
        gpu: cfg!(feature = "gpu"),
        mpi: cfg!(feature = "mpi"),
    };
}

/// Why `device` and `collective` cannot run in a build with `features`, naming the field and
/// the missing feature; `None` when they can.
fn missing_feature(
    device: LearnerDevice,
    collective: LearnerCollective,
    features: Features,
) -> Option<String> {
    if device == LearnerDevice::Cuda && !features.gpu {
        return Some(
            "`learner.device = \"cuda\"` needs kaizen built with `--features gpu` (cargo build \
             --release --features gpu; docs/gpu.md)"
                .into(),
        );
    }
    if collective == LearnerCollective::Nccl && !(features.gpu && features.mpi) {
        return Some(
            "`learner.collective = \"nccl\"` needs kaizen built with `--features gpu,mpi` (NCCL \
             ranks meet over the learner ranks' MPI group; docs/gpu.md, docs/cluster.md)"
                .into(),
        );
    }
    None
}

/// Checks that this build can run the job's `learner.device` and `learner.collective`.
///
/// # Errors
/// A message naming the field and the feature the build lacks.
pub(crate) fn check(config: &JobConfig) -> anyhow::Result<()> {
    match missing_feature(
        config.learner.device,
        config.learner.collective,
        Features::BUILT,
    ) {
        Some(message) => anyhow::bail!(message),
        None => Ok(()),
    }
}

/// The training backend `learner.device` asks for, on GPU `ordinal` (the launcher's local
/// rank): `None` for `"cpu"`.
///
/// # Errors
/// As [`check`]; for `"cuda"`, a machine without the NVIDIA driver (named with what was tried).
pub(crate) fn backend(
    config: &JobConfig,
    ordinal: usize,
) -> anyhow::Result<Option<BackendFactory>> {
    check(config)?;
    match config.learner.device {
        LearnerDevice::Cpu => Ok(None),
        LearnerDevice::Cuda => cuda_backend(ordinal).map(Some),
    }
}

#[cfg(feature = "gpu")]
fn cuda_backend(ordinal: usize) -> anyhow::Result<BackendFactory> {
    use std::sync::Arc;

    use kaizen_gpu::train::{CudaOps, PassBackend};
    use kaizen_learner::{Error, TrainBackend};

    kaizen_gpu::require(kaizen_gpu::Library::Driver)
        .map_err(|e| anyhow::anyhow!("`learner.device = \"cuda\"`: {e}"))?;
    let make = move |model: &kaizen_model::Llama| -> Result<Box<dyn TrainBackend>, Error> {
        let failed = |e: kaizen_gpu::GpuError| Error::Backend(format!("GPU {ordinal}: {e}"));
        let context = kaizen_gpu::cuda_context(ordinal).map_err(failed)?;
        let ops = CudaOps::new(&context).map_err(failed)?;
        Ok(Box::new(
            PassBackend::new("cuda", ops, model).map_err(failed)?,
        ))
    };
    Ok(Arc::new(make))
}

#[cfg(not(feature = "gpu"))]
fn cuda_backend(_ordinal: usize) -> anyhow::Result<BackendFactory> {
    // `check` has refused `cuda` in this build.
    anyhow::bail!("`learner.device = \"cuda\"` needs kaizen built with `--features gpu`")
}

/// The data-parallel learner ranks' collective `learner.collective` asks for, over their MPI
/// `group`; NCCL uses GPU `local_rank`.
///
/// # Errors
/// As [`check`]; NCCL's errors (no driver, no library, a rank that could not join).
#[cfg(feature = "mpi")]
pub(crate) fn collective(
    config: &JobConfig,
    group: kaizen_cluster::MpiCollective,
    local_rank: usize,
) -> anyhow::Result<Box<dyn kaizen_learner::Collective>> {
    check(config)?;
    match config.learner.collective {
        LearnerCollective::Mpi => Ok(Box::new(group)),
        LearnerCollective::Nccl => nccl(group, local_rank),
    }
}

#[cfg(all(feature = "mpi", feature = "gpu"))]
fn nccl(
    group: kaizen_cluster::MpiCollective,
    local_rank: usize,
) -> anyhow::Result<Box<dyn kaizen_learner::Collective>> {
    let nccl =
        kaizen_gpu::NcclCollective::over(&group, local_rank, kaizen_gpu::DEFAULT_BUCKET_ELEMS)
            .map_err(|e| anyhow::anyhow!("`learner.collective = \"nccl\"`: {e}"))?;
    Ok(Box::new(NcclOverMpi { nccl, _mpi: group }))
}

#[cfg(all(feature = "mpi", not(feature = "gpu")))]
fn nccl(
    _group: kaizen_cluster::MpiCollective,
    _local_rank: usize,
) -> anyhow::Result<Box<dyn kaizen_learner::Collective>> {
    // `check` has refused `nccl` in this build.
    anyhow::bail!("`learner.collective = \"nccl\"` needs kaizen built with `--features gpu,mpi`")
}

/// NCCL, with the MPI group its ranks met over kept alive (dropping it finalizes MPI).
#[cfg(all(feature = "mpi", feature = "gpu"))]
struct NcclOverMpi {
    nccl: kaizen_gpu::NcclCollective,
    _mpi: kaizen_cluster::MpiCollective,
}

#[cfg(all(feature = "mpi", feature = "gpu"))]
impl kaizen_learner::Collective for NcclOverMpi {
    fn rank(&self) -> usize {
        self.nccl.rank()
    }

    fn world_size(&self) -> usize {
        self.nccl.world_size()
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), kaizen_learner::Error> {
        self.nccl.all_reduce_sum(values)
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, kaizen_learner::Error> {
        self.nccl.all_gather_bytes(bytes)
    }

    /// The NCCL communicator: the CUDA backend sums its gradient buckets on it in place.
    fn device_collective(&self) -> Option<&dyn std::any::Any> {
        self.nccl.device_collective()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Features = Features {
        gpu: true,
        mpi: true,
    };

    #[test]
    fn cpu_and_mpi_need_no_feature() {
        let none = Features {
            gpu: false,
            mpi: false,
        };
        assert_eq!(
            missing_feature(LearnerDevice::Cpu, LearnerCollective::Mpi, none),
            None
        );
    }

    #[test]
    fn cuda_without_the_gpu_feature_is_refused_naming_the_field() {
        let cpu_only = Features {
            gpu: false,
            mpi: true,
        };
        let message =
            missing_feature(LearnerDevice::Cuda, LearnerCollective::Mpi, cpu_only).unwrap();
        assert!(message.contains("learner.device") && message.contains("--features gpu"));
        assert_eq!(
            missing_feature(LearnerDevice::Cuda, LearnerCollective::Mpi, ALL),
            None
        );
    }

    #[test]
    fn nccl_needs_both_gpu_and_mpi() {
        for features in [
            Features {
                gpu: true,
                mpi: false,
            },
            Features {
                gpu: false,
                mpi: true,
            },
        ] {
            let message =
                missing_feature(LearnerDevice::Cpu, LearnerCollective::Nccl, features).unwrap();
            assert!(
                message.contains("learner.collective") && message.contains("--features gpu,mpi"),
                "{message}"
            );
        }
        assert_eq!(
            missing_feature(LearnerDevice::Cuda, LearnerCollective::Nccl, ALL),
            None
        );
    }

    /// In this build: `cuda` is refused without `gpu`, and with it on a machine without the
    /// driver — an error naming the field, not a panic.
    #[test]
    fn cuda_on_this_build_and_machine_is_an_error_not_a_panic() {
        let text = "[run]\nexperiment = \"t\"\nmax_steps = 3\n[model]\nsource = \"tiny\"\n\
                    [[env]]\nname = \"self_correct\"\n\
                    [learner]\ndevice = \"cuda\"\n";
        let (config, _) = JobConfig::parse(text, std::path::Path::new("job.toml"), &[]).unwrap();
        assert_eq!(config.learner.device, LearnerDevice::Cuda);
        let has_driver = cfg!(feature = "gpu") && kaizen_gpu_driver_present();
        match backend(&config, 0) {
            Ok(Some(_)) => assert!(has_driver),
            Ok(None) => panic!("cuda gave no backend"),
            Err(e) => {
                assert!(!has_driver);
                assert!(e.to_string().contains("learner.device"), "{e}");
            }
        }
    }

    #[cfg(feature = "gpu")]
    fn kaizen_gpu_driver_present() -> bool {
        kaizen_gpu::Library::Driver.is_present()
    }

    #[cfg(not(feature = "gpu"))]
    fn kaizen_gpu_driver_present() -> bool {
        false
    }
}
