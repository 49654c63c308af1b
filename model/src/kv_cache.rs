//! The key/value cache for incremental decoding, owned by the caller.

use burn::tensor::{Bool, Device, Tensor, TensorData};

/// Columns are allocated in chunks of this many positions, so the cache is re-allocated (and
/// copied) once per `CHUNK` decoded tokens instead of at every token.
const CHUNK: usize = 64;

/// Cached keys and values of every layer for a batch of rows that decode in lock-step.
///
/// All rows share one column axis: column `c` of every layer holds the key/value of each row's
/// token written at step `c`. Rows whose prompts are shorter are *left-padded*: row `b`'s first
/// real token sits at column `starts[b]`, and its token at column `c` has position
/// `c - starts[b]`. Columns `len..capacity` are allocated but not yet written; attention masks
/// them (and the padding) out.
///
/// The cache is a value the caller owns and passes as `&mut` (as in candle's llama `Cache`):
/// rows can be dropped ([`KvCache::select_rows`]), duplicated after a shared prefill
/// ([`KvCache::select_rows`] with repeated indices — GRPO groups) and batches merged
/// ([`KvCache::append`]) for continuous batching.
///
/// Keys and values live either in burn tensors on the model's device, or, when the model runs on
/// kaizen's CPU kernels (`crate::cpu_forward`), in host buffers those kernels read directly;
/// the forward pass picks the storage when it first writes.
///
/// # Shapes
/// Each layer holds `k`, `v`: `[rows, num_key_value_heads, capacity, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Host storage (CPU kernels): one `(k, v)` pair of row-major buffers per layer; empty
    /// while the cache uses tensors or holds nothing.
    host: Vec<(Vec<f32>, Vec<f32>)>,
    starts: Vec<usize>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    /// An empty cache for `rows` rows, where row `b` will start at column `starts[b]`.
    pub(crate) fn new(
        num_layers: usize,
        starts: Vec<usize>,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            layers: vec![None; num_layers],
            host: Vec::new(),
            starts,
            len: 0,
            capacity: 0,
            kv_heads,
            head_dim,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// Columns written so far (the same for every row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of tokens row `b` holds (its sequence length so far).
    pub fn row_len(&self, b: usize) -> usize {
        self.len - self.starts[b]
    }

    /// First real column of each row.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Allocated columns.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        2 * self.layers.len() * self.rows() * self.kv_heads * self.capacity * self.head_dim * 4
    }

    /// Whether keys and values live in host buffers (CPU kernels).
    pub(crate) fn is_host(&self) -> bool {
        !self.host.is_empty()
    }

    /// Whether keys and values live in tensors.
    pub(crate) fn is_tensor(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// Makes room for `new` more columns in host storage, growing by whole chunks (the CPU
    /// kernels' counterpart of [`KvCache::reserve`]).
    ///
    /// # Panics
    /// If the cache already holds tensors.
    pub(crate) fn reserve_host(&mut self, new: usize) {
        assert!(
            !self.is_tensor(),
            "KvCache: tensor storage used by the CPU kernels"
        );
        let needed = self.len + new;
        if self.is_host() && needed <= self.capacity {
            return;
        }
        let capacity = needed.div_ceil(CHUNK) * CHUNK;
        self.remap_host(self.rows(), capacity.max(self.capacity), 0);
    }

    /// The host keys and values of `layer`, `[rows, kv_heads, capacity, head_dim]` each.
    pub(crate) fn host_layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        let (k, v) = &mut self.host[layer];
        (k, v)
    }

    /// Re-lays out every host layer for `capacity` columns, moving column `c` to `c + shift`
    /// (columns that fall outside are dropped, new ones are zero).
    fn remap_host(&mut self, rows: usize, capacity: usize, shift: isize) {
        // Same layout: nothing to move (appending a batch of the same capacity would otherwise
        // copy the whole running cache).
        if !self.host.is_empty() && capacity == self.capacity && shift == 0 {
            return;
        }
        if self.host.is_empty() {
            self.host = vec![(Vec::new(), Vec::new()); self.layers.len()];
        }
        let (heads, dim, old) = (self.kv_heads, self.head_dim, self.capacity);
        let remap = |src: &[f32]| {
            let mut dst = vec![0.0; rows * heads * capacity * dim];
            if src.is_empty() {
                return dst;
            }
            // Source columns that land inside the new range.
            let lo = (-shift).max(0) as usize;
            let hi = (capacity as isize - shift).clamp(0, old as isize) as usize;
            if lo >= hi {
                return dst;
            }
            let to = (lo as isize + shift) as usize;
            for (s, d) in src
                .chunks_exact(old * dim)
                .zip(dst.chunks_exact_mut(capacity * dim))
            {
                d[to * dim..(to + hi - lo) * dim].copy_from_slice(&s[lo * dim..hi * dim]);
            }
            dst
        };
        for (k, v) in &mut self.host {
            *k = remap(k);
            *v = remap(v);
        }
        self.capacity = capacity;
    }

    /// Makes room for `new` more columns, growing every layer by whole chunks.
    pub(crate) fn reserve(&mut self, new: usize, device: &Device) {
        if self.is_host() {
            self.host_to_tensors(device);
        }
        let needed = self.len + new;
        if needed <= self.capacity {
            return;
        }
        let capacity = needed.div_ceil(CHUNK) * CHUNK;
        let grow = capacity - self.capacity;
        let shape = [self.rows(), self.kv_heads, grow, self.head_dim];
        for layer in &mut self.layers {
            *layer = Some(match layer.take() {
                None => (Tensor::zeros(shape, device), Tensor::zeros(shape, device)),
                Some((k, v)) => (
                    Tensor::cat(vec![k, Tensor::zeros(shape, device)], 2),
                    Tensor::cat(vec![v, Tensor::zeros(shape, device)], 2),
                ),
            });
        }
        self.capacity = capacity;
    }

    /// Writes the keys and values of `new` columns for `layer` at columns `len..len + new`
    /// and returns the whole (capacity-wide) key and value tensors to attend over.
    ///
    /// # Shapes
    /// - `k`, `v`: `[rows, kv_heads, new, head_dim]`
    /// - returns `[rows, kv_heads, capacity, head_dim]` each.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let [rows, heads, new, dim] = k.dims();
        let start = self.len;
        let (ck, cv) = self.layers[layer]
            .take()
            .expect("KvCache::reserve runs before write");
        let range = [0..rows, 0..heads, start..start + new, 0..dim];
        let ck = ck.slice_assign(range.clone(), k);
        let cv = cv.slice_assign(range, v);
        self.layers[layer] = Some((ck.clone(), cv.clone()));
        (ck, cv)
    }

    /// Marks `new` columns as written (after every layer wrote them).
    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps the given rows, in the given order; an index may repeat (a row is duplicated,
    /// e.g. the G samples of a GRPO group after one shared prefill). Leading columns that no
    /// remaining row uses are dropped.
    ///
    /// # Panics
    /// If an index is out of range (a programmer error).
    pub fn select_rows(&mut self, rows: &[usize]) {
        let old_rows = self.rows();
        assert!(
            rows.iter().all(|&r| r < old_rows),
            "KvCache::select_rows: row out of range"
        );
        let same = rows.len() == old_rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if !same && self.is_host() {
            let block = self.kv_heads * self.capacity * self.head_dim;
            let gather = |src: &[f32]| {
                let mut dst = Vec::with_capacity(rows.len() * block);
                for &r in rows {
                    dst.extend_from_slice(&src[r * block..(r + 1) * block]);
                }
                dst
            };
            for (k, v) in &mut self.host {
                *k = gather(k);
                *v = gather(v);
            }
            self.starts = rows.iter().map(|&r| self.starts[r]).collect();
        } else if !same {
            let device = self.device();
            if let Some(device) = device {
                let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(
                    TensorData::new(idx, [rows.len()]),
                    &device,
                );
                for layer in &mut self.layers {
                    if let Some((k, v)) = layer.take() {
                        *layer = Some((k.select(0, idx.clone()), v.select(0, idx.clone())));
                    }
                }
            }
            self.starts = rows.iter().map(|&r| self.starts[r]).collect();
        }
        self.trim_leading();
    }

    /// Appends the rows of `other` below this cache's rows, aligning both on their last
    /// written column (the shorter one is left-padded).
    pub fn append(&mut self, mut other: KvCache) {
        assert_eq!(
            self.layers.len(),
            other.layers.len(),
            "KvCache::append: layer count"
        );
        if other.rows() == 0 {
            return;
        }
        if self.rows() == 0 {
            *self = other;
            return;
        }
        // Mixed storage (a cache filled by the CPU kernels meets one filled by burn): move the
        // host one into tensors.
        if self.is_host() != other.is_host() {
            if let Some(device) = other.device() {
                self.host_to_tensors(&device);
            } else if let Some(device) = self.device() {
                other.host_to_tensors(&device);
            }
        }
        if self.len < other.len {
            self.shift_right(other.len - self.len);
        } else if other.len < self.len {
            other.shift_right(self.len - other.len);
        }
        let capacity = self.capacity.max(other.capacity);
        if self.is_host() {
            let rows = self.rows();
            self.remap_host(rows, capacity, 0);
            other.remap_host(other.rows(), capacity, 0);
            for ((k1, v1), (k2, v2)) in self.host.iter_mut().zip(other.host) {
                k1.extend_from_slice(&k2);
                v1.extend_from_slice(&v2);
            }
            self.starts.extend(other.starts);
            return;
        }
        if let Some(device) = self.device() {
            self.pad_capacity(capacity, &device);
            other.pad_capacity(capacity, &device);
        }
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((k1, v1)), Some((k2, v2))) => {
                    Some((Tensor::cat(vec![k1, k2], 0), Tensor::cat(vec![v1, v2], 0)))
                }
                (a, b) => a.or(b),
            };
        }
        self.starts.extend(other.starts);
    }

    fn device(&self) -> Option<Device> {
        self.layers.iter().flatten().next().map(|(k, _)| k.device())
    }

    /// Inserts `shift` empty columns on the left of every row.
    fn shift_right(&mut self, shift: usize) {
        if self.is_host() {
            let (rows, capacity) = (self.rows(), self.capacity + shift);
            self.remap_host(rows, capacity, shift as isize);
        } else if let Some(device) = self.device() {
            let shape = [self.rows(), self.kv_heads, shift, self.head_dim];
            for layer in &mut self.layers {
                if let Some((k, v)) = layer.take() {
                    *layer = Some((
                        Tensor::cat(vec![Tensor::zeros(shape, &device), k], 2),
                        Tensor::cat(vec![Tensor::zeros(shape, &device), v], 2),
                    ));
                }
            }
            self.capacity += shift;
        }
        for s in &mut self.starts {
            *s += shift;
        }
        self.len += shift;
    }

    fn pad_capacity(&mut self, capacity: usize, device: &Device) {
        if capacity <= self.capacity {
            return;
        }
        let shape = [
            self.rows(),
            self.kv_heads,
            capacity - self.capacity,
            self.head_dim,
        ];
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take() {
                *layer = Some((
                    Tensor::cat(vec![k, Tensor::zeros(shape, device)], 2),
                    Tensor::cat(vec![v, Tensor::zeros(shape, device)], 2),
                ));
            }
        }
        self.capacity = capacity;
    }

    /// Drops whole chunks of leading columns that no row uses any more.
    fn trim_leading(&mut self) {
        let Some(min_start) = self.starts.iter().copied().min() else {
            return;
        };
        let drop = (min_start / CHUNK) * CHUNK;
        if drop == 0 {
            return;
        }
        let (rows, heads, dim, capacity) =
            (self.rows(), self.kv_heads, self.head_dim, self.capacity);
        if self.is_host() {
            self.remap_host(rows, capacity - drop, -(drop as isize));
        }
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.take() {
                let range = [0..rows, 0..heads, drop..capacity, 0..dim];
                *layer = Some((k.slice(range.clone()), v.slice(range)));
            }
        }
        for s in &mut self.starts {
            *s -= drop;
        }
        self.len -= drop;
        if !self.is_host() {
            self.capacity -= drop;
        }
    }

    /// The first `cols` columns of row `b` as a one-row host cache (starting at column 0, no
    /// spare capacity): what a finished turn leaves for the episode's next turn. `None` when the
    /// cache does not hold host storage or the row has fewer than `cols` columns.
    pub(crate) fn row_prefix(&self, b: usize, cols: usize) -> Option<KvCache> {
        if !self.is_host() || b >= self.rows() || cols == 0 || self.row_len(b) < cols {
            return None;
        }
        let (heads, dim, capacity) = (self.kv_heads, self.head_dim, self.capacity);
        let start = self.starts[b];
        let copy = |src: &[f32]| {
            let row = &src[b * heads * capacity * dim..(b + 1) * heads * capacity * dim];
            let mut dst = Vec::with_capacity(heads * cols * dim);
            for head in row.chunks_exact(capacity * dim) {
                dst.extend_from_slice(&head[start * dim..(start + cols) * dim]);
            }
            dst
        };
        Some(KvCache {
            layers: vec![None; self.layers.len()],
            host: self.host.iter().map(|(k, v)| (copy(k), copy(v))).collect(),
            starts: vec![0],
            len: cols,
            capacity: cols,
            kv_heads: heads,
            head_dim: dim,
        })
    }

    /// Keeps only the first `cols` columns of a one-row cache made by [`KvCache::row_prefix`]
    /// (a later turn that shares only part of the earlier one's tokens).
    pub(crate) fn truncate_row(&mut self, cols: usize) {
        if cols >= self.len || self.rows() != 1 || self.starts[0] != 0 {
            return;
        }
        self.remap_host(1, cols, 0);
        self.len = cols;
    }

    /// One host cache holding `rows` (one-row caches from [`KvCache::row_prefix`]), left-padded
    /// so that they end on the same column, with room for `extra` more columns. `None` when
    /// `rows` is empty or one of them is not such a cache.
    pub(crate) fn stack_rows(rows: Vec<KvCache>, extra: usize) -> Option<KvCache> {
        let first = rows.first()?;
        let (layers, heads, dim) = (first.layers.len(), first.kv_heads, first.head_dim);
        let ok = rows.iter().all(|r| {
            r.is_host()
                && r.rows() == 1
                && r.starts[0] == 0
                && (r.layers.len(), r.kv_heads, r.head_dim) == (layers, heads, dim)
        });
        if !ok {
            return None;
        }
        let len = rows.iter().map(|r| r.len).max().unwrap_or(0);
        let capacity = (len + extra).div_ceil(CHUNK) * CHUNK;
        let n = rows.len();
        let mut host = vec![
            (
                vec![0.0; n * heads * capacity * dim],
                vec![0.0; n * heads * capacity * dim]
            );
            layers
        ];
        let starts: Vec<usize> = rows.iter().map(|r| len - r.len).collect();
        for (b, row) in rows.iter().enumerate() {
            let (cols, src_cap, start) = (row.len, row.capacity, starts[b]);
            for ((dk, dv), (sk, sv)) in host.iter_mut().zip(&row.host) {
                for h in 0..heads {
                    let to = (b * heads + h) * capacity * dim + start * dim;
                    let from = h * src_cap * dim;
                    dk[to..to + cols * dim].copy_from_slice(&sk[from..from + cols * dim]);
                    dv[to..to + cols * dim].copy_from_slice(&sv[from..from + cols * dim]);
                }
            }
        }
        Some(KvCache {
            layers: vec![None; layers],
            host,
            starts,
            len,
            capacity,
            kv_heads: heads,
            head_dim: dim,
        })
    }

    /// Moves host storage into tensors on `device`.
    fn host_to_tensors(&mut self, device: &Device) {
        let shape = [self.rows(), self.kv_heads, self.capacity, self.head_dim];
        for (layer, (k, v)) in self.layers.iter_mut().zip(std::mem::take(&mut self.host)) {
            *layer = Some((
                Tensor::from_data(TensorData::new(k, shape), device),
                Tensor::from_data(TensorData::new(v, shape), device),
            ));
        }
    }
}

/// Which keys each query may attend to, for a forward pass over `new` columns starting at
/// column `past` of a `[rows, columns]` layout where row `b` starts at `starts[b]`.
///
/// Query `t` of row `b` sits at column `past + t` and sees key columns `c` with
/// `starts[b] <= c <= past + t` (causal, no padding). A padding query (`past + t < starts[b]`)
/// sees only itself, so no softmax row is empty.
///
/// # Shapes
/// Returns `[rows, 1, groups × new, columns]` (`true` = masked), the query axis repeated
/// `groups` times for grouped-query attention (see [`crate::attention`]).
pub(crate) fn attention_mask(
    starts: &[usize],
    past: usize,
    new: usize,
    columns: usize,
    groups: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let rows = starts.len();
    let mut mask = Vec::with_capacity(rows * groups * new * columns);
    let mut row_mask = Vec::with_capacity(new * columns);
    for &start in starts {
        row_mask.clear();
        for t in 0..new {
            let q = past + t;
            for c in 0..columns {
                let visible = if q < start {
                    c == q
                } else {
                    c >= start && c <= q
                };
                row_mask.push(!visible);
            }
        }
        for _ in 0..groups {
            mask.extend_from_slice(&row_mask);
        }
    }
    Tensor::from_data(
        TensorData::new(mask, [rows, 1, groups * new, columns]),
        device,
    )
}

/// Positions of the `new` tokens of each row: `past + t - starts[b]` (0 for padding).
pub(crate) fn positions(starts: &[usize], past: usize, new: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(starts.len() * new);
    for &start in starts {
        for t in 0..new {
            out.push((past + t).saturating_sub(start));
        }
    }
    out
}
