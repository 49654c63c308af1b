//! The data-parallel sum of the training pass's gradients in buckets, as PyTorch's
//! `DistributedDataParallel` does (`bucket_cap_mb`, 25 MiB by default): consecutive parameters'
//! gradients are packed into one flat buffer of at most [`GradBuckets`]' capacity and summed by
//! one collective call, instead of one call per parameter (a Llama layer has nine parameters,
//! most of them small; each call costs a fixed latency).
//!
//! Packing and unpacking are device-to-device copies ([`TrainOps::copy`]); the sum runs in
//! place in device memory when the group offers a device collective the backend reduces on
//! ([`TrainOps::all_reduce_sum`]: NCCL for `CudaOps`), else through one host copy per bucket
//! and [`Collective::all_reduce_sum`]. A parameter larger than a bucket is its own bucket and
//! is reduced in its own buffer, unpacked.
//!
//! Buckets follow the parameters' order ([`super::layout`]), not PyTorch's reverse order: the
//! learner sums its gradients once the whole step's backward is done, so no bucket can start
//! early.

use std::ops::Range;

use kaizen_learner::{Collective, Error};

use super::ops::TrainOps;
use crate::GpuError;

/// Bytes per all-reduce bucket by default: 25 MiB, PyTorch DDP's `bucket_cap_mb` default.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Consecutive parameters whose gradients one collective call sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The parameters, as indices into the pass's parameter order ([`super::layout`]).
    pub params: Range<usize>,
    /// Their floats together (4 bytes each).
    pub floats: usize,
}

/// Groups parameters of `lens` floats each, in order, into buckets of at most `bucket_bytes`:
/// a parameter that does not fit into the current bucket starts the next, and a parameter
/// larger than a bucket is a bucket of its own.
pub fn plan(lens: &[usize], bucket_bytes: usize) -> Vec<Bucket> {
    let capacity = bucket_bytes / size_of::<f32>();
    let mut out = Vec::new();
    let mut start = 0;
    let mut floats = 0;
    for (i, &len) in lens.iter().enumerate() {
        if i > start && floats + len > capacity {
            out.push(Bucket {
                params: start..i,
                floats,
            });
            start = i;
            floats = 0;
        }
        floats += len;
    }
    if start < lens.len() {
        out.push(Bucket {
            params: start..lens.len(),
            floats,
        });
    }
    out
}

/// The bucket plan of a model's gradients and the flat buffer buckets of several parameters
/// are packed into (allocated at the first sum, as large as the largest such bucket, reused).
#[derive(Debug)]
pub struct GradBuckets<B> {
    lens: Vec<usize>,
    buckets: Vec<Bucket>,
    flat: Option<B>,
}

impl<B> GradBuckets<B> {
    /// Buckets of at most `bucket_bytes` over parameters of `lens` floats each (in the order
    /// the gradients will be given to [`GradBuckets::all_reduce`]).
    pub fn new(lens: Vec<usize>, bucket_bytes: usize) -> Self {
        Self {
            buckets: plan(&lens, bucket_bytes),
            lens,
            flat: None,
        }
    }

    /// The buckets, in order: one collective call each.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// Sums `grads` (one buffer per parameter, in the order of the lengths given to
    /// [`GradBuckets::new`]) across `group`, in place, one collective call per bucket: packed
    /// on the device, summed on the device or through the host, unpacked.
    ///
    /// # Errors
    /// [`Error::Backend`] when `grads` does not match the plan or a copy fails; the
    /// collective's errors.
    pub fn all_reduce<O: TrainOps<Buf = B>>(
        &mut self,
        ops: &O,
        mut grads: Vec<&mut B>,
        group: &dyn Collective,
    ) -> Result<(), Error> {
        if grads.len() != self.lens.len() {
            return Err(Error::Backend(format!(
                "all-reduce: {} gradient buffers for a plan of {} parameters",
                grads.len(),
                self.lens.len()
            )));
        }
        let gpu = |e: GpuError| Error::Backend(format!("all-reduce: {e}"));
        for bucket in &self.buckets {
            let params = bucket.params.clone();
            if params.len() == 1 {
                reduce(ops, grads[params.start], bucket.floats, group)?;
                continue;
            }
            let flat = match &mut self.flat {
                Some(flat) => flat,
                None => {
                    let largest = self
                        .buckets
                        .iter()
                        .filter(|b| b.params.len() > 1)
                        .map(|b| b.floats)
                        .max()
                        .unwrap_or(0);
                    self.flat.insert(ops.alloc(largest).map_err(gpu)?)
                }
            };
            let mut offset = 0;
            for i in params.clone() {
                ops.copy(grads[i], 0, flat, offset, self.lens[i])
                    .map_err(gpu)?;
                offset += self.lens[i];
            }
            reduce(ops, flat, bucket.floats, group)?;
            let mut offset = 0;
            for i in params {
                ops.copy(flat, offset, grads[i], 0, self.lens[i])
                    .map_err(gpu)?;
                offset += self.lens[i];
            }
        }
        Ok(())
    }
}

/// Sums `buf[..len]` across `group` in place: on the device when `ops` can, else downloaded,
/// summed by `group` on the host, uploaded and copied back.
fn reduce<O: TrainOps>(
    ops: &O,
    buf: &mut O::Buf,
    len: usize,
    group: &dyn Collective,
) -> Result<(), Error> {
    let gpu = |e: GpuError| Error::Backend(format!("all-reduce: {e}"));
    if ops.all_reduce_sum(buf, len, group).map_err(gpu)? {
        return Ok(());
    }
    let mut host = ops.download(buf).map_err(gpu)?;
    host.truncate(len);
    group.all_reduce_sum(&mut host)?;
    let summed = ops.upload(&host).map_err(gpu)?;
    ops.copy(&summed, 0, buf, 0, len).map_err(gpu)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::train::HostOps;

    /// A second rank simulated: each call adds the next `len` values of the other rank's
    /// gradients (all parameters' gradients back to back, in order) and records `len`.
    struct TwoRanks {
        other: Vec<f32>,
        calls: Mutex<Vec<usize>>,
    }

    impl Collective for TwoRanks {
        fn rank(&self) -> usize {
            0
        }

        fn world_size(&self) -> usize {
            2
        }

        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), Error> {
            let mut calls = self.calls.lock().unwrap();
            let (start, n) = (calls.iter().sum::<usize>(), values.len());
            for (v, o) in values.iter_mut().zip(&self.other[start..start + n]) {
                *v += o;
            }
            calls.push(values.len());
            Ok(())
        }

        fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
            Ok(vec![bytes.to_vec(), bytes.to_vec()])
        }
    }

    #[test]
    fn parameters_pack_in_order_and_a_large_one_is_its_own_bucket() {
        // 40-byte buckets hold 10 floats.
        let lens = [4, 4, 3, 25, 2, 10, 1, 0, 5];
        let buckets = plan(&lens, 40);
        let ranges: Vec<Range<usize>> = buckets.iter().map(|b| b.params.clone()).collect();
        assert_eq!(ranges, [0..2, 2..3, 3..4, 4..5, 5..6, 6..9]);
        let floats: Vec<usize> = buckets.iter().map(|b| b.floats).collect();
        assert_eq!(floats, [8, 3, 25, 2, 10, 6]);
        assert!(plan(&[], 40).is_empty());
        // A cap below one float: every parameter alone.
        assert_eq!(plan(&[1, 1], 3).len(), 2);
    }

    #[test]
    fn gradients_are_summed_one_call_per_bucket_element_for_element() {
        let lens = vec![7, 300, 5, 9, 1200, 16, 16, 2, 650];
        let bucket_bytes = 1024; // 256 floats
        let mine: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(p, &n)| (0..n).map(|i| (p * 10_000 + i) as f32).collect())
            .collect();
        let other: Vec<f32> = (0..lens.iter().sum::<usize>())
            .map(|i| ((i * 37) % 1001) as f32 * 0.5 - 100.0)
            .collect();
        let group = TwoRanks {
            other: other.clone(),
            calls: Mutex::new(Vec::new()),
        };
        let mut buckets = GradBuckets::new(lens.clone(), bucket_bytes);
        let mut grads = mine.clone();
        buckets
            .all_reduce(&HostOps, grads.iter_mut().collect(), &group)
            .unwrap();

        let calls = group.calls.into_inner().unwrap();
        assert_eq!(calls.len(), buckets.buckets().len());
        let expected: Vec<usize> = buckets.buckets().iter().map(|b| b.floats).collect();
        assert_eq!(calls, expected);
        for (b, &len) in buckets.buckets().iter().zip(&calls) {
            let single = b.params.len() == 1;
            assert!(
                len * 4 <= bucket_bytes || single,
                "bucket {b:?} of {len} floats holds several parameters"
            );
        }
        assert!(calls.len() < lens.len(), "small parameters share buckets");
        assert!(calls.contains(&1200) && calls.contains(&300) && calls.contains(&650));

        let mut offset = 0;
        for (p, (got, mine)) in grads.iter().zip(&mine).enumerate() {
            for (i, (g, m)) in got.iter().zip(mine).enumerate() {
                assert_eq!(*g, m + other[offset + i], "parameter {p}, element {i}");
            }
            offset += mine.len();
        }

        // Summing again reuses the flat buffer and adds the same vector once more.
        let group = TwoRanks {
            other: other.clone(),
            calls: Mutex::new(Vec::new()),
        };
        buckets
            .all_reduce(&HostOps, grads.iter_mut().collect(), &group)
            .unwrap();
        assert_eq!(grads[0][3], mine[0][3] + 2.0 * other[3]);
    }

    #[test]
    fn gradients_that_do_not_match_the_plan_are_an_error() {
        let group = TwoRanks {
            other: vec![0.0; 8],
            calls: Mutex::new(Vec::new()),
        };
        let mut buckets = GradBuckets::new(vec![4, 4], 1024);
        let mut grads = [vec![0.0; 4]];
        let err = buckets
            .all_reduce(&HostOps, grads.iter_mut().collect(), &group)
            .unwrap_err();
        assert!(err.to_string().contains("1 gradient buffers"), "{err}");
        let mut short = [vec![0.0; 4], vec![0.0; 3]];
        let err = buckets
            .all_reduce(&HostOps, short.iter_mut().collect(), &group)
            .unwrap_err();
        assert!(err.to_string().contains("copy"), "{err}");
    }
}
