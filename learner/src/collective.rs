//! Data-parallel learner ranks: the collective operations they need, behind a small interface
//! that an existing collective library implements (MPI on CPU ranks: `kaizen-cluster`'s
//! `MpiCollective`; NCCL on GPUs) — kaizen never implements an all-reduce itself.
//!
//! Each of the `world_size` ranks holds the same model and optimizer state and sees the same
//! step's trajectories; rank r scores and back-propagates micro-batches `r, r + N, r + 2N, …`
//! (the step's normalisers are computed over the whole step on every rank, so the shares add up
//! to the single-process loss); the gradient buffers are summed across ranks and every rank
//! takes the same optimizer step. The result equals the single-process step up to the order of
//! float additions (tested: weights within 1e-6 relative, 1–3 ranks).

use crate::Error;

/// Collective operations over a learner's data-parallel group.
pub trait Collective: Send {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world_size(&self) -> usize;

    /// Sums `values` element-wise across ranks, in place: every rank ends with the sums.
    ///
    /// # Errors
    /// [`Error::Collective`] when the library reports a failure.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), Error>;

    /// Every rank's `bytes`, in rank order, on every rank.
    ///
    /// # Errors
    /// [`Error::Collective`] when the library reports a failure.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error>;

    /// This group as a collective over device memory, for a training backend whose gradients
    /// live on a GPU (`TrainBackend::all_reduce`): the backend downcasts it to the type it
    /// knows (`kaizen_gpu::NcclCollective`) and sums its buffers there in place, with no host
    /// copy. `None` (the default): host slices only, through [`Collective::all_reduce_sum`].
    fn device_collective(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// A group of one: the learner of a single-process job.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<(), Error> {
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        Ok(vec![bytes.to_vec()])
    }
}
