//! What `actors.device` selects in this build: where the actors' decode engines sample —
//! kaizen's CPU decoding, or `kaizen-gpu`'s batched sampler (feature `gpu`) — or, where the
//! build lacks the feature or the machine lacks the driver, an error naming the key, before
//! any actor starts.

use std::sync::Arc;

use kaizen_actors::DecodeDevice;
use kaizen_learner::{ActorsDevice, JobConfig};

/// Why `device` cannot run in a build with (`gpu = true`) or without the `gpu` feature,
/// naming the key and the feature; `None` when it can.
fn missing_feature(device: ActorsDevice, gpu: bool) -> Option<String> {
    (device == ActorsDevice::Cuda && !gpu).then(|| {
        "`actors.device = \"cuda\"` needs kaizen built with `--features gpu` (cargo build \
         --release --features gpu; docs/gpu.md)"
            .into()
    })
}

/// Where the job's actors sample, on GPU `ordinal` for `"cuda"`: `None` for `"cpu"`.
///
/// # Errors
/// A message naming `actors.device`: a build without the `gpu` feature, a machine without the
/// NVIDIA driver or NVRTC (named with what was tried), a GPU that cannot be opened.
pub(crate) fn device(
    config: &JobConfig,
    ordinal: usize,
) -> anyhow::Result<Option<Arc<dyn DecodeDevice>>> {
    if let Some(message) = missing_feature(config.actors.device, cfg!(feature = "gpu")) {
        anyhow::bail!(message);
    }
    match config.actors.device {
        ActorsDevice::Cpu => Ok(None),
        ActorsDevice::Cuda => cuda_device(ordinal).map(Some),
    }
}

#[cfg(feature = "gpu")]
fn cuda_device(ordinal: usize) -> anyhow::Result<Arc<dyn DecodeDevice>> {
    kaizen_gpu::actor_rows::cuda_device(ordinal)
        .map_err(|e| anyhow::anyhow!("`actors.device = \"cuda\"` (GPU {ordinal}): {e}"))
}

#[cfg(not(feature = "gpu"))]
fn cuda_device(_ordinal: usize) -> anyhow::Result<Arc<dyn DecodeDevice>> {
    // `missing_feature` has refused `cuda` in this build.
    anyhow::bail!("`actors.device = \"cuda\"` needs kaizen built with `--features gpu`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_actors_without_the_gpu_feature_are_refused_naming_the_key() {
        let message = missing_feature(ActorsDevice::Cuda, false).unwrap();
        assert!(
            message.contains("actors.device") && message.contains("--features gpu"),
            "{message}"
        );
        assert_eq!(missing_feature(ActorsDevice::Cuda, true), None);
        assert_eq!(missing_feature(ActorsDevice::Cpu, false), None);
    }

    /// In this build: `cuda` is refused without `gpu`, and with it on a machine without the
    /// driver — an error naming the key, not a panic.
    #[test]
    fn cuda_actors_on_this_build_and_machine_are_an_error_not_a_panic() {
        let text = "[run]\nexperiment = \"t\"\nmax_steps = 3\n[model]\nsource = \"tiny\"\n\
                    [[env]]\nname = \"self_correct\"\n\
                    [actors]\ndevice = \"cuda\"\nkv_cache_mib = 0\n";
        let (config, _) = JobConfig::parse(text, std::path::Path::new("job.toml"), &[]).unwrap();
        assert_eq!(config.actors.device, ActorsDevice::Cuda);
        let has_driver = cfg!(feature = "gpu") && driver_present();
        match device(&config, 0) {
            Ok(Some(_)) => assert!(has_driver),
            Ok(None) => panic!("cuda gave no device"),
            Err(e) => {
                assert!(!has_driver);
                assert!(e.to_string().contains("actors.device"), "{e}");
            }
        }
        let (cpu, _) = JobConfig::parse(
            text,
            std::path::Path::new("job.toml"),
            &["actors.device=\"cpu\"".into()],
        )
        .unwrap();
        assert!(device(&cpu, 0).unwrap().is_none());
    }

    #[cfg(feature = "gpu")]
    fn driver_present() -> bool {
        kaizen_gpu::Library::Driver.is_present()
    }

    #[cfg(not(feature = "gpu"))]
    fn driver_present() -> bool {
        false
    }
}
