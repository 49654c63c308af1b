//! What can fail on the GPU path.

/// Errors of `kaizen-gpu`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A CUDA library could not be loaded: no driver (a machine without an NVIDIA GPU), or a
    /// toolkit library that is not on `LD_LIBRARY_PATH` under a name cudarc looks for.
    #[error(
        "{library} could not be loaded (looked for {searched}): {hint}; see docs/gpu.md and \
         scripts/device/check.sh"
    )]
    Library {
        /// Which library (`libcuda`, `libnvrtc`, `libcublas`, `libnccl`).
        library: &'static str,
        /// The file names tried, comma-separated.
        searched: String,
        /// What usually fixes it.
        hint: &'static str,
    },
    /// The CUDA driver reported an error (no device, out of memory, a failed launch).
    #[error("CUDA driver, {during}: {message}")]
    Driver {
        /// What kaizen was doing.
        during: String,
        /// The driver's error.
        message: String,
    },
    /// NVRTC rejected a kernel source; the message carries its log.
    #[error("NVRTC compiling the kernels for {arch}: {message}")]
    Compile {
        /// The target architecture (`sm_90`).
        arch: String,
        /// The compiler's error and log.
        message: String,
    },
    /// cuBLAS reported an error.
    #[error("cuBLAS, {during}: {message}")]
    Blas {
        /// What kaizen was doing.
        during: String,
        /// cuBLAS's status.
        message: String,
    },
    /// NCCL reported an error.
    #[error("NCCL, {during}: {message}")]
    Nccl {
        /// What kaizen was doing.
        during: String,
        /// NCCL's result code.
        message: String,
    },
    /// A caller's input does not fit (a token id outside the vocabulary, a missing or misshaped
    /// weight, a sequence longer than the cache, a unique id of the wrong length).
    #[error("{0}")]
    Input(String),
}

impl GpuError {
    /// A driver error while doing `during`.
    pub(crate) fn driver(during: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Driver {
            during: during.into(),
            message: e.to_string(),
        }
    }

    /// A cuBLAS error while doing `during`.
    pub(crate) fn blas(during: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Blas {
            during: during.into(),
            message: e.to_string(),
        }
    }

    /// An NCCL error while doing `during` (cudarc's `NcclError` prints no detail, so the raw
    /// `ncclResult_t` is named).
    pub(crate) fn nccl(during: impl Into<String>, e: cudarc::nccl::result::NcclError) -> Self {
        Self::Nccl {
            during: during.into(),
            message: format!("{:?}", e.0),
        }
    }
}
