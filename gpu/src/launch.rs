//! What every CUDA backend of this crate does around a kernel launch: load a module's kernels
//! by name ([`Functions`]), convert sizes to the kernels' `int` arguments ([`int`]), build
//! the launch shape ([`grid`], [`elementwise`]), and launch with the arguments in order,
//! naming the kernel in a failure ([`launch!`], [`launch_error`]).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::GpuError;
use crate::kernels::BLOCK;

/// A size as a kernel's `int` argument.
///
/// # Errors
/// [`GpuError::Input`] naming `what` when `value` exceeds `i32::MAX`.
pub(crate) fn int(value: usize, what: &str) -> Result<i32, GpuError> {
    i32::try_from(value).map_err(|_| GpuError::Input(format!("{what} = {value} exceeds i32")))
}

/// The error of a failed launch of kernel `name`.
pub(crate) fn launch_error(name: &str, e: impl std::fmt::Display) -> GpuError {
    GpuError::driver(format!("launching `{name}`"), e)
}

/// Grid-stride element-wise launch over `len` values: `BLOCK`-thread blocks, at most 4096.
pub(crate) fn elementwise(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(BLOCK as usize).clamp(1, 4096) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A `(x, y)` grid of `threads`-thread blocks with `shared_floats` floats of dynamic shared
/// memory each.
pub(crate) fn grid(x: usize, y: usize, threads: u32, shared_floats: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    }
}

/// The kernels of one compiled module, looked up by name.
pub(crate) struct Functions {
    names: &'static [&'static str],
    functions: Vec<CudaFunction>,
}

impl Functions {
    /// Loads `ptx` into `context` and finds every kernel of `names` in it.
    ///
    /// # Errors
    /// Driver errors: `loading` names the module, a missing kernel is named.
    pub(crate) fn load(
        context: &Arc<CudaContext>,
        ptx: Ptx,
        names: &'static [&'static str],
        loading: &str,
    ) -> Result<Self, GpuError> {
        let module = context
            .load_module(ptx)
            .map_err(|e| GpuError::driver(loading, e))?;
        let functions = names
            .iter()
            .map(|name| {
                module
                    .load_function(name)
                    .map_err(|e| GpuError::driver(format!("finding kernel `{name}`"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { names, functions })
    }

    /// The kernel `name`.
    ///
    /// # Panics
    /// When `name` is not one of the module's names (a programmer bug: every kernel launched
    /// is listed in its module's `NAMES`).
    pub(crate) fn get(&self, name: &str) -> &CudaFunction {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .expect("every kernel launched is listed in its module's NAMES");
        &self.functions[i]
    }
}

/// `launch!(stream, kernels, "name", config, [args...])`: launches kernel `"name"` of
/// `kernels` ([`Functions`]) on `stream` with `config`, pushing `args` in order; evaluates to
/// `Result<(), GpuError>`, a failure naming the kernel ([`launch_error`]).
///
/// The launch is `unsafe` (cudarc cannot check a kernel's arguments): call it inside an
/// `unsafe` block whose `SAFETY` comment says why the buffers hold what the grid indexes.
macro_rules! launch {
    ($stream:expr, $kernels:expr, $name:literal, $config:expr, [$($arg:expr),+ $(,)?]) => {
        $stream
            .launch_builder($kernels.get($name))
            $(.arg($arg))+
            .launch($config)
            .map_err(|e| $crate::launch::launch_error($name, e))
    };
}
pub(crate) use launch;
