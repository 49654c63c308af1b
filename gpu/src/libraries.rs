//! Finding the CUDA libraries before cudarc touches them: cudarc panics when a library it
//! loads lazily is missing; kaizen checks first and returns [`GpuError::Library`].

use std::sync::Arc;

use cudarc::driver::CudaContext;

use crate::GpuError;

/// A CUDA library cudarc loads at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// The driver API (`libcuda.so.1`, installed with the NVIDIA driver).
    Driver,
    /// The run-time compiler (`libnvrtc.so.13`; PyPI: `nvidia-cuda-nvrtc`).
    Nvrtc,
    /// BLAS (`libcublas.so.13`; PyPI: `nvidia-cublas`).
    Cublas,
    /// Collectives (`libnccl.so.2` on PyPI: `nvidia-nccl-cu13`, which cudarc does not look
    /// for: it needs a `libnccl.so` link next to it).
    Nccl,
}

impl Library {
    /// The name cudarc's loader is given (`lib<name>.so…`).
    fn stem(self) -> &'static str {
        match self {
            Self::Driver => "cuda",
            Self::Nvrtc => "nvrtc",
            Self::Cublas => "cublas",
            Self::Nccl => "nccl",
        }
    }

    /// The library's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Driver => "libcuda (the NVIDIA driver)",
            Self::Nvrtc => "libnvrtc (CUDA's run-time compiler)",
            Self::Cublas => "libcublas",
            Self::Nccl => "libnccl",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Self::Driver => {
                "this machine has no NVIDIA driver (no GPU); the GPU path needs one, the CPU path \
                 does not"
            }
            Self::Nvrtc => {
                "install the `nvidia-cuda-nvrtc` wheel (CUDA 13) and put its nvidia/cu13/lib on \
                 LD_LIBRARY_PATH"
            }
            Self::Cublas => {
                "install the `nvidia-cublas` wheel (CUDA 13; PyTorch cu130 brings it) and put \
                 its nvidia/cu13/lib on LD_LIBRARY_PATH"
            }
            Self::Nccl => {
                "pip's nvidia-nccl-cu13 ships only libnccl.so.2, a name cudarc does not try: link \
                 it as libnccl.so in a directory on LD_LIBRARY_PATH"
            }
        }
    }

    /// Whether cudarc's loader finds the library (tries each name it knows; loads and unloads).
    pub fn is_present(self) -> bool {
        // SAFETY: each call only dlopen()s the library under the names cudarc tries and closes
        // it again; loading a CUDA library runs no code of ours.
        unsafe {
            match self {
                Self::Driver => cudarc::driver::sys::is_culib_present(),
                Self::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Self::Cublas => cudarc::cublas::sys::is_culib_present(),
                Self::Nccl => cudarc::nccl::sys::is_culib_present(),
            }
        }
    }
}

/// `Ok` when cudarc can load `library`.
///
/// # Errors
/// [`GpuError::Library`] naming the library, the file names tried and the usual fix.
pub fn require(library: Library) -> Result<(), GpuError> {
    if library.is_present() {
        return Ok(());
    }
    Err(GpuError::Library {
        library: library.name(),
        searched: cudarc::get_lib_name_candidates(library.stem()).join(", "),
        hint: library.hint(),
    })
}

/// The primary context of GPU `ordinal`, after checking that the driver loads.
///
/// # Errors
/// [`GpuError::Library`] without a driver; [`GpuError::Driver`] when the driver has no such
/// device.
pub fn cuda_context(ordinal: usize) -> Result<Arc<CudaContext>, GpuError> {
    require(Library::Driver)?;
    CudaContext::new(ordinal).map_err(|e| GpuError::driver(format!("opening GPU {ordinal}"), e))
}
