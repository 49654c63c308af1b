//! The data-parallel learner's collective on CPU ranks: MPI (OpenMPI or MPICH from the OS
//! packages, through the `mpi` crate). Built with the `mpi` feature; ranks are started by
//! `mpirun` / `srun --mpi=pmix`, which also give each its rank.

use kaizen_learner::{Collective, Error};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::ClusterError;

/// `MPI_COMM_WORLD` as a [`Collective`]. Owns MPI's initialisation: one per process.
pub struct MpiCollective {
    world: SimpleCommunicator,
    // Finalises MPI when dropped; declared last so the communicator goes first.
    _universe: Universe,
}

// SAFETY: MPI is initialised with `Threading::Serialized`: any thread may call it as long as no
// two call at once. The learner owns its collective and calls it from one thread at a time.
unsafe impl Send for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI (serialised threading).
    ///
    /// # Errors
    /// [`ClusterError::Launch`] when MPI was already initialised or gives less than serialised
    /// threading.
    pub fn init() -> Result<Self, ClusterError> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| {
                ClusterError::Launch("MPI is already initialised in this process".into())
            })?;
        if threading < mpi::Threading::Serialized {
            return Err(ClusterError::Launch(format!(
                "the MPI library gives {threading:?} threading; kaizen needs Serialized"
            )));
        }
        Ok(Self {
            world: universe.world(),
            _universe: universe,
        })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), Error> {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        // Each rank in turn broadcasts its length, then its bytes (metrics: small, once a step).
        let mut out = Vec::with_capacity(self.world_size());
        for root in 0..self.world.size() {
            let process = self.world.process_at_rank(root);
            let mut len = if root == self.world.rank() {
                bytes.len() as u64
            } else {
                0
            };
            process.broadcast_into(&mut len);
            let mut buffer = if root == self.world.rank() {
                bytes.to_vec()
            } else {
                vec![
                    0u8;
                    usize::try_from(len).map_err(|_| {
                        Error::Collective(format!("rank {root} announced {len} bytes"))
                    })?
                ]
            };
            // An empty buffer is not broadcast (MPI rejects a null buffer); every rank knows
            // the length by now.
            if !buffer.is_empty() {
                process.broadcast_into(&mut buffer[..]);
            }
            out.push(buffer);
        }
        Ok(out)
    }
}
