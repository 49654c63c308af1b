//! The data-parallel learner's collective on GPUs: NCCL, through cudarc's bindings.
//!
//! **First version: host buffers.** [`kaizen_learner::Collective`] hands over host slices
//! (kaizen's training pass keeps its gradients on the host), so each bucket of
//! [`NcclCollective::all_reduce_sum`] is copied to the device, summed by `ncclAllReduce`, and
//! copied back: the PCIe copies cost about as much as the reduction itself. A GPU learner
//! whose gradients live on the device calls [`NcclCollective::all_reduce_sum_device`] instead,
//! which reduces in place with no copy: `train::PassBackend` on `CudaOps` finds it through
//! [`Collective::device_collective`] and reduces its gradients in buckets packed on the device.
//!
//! **Meeting.** NCCL ranks meet through a 128-byte [`NcclId`] that rank 0 creates and every
//! other rank receives over a channel the job already has. [`NcclCollective::over`] uses the
//! learner ranks' MPI group (the `mpi` feature's `MpiCollective`, started by `mpirun`/`srun`,
//! which also gives ranks); [`NcclCollective::init`] takes the id from anywhere else (a gRPC
//! message from the coordinator, for actor processes receiving weights).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::{Comm, Id, ReduceOp};
use kaizen_learner::{Collective, Error};

use crate::{GpuError, Library, cuda_context, require};

/// Floats per all-reduce bucket by default: 16 Mi (64 MiB of device memory, reused).
pub const DEFAULT_BUCKET_ELEMS: usize = 1 << 24;

/// NCCL's unique id (`ncclUniqueId`, 128 opaque bytes): created once by rank 0, sent to the
/// other ranks, and given to every rank's [`NcclCollective::init`].
#[derive(Clone, PartialEq, Eq)]
pub struct NcclId([u8; NcclId::LEN]);

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclId({} bytes)", Self::LEN)
    }
}

impl NcclId {
    /// Bytes in an id.
    pub const LEN: usize = 128;

    /// A new id (rank 0 only; `ncclGetUniqueId` also starts NCCL's bootstrap listener in this
    /// process, on the interface `NCCL_SOCKET_IFNAME` selects).
    ///
    /// # Errors
    /// [`GpuError::Library`] when NCCL cannot be loaded; [`GpuError::Nccl`] when it fails.
    pub fn create() -> Result<Self, GpuError> {
        require(Library::Nccl)?;
        let id = Id::new().map_err(|e| GpuError::nccl("creating the unique id", e))?;
        Ok(Self(id.internal().map(|c| c as u8)))
    }

    /// The id received from rank 0.
    ///
    /// # Errors
    /// [`GpuError::Input`] when `bytes` is not exactly [`NcclId::LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GpuError> {
        let bytes: [u8; Self::LEN] = bytes.try_into().map_err(|_| {
            GpuError::Input(format!(
                "an NCCL unique id is {} bytes, got {}",
                Self::LEN,
                bytes.len()
            ))
        })?;
        Ok(Self(bytes))
    }

    /// The bytes to send to the other ranks.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    fn to_nccl(&self) -> Id {
        Id::uninit(self.0.map(|b| b as std::ffi::c_char))
    }
}

/// The communicator and its reusable device bucket, used by one thread at a time.
struct Comms {
    comm: Comm,
    bucket: CudaSlice<f32>,
}

// SAFETY: an NCCL communicator is not tied to the thread that created it; NCCL only forbids
// using one communicator from two threads at once, which the `Mutex` around `Comms` rules out.
// The device buffer is `Send` already.
unsafe impl Send for Comms {}

/// An NCCL communicator over one GPU per rank, as a [`Collective`] (sum all-reduce in buckets,
/// all-gather of bytes) plus a bucketed [`NcclCollective::broadcast`] for weights.
pub struct NcclCollective {
    comms: Mutex<Comms>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

impl NcclCollective {
    /// Joins the communicator `id` names as `rank` of `world_size`, on GPU `ordinal` (usually
    /// the launcher's local rank). Blocks until all `world_size` ranks have joined.
    /// `bucket_elems` floats of device memory are allocated for the host-buffer operations.
    ///
    /// # Errors
    /// [`GpuError::Input`] when `rank >= world_size` or `bucket_elems == 0`;
    /// [`GpuError::Library`] when the driver or NCCL cannot be loaded (a machine without a GPU:
    /// the driver is named); [`GpuError::Driver`] / [`GpuError::Nccl`] when they fail.
    pub fn init(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        id: &NcclId,
        bucket_elems: usize,
    ) -> Result<Self, GpuError> {
        if rank >= world_size || bucket_elems == 0 {
            return Err(GpuError::Input(format!(
                "NCCL rank {rank} of world size {world_size} with buckets of {bucket_elems} \
                 floats: need rank < world size and a non-empty bucket"
            )));
        }
        let context = cuda_context(ordinal)?;
        require(Library::Nccl)?;
        let stream = context.default_stream();
        let comm =
            Comm::from_rank(stream.clone(), rank, world_size, id.to_nccl()).map_err(|e| {
                GpuError::nccl(
                    format!("joining as rank {rank} of {world_size} on GPU {ordinal}"),
                    e,
                )
            })?;
        let bucket = stream
            .alloc_zeros::<f32>(bucket_elems)
            .map_err(|e| GpuError::driver(format!("allocating {bucket_elems} floats"), e))?;
        Ok(Self {
            comms: Mutex::new(Comms { comm, bucket }),
            stream,
            rank,
            world_size,
        })
    }

    /// A group of one on GPU `ordinal` (a single-GPU learner; the device check's bandwidth
    /// figure).
    ///
    /// # Errors
    /// As [`NcclCollective::init`].
    pub fn single(ordinal: usize, bucket_elems: usize) -> Result<Self, GpuError> {
        let id = NcclId::create_after_driver_check()?;
        Self::init(ordinal, 0, 1, &id, bucket_elems)
    }

    /// The NCCL group of the ranks of `bootstrap` (the learner ranks' MPI group): rank 0
    /// creates the id and sends it to the others over `bootstrap`; each rank then joins on GPU
    /// `ordinal`. When rank 0 cannot create the id it sends an empty message, so the other
    /// ranks fail too instead of waiting.
    ///
    /// # Errors
    /// As [`NcclCollective::init`]; [`GpuError::Nccl`] when `bootstrap` fails or rank 0 could
    /// not create the id.
    pub fn over(
        bootstrap: &dyn Collective,
        ordinal: usize,
        bucket_elems: usize,
    ) -> Result<Self, GpuError> {
        let (rank, world_size) = (bootstrap.rank(), bootstrap.world_size());
        let created = if rank == 0 {
            Some(NcclId::create_after_driver_check())
        } else {
            None
        };
        let message = match &created {
            Some(Ok(id)) => id.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        let gathered = bootstrap
            .all_gather_bytes(&message)
            .map_err(|e| GpuError::Nccl {
                during: "sending the unique id over the bootstrap group".into(),
                message: e.to_string(),
            })?;
        if let Some(Err(e)) = created {
            return Err(e);
        }
        let from_root = gathered.first().map(Vec::as_slice).unwrap_or_default();
        if from_root.is_empty() {
            return Err(GpuError::Nccl {
                during: format!("rank {rank} waiting for the unique id"),
                message: "rank 0 could not create it (see rank 0's log)".into(),
            });
        }
        Self::init(
            ordinal,
            rank,
            world_size,
            &NcclId::from_bytes(from_root)?,
            bucket_elems,
        )
    }

    /// The stream the communicator runs on (allocate device buffers for
    /// [`NcclCollective::all_reduce_sum_device`] on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The loaded NCCL's version, `(major, minor, patch)`.
    ///
    /// # Errors
    /// [`GpuError::Library`] when NCCL cannot be loaded; [`GpuError::Nccl`] when it fails.
    pub fn version() -> Result<(i32, i32, i32), GpuError> {
        require(Library::Nccl)?;
        let code = cudarc::nccl::result::get_nccl_version()
            .map_err(|e| GpuError::nccl("ncclGetVersion", e))?;
        // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
        Ok((code / 10_000, code / 100 % 100, code % 100))
    }

    /// Sums `values` (a device buffer or a view of one: a [`CudaSlice`] or `CudaViewMut`)
    /// across ranks in place on the device (one `ncclAllReduce`, then a stream
    /// synchronisation): the GPU learner's path, no host copies. Work queued on another stream
    /// of the same GPU that wrote `values` is waited for (cudarc orders a buffer's uses across
    /// streams by events).
    ///
    /// # Shapes
    /// - `values`: any length, the same on every rank.
    ///
    /// # Errors
    /// [`GpuError::Nccl`] / [`GpuError::Driver`] when NCCL or the stream fails.
    pub fn all_reduce_sum_device(
        &self,
        values: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), GpuError> {
        let comms = self.lock()?;
        comms
            .comm
            .all_reduce_in_place(values, &ReduceOp::Sum)
            .map_err(|e| GpuError::nccl("all-reduce on the device", e))?;
        self.stream
            .synchronize()
            .map_err(|e| GpuError::driver("waiting for the all-reduce", e))
    }

    /// Copies `values` from rank `root` to every rank, in buckets through the device (weights
    /// learner → actors on GPU nodes).
    ///
    /// # Shapes
    /// - `values`: the same length on every rank; other ranks' contents are overwritten.
    ///
    /// # Errors
    /// [`GpuError::Input`] when `root` is not a rank; NCCL or driver failures.
    pub fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), GpuError> {
        if root >= self.world_size {
            return Err(GpuError::Input(format!(
                "broadcast root {root} is not a rank (world size {})",
                self.world_size
            )));
        }
        let root = i32::try_from(root).map_err(|_| GpuError::Input(format!("root {root}")))?;
        self.bucketed(values, "broadcast", |comm, bucket| {
            comm.broadcast_in_place(bucket, root).map(|_| ())
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Comms>, GpuError> {
        self.comms
            .lock()
            .map_err(|_| GpuError::Input("the NCCL communicator's lock is poisoned".into()))
    }

    /// Runs `op` over `values` one bucket at a time: host → device, `op`, device → host.
    fn bucketed(
        &self,
        values: &mut [f32],
        what: &str,
        op: impl Fn(
            &Comm,
            &mut cudarc::driver::CudaViewMut<'_, f32>,
        ) -> Result<(), cudarc::nccl::result::NcclError>,
    ) -> Result<(), GpuError> {
        let mut guard = self.lock()?;
        let Comms { comm, bucket } = &mut *guard;
        let size = bucket.len();
        for (i, chunk) in values.chunks_mut(size).enumerate() {
            let len = chunk.len();
            let during = |step: &str| format!("{what}, bucket {i} ({len} floats): {step}");
            let mut view = bucket.slice_mut(0..len);
            self.stream
                .memcpy_htod(&*chunk, &mut view)
                .map_err(|e| GpuError::driver(during("copy to the device"), e))?;
            op(comm, &mut view).map_err(|e| GpuError::nccl(during("collective"), e))?;
            self.stream
                .memcpy_dtoh(&view, chunk)
                .map_err(|e| GpuError::driver(during("copy to the host"), e))?;
            self.stream
                .synchronize()
                .map_err(|e| GpuError::driver(during("synchronise"), e))?;
        }
        Ok(())
    }
}

impl NcclId {
    /// [`NcclId::create`], after checking the driver: on a machine without a GPU the error
    /// names the driver, the real cause, rather than NCCL.
    fn create_after_driver_check() -> Result<Self, GpuError> {
        require(Library::Driver)?;
        Self::create()
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sums host `values` across ranks: per bucket, copy to the device, `ncclAllReduce`, copy
    /// back (see the module docs: the first version's host-buffer path).
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), Error> {
        self.bucketed(values, "all-reduce", |comm, bucket| {
            comm.all_reduce_in_place(bucket, &ReduceOp::Sum).map(|_| ())
        })
        .map_err(|e| Error::Collective(e.to_string()))
    }

    /// This communicator: `kaizen_gpu::train::PassBackend` on [`crate::train::CudaOps`]
    /// downcasts it and sums its gradient buckets in place with
    /// [`NcclCollective::all_reduce_sum_device`].
    fn device_collective(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    /// Lengths first (`ncclAllGather` of one u64 per rank), then every rank's bytes padded to
    /// the longest (metrics: small, once a step).
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let fail = |during: &str, e: String| Error::Collective(format!("NCCL {during}: {e}"));
        let comms = self.lock().map_err(|e| fail("lock", e.to_string()))?;
        let stream = &self.stream;
        let world = self.world_size;
        let len = stream
            .clone_htod(&[bytes.len() as u64])
            .map_err(|e| fail("copying a length", e.to_string()))?;
        let mut lens = stream
            .alloc_zeros::<u64>(world)
            .map_err(|e| fail("allocating lengths", e.to_string()))?;
        comms
            .comm
            .all_gather(&len, &mut lens)
            .map_err(|e| fail("all-gather of lengths", format!("{:?}", e.0)))?;
        let lens = stream
            .clone_dtoh(&lens)
            .map_err(|e| fail("copying lengths", e.to_string()))?;
        let lens: Vec<usize> = lens
            .iter()
            .map(|&l| usize::try_from(l))
            .collect::<Result<_, _>>()
            .map_err(|e| fail("a rank's length", e.to_string()))?;
        let longest = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = bytes.to_vec();
        padded.resize(longest, 0);
        let send = stream
            .clone_htod(&padded)
            .map_err(|e| fail("copying bytes", e.to_string()))?;
        let mut recv = stream
            .alloc_zeros::<u8>(longest * world)
            .map_err(|e| fail("allocating the gather", e.to_string()))?;
        comms
            .comm
            .all_gather(&send, &mut recv)
            .map_err(|e| fail("all-gather of bytes", format!("{:?}", e.0)))?;
        let all = stream
            .clone_dtoh(&recv)
            .map_err(|e| fail("copying the gather", e.to_string()))?;
        Ok(all
            .chunks(longest)
            .zip(&lens)
            .map(|(chunk, &n)| chunk[..n].to_vec())
            .collect())
    }
}
