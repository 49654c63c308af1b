//! bf16 products for decoding: `x · Wᵀ` with both `x` and `W` rounded to bfloat16 (round to
//! nearest even) and the products summed in f32 — the arithmetic of a GPU's bf16 matmul.
//!
//! On CPUs with Intel AMX (Xeon since Sapphire Rapids) one `TDPBF16PS` multiplies a 16 × 32
//! tile of inputs by a 32 × 16 tile of weights (8,192 multiply-adds) where AVX-512 does 16;
//! batched decode and prefill then stop being bound by the FMA units (BENCHMARKS.md measures
//! both). The weights are packed once per weights version into AMX's tile layout
//! ([`Bf16Matrix`]): 2 bytes per weight. On CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel
//! Cooper Lake) `VDPBF16PS` does 32 multiply-adds per instruction from the same tiles, twice an
//! f32 FMA ([`dpbf16`]). Elsewhere the same sums run on the f32 units straight from the packed
//! tiles. Every path computes the same model up to float reassociation.

use rayon::prelude::*;

use super::PARALLEL_MIN_MACS;

/// Weight rows (output columns) per panel: one AMX tile's columns of f32 results.
const PANEL: usize = 16;
/// Input columns per tile: 32 bf16 values are one 64-byte tile row.
const CHUNK: usize = 32;
/// bf16 values per packed tile (`CHUNK × PANEL`).
const TILE: usize = CHUNK * PANEL;

/// `x` rounded to the nearest bfloat16 (ties to even); NaN stays NaN.
pub(crate) fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The f32 a bfloat16 stands for.
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// A `[rows, cols]` matrix in bfloat16, packed in AMX's tile layout: panels of [`PANEL`] rows,
/// each a run of tiles over [`CHUNK`] columns; inside a tile, value `(r, 2t + e)` (row `r` of
/// the panel, column `2t + e` of the chunk) sits at `t · 32 + r · 2 + e` (pairs of columns
/// interleaved, as `TDPBF16PS` reads its second operand). Rows and columns are zero-padded to
/// whole panels and chunks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bf16Matrix {
    packed: Vec<u16>,
    rows: usize,
    cols: usize,
}

impl Bf16Matrix {
    /// Rounds `w` (`[rows, cols]`, row-major) to bf16 and packs it.
    pub(crate) fn quantize(w: &[f32], cols: usize) -> Self {
        assert!(
            cols > 0 && w.len().is_multiple_of(cols),
            "Bf16Matrix: w is not [rows, cols]"
        );
        let rows = w.len() / cols;
        let chunks = cols.div_ceil(CHUNK);
        let mut packed = vec![0u16; rows.div_ceil(PANEL) * chunks * TILE];
        packed
            .par_chunks_mut(chunks * TILE)
            .enumerate()
            .for_each(|(panel, out)| {
                let height = PANEL.min(rows - panel * PANEL);
                #[cfg(target_arch = "x86_64")]
                if height == PANEL && super::avx512() {
                    // SAFETY: AVX-512F is available; the panel's 16 rows are inside `w`.
                    unsafe { pack::panel(&w[panel * PANEL * cols..][..PANEL * cols], out) };
                    return;
                }
                for r in 0..height {
                    let row = &w[(panel * PANEL + r) * cols..][..cols];
                    for (c, &v) in row.iter().enumerate() {
                        let (chunk, within) = (c / CHUNK, c % CHUNK);
                        out[chunk * TILE + (within / 2) * 2 * PANEL + r * 2 + within % 2] =
                            to_bf16(v);
                    }
                }
            });
        Self { packed, rows, cols }
    }

    /// The packing of [`Bf16Matrix::quantize`] written value by value from the layout's
    /// definition: the reference the vectorised packs are tested against.
    #[cfg(test)]
    pub(crate) fn quantize_reference(w: &[f32], cols: usize) -> Self {
        let rows = w.len() / cols;
        let chunks = cols.div_ceil(CHUNK);
        let mut packed = vec![0u16; rows.div_ceil(PANEL) * chunks * TILE];
        for (j, row) in w.chunks_exact(cols).enumerate() {
            let (panel, r) = (j / PANEL, j % PANEL);
            for (c, &v) in row.iter().enumerate() {
                let (chunk, within) = (c / CHUNK, c % CHUNK);
                packed[(panel * chunks + chunk) * TILE
                    + (within / 2) * 2 * PANEL
                    + r * 2
                    + within % 2] = to_bf16(v);
            }
        }
        Self { packed, rows, cols }
    }

    /// Rounds `wᵀ` to bf16 and packs it, for `w: [rows, cols]` row-major: the result stands
    /// for the `[cols, rows]` matrix `wᵀ` (as [`Bf16Matrix::quantize`] of the transpose, without
    /// forming it). Each panel (16 rows of `wᵀ`) reads 16 consecutive values of every row of
    /// `w`.
    pub(crate) fn quantize_transposed(w: &[f32], cols: usize) -> Self {
        assert!(
            cols > 0 && w.len().is_multiple_of(cols),
            "Bf16Matrix: w is not [rows, cols]"
        );
        // The packed matrix's shape.
        let (rows, inner) = (cols, w.len() / cols);
        let chunks = inner.div_ceil(CHUNK);
        let mut packed = vec![0u16; rows.div_ceil(PANEL) * chunks * TILE];
        packed
            .par_chunks_mut(chunks * TILE)
            .enumerate()
            .for_each(|(panel, out)| {
                let (r0, width) = (panel * PANEL, PANEL.min(rows - panel * PANEL));
                #[cfg(target_arch = "x86_64")]
                if width == PANEL && super::avx512() {
                    // SAFETY: AVX-512F is available; the panel has PANEL columns of `w` from r0.
                    unsafe { pack::transposed_panel(w, cols, r0, out) };
                    return;
                }
                for (c, w_row) in w.chunks_exact(cols).enumerate() {
                    let (chunk, within) = (c / CHUNK, c % CHUNK);
                    let base = chunk * TILE + (within / 2) * 2 * PANEL + within % 2;
                    for (r, &v) in w_row[r0..r0 + width].iter().enumerate() {
                        out[base + r * 2] = to_bf16(v);
                    }
                }
            });
        Self {
            packed,
            rows,
            cols: inner,
        }
    }

    /// Rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        2 * self.packed.len()
    }

    /// Rows `panel · 16 ..` (up to 16) as f32, into `out` (`[16, cols]`, rows past the matrix
    /// zero).
    fn panel_into(&self, panel: usize, out: &mut [f32]) {
        let chunks = self.cols.div_ceil(CHUNK);
        let tiles = &self.packed[panel * chunks * TILE..][..chunks * TILE];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate().take(PANEL) {
            for (c, o) in row.iter_mut().enumerate() {
                let (chunk, within) = (c / CHUNK, c % CHUNK);
                *o = from_bf16(tiles[chunk * TILE + (within / 2) * 2 * PANEL + r * 2 + within % 2]);
            }
        }
    }

    /// Row `j` as f32 into `out` (`cols` values).
    pub(crate) fn row_into(&self, j: usize, out: &mut [f32]) {
        let chunks = self.cols.div_ceil(CHUNK);
        let (panel, r) = (j / PANEL, j % PANEL);
        let tiles = &self.packed[panel * chunks * TILE..][..chunks * TILE];
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            let (chunk, within) = (c / CHUNK, c % CHUNK);
            *o = from_bf16(tiles[chunk * TILE + (within / 2) * 2 * PANEL + r * 2 + within % 2]);
        }
    }

    /// The matrix this one stands for (`[rows, cols]`, f32).
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows.div_ceil(PANEL) * PANEL * self.cols];
        for (panel, o) in out.chunks_exact_mut(PANEL * self.cols).enumerate() {
            self.panel_into(panel, o);
        }
        out.truncate(self.rows * self.cols);
        out
    }
}

/// `out = bf16(x) · Wᵀ` (f32 sums) for `x: [m, k]`, `W: [n, k]` in bf16, `out: [m, n]`;
/// `out += …` when `accumulate`.
///
/// # Panics
/// If the slice lengths do not match `m`, `k` and `W`.
pub(crate) fn matmul_bf16(
    x: &[f32],
    m: usize,
    k: usize,
    w: &Bf16Matrix,
    out: &mut [f32],
    accumulate: bool,
) {
    matmul_bf16_on(x, m, k, w, out, accumulate, Bf16Path::best());
}

/// Which instructions compute the bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bf16Path {
    /// AMX tiles (`TDPBF16PS`): Intel Xeon since Sapphire Rapids.
    Amx,
    /// AVX512-BF16's `VDPBF16PS`: 32 bf16 multiply-adds per instruction into 16 f32 sums, twice
    /// an f32 FMA's work, from the same packed tiles (AMD Zen 4 and later, Intel Cooper Lake).
    DotBf16,
    /// f32 FMAs on the widened values (every other CPU).
    F32Units,
}

impl Bf16Path {
    /// The fastest path this CPU has.
    pub(super) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                return Self::Amx;
            }
            if dpbf16::available() {
                return Self::DotBf16;
            }
        }
        Self::F32Units
    }

    /// Every path this CPU can run, the portable one first (for tests).
    #[cfg(test)]
    pub(super) fn all_available() -> Vec<Self> {
        let mut paths = vec![Self::F32Units];
        #[cfg(target_arch = "x86_64")]
        {
            if dpbf16::available() {
                paths.push(Self::DotBf16);
            }
            if amx::available() {
                paths.push(Self::Amx);
            }
        }
        paths
    }
}

/// [`matmul_bf16`] on the given path (which this CPU must have).
pub(super) fn matmul_bf16_on(
    x: &[f32],
    m: usize,
    k: usize,
    w: &Bf16Matrix,
    out: &mut [f32],
    accumulate: bool,
    path: Bf16Path,
) {
    let n = w.rows;
    assert!(
        w.cols == k && x.len() == m * k && out.len() == m * n,
        "matmul_bf16: shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (panels, tasks) = panel_tasks(m, n, k);
    #[cfg(target_arch = "x86_64")]
    match path {
        Bf16Path::Amx | Bf16Path::DotBf16 => {
            let x16 = amx::Inputs::new(x, m, k);
            let on_amx = path == Bf16Path::Amx;
            return packed_inputs_product(&x16, w, out, (panels, tasks), accumulate, on_amx);
        }
        Bf16Path::F32Units => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(path, Bf16Path::F32Units, "matmul_bf16_on: not on this CPU");
    let rounded: Vec<f32> = x.iter().map(|&v| from_bf16(to_bf16(v))).collect();
    for_panel_ranges(out, n, panels, tasks, |first, count, outs| {
        fallback::panels(&rounded, k, w, first, count, outs, accumulate)
    });
}

/// `out (+)= bf16(aᵀ) · Wᵀ` for `a: [rows, p]` (so the inputs `aᵀ` are `[p, rows]`), `W:
/// [n, rows]` in bf16 and `out: [p, n]`: a weight gradient `dYᵀ·X` with `Xᵀ` packed as `W`.
/// On AMX the inputs are rounded straight from `a`'s columns; elsewhere `aᵀ` is formed.
///
/// # Panics
/// If the slice lengths do not match.
pub(crate) fn matmul_bf16_tn(
    a: &[f32],
    rows: usize,
    p: usize,
    w: &Bf16Matrix,
    out: &mut [f32],
    accumulate: bool,
) {
    let n = w.rows;
    assert!(
        w.cols == rows && a.len() == rows * p && out.len() == p * n,
        "matmul_bf16_tn: shapes"
    );
    if p == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match Bf16Path::best() {
        path @ (Bf16Path::Amx | Bf16Path::DotBf16) => {
            let x16 = amx::Inputs::transposed(a, rows, p);
            let split = panel_tasks(p, n, rows);
            let on_amx = path == Bf16Path::Amx;
            return packed_inputs_product(&x16, w, out, split, accumulate, on_amx);
        }
        Bf16Path::F32Units => {}
    }
    let mut a_t = vec![0.0f32; a.len()];
    for (r, row) in a.chunks_exact(p).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            a_t[i * rows + r] = v;
        }
    }
    matmul_bf16_on(&a_t, p, rows, w, out, accumulate, Bf16Path::F32Units);
}

/// `out (+)= x16 · Wᵀ` with the inputs already rounded to bf16, on AMX tiles (`on_amx`) or
/// with `VDPBF16PS` (which this CPU must have), the panels split as `(panels, tasks)`.
#[cfg(target_arch = "x86_64")]
fn packed_inputs_product(
    x16: &amx::Inputs,
    w: &Bf16Matrix,
    out: &mut [f32],
    (panels, tasks): (usize, usize),
    accumulate: bool,
    on_amx: bool,
) {
    if on_amx {
        assert!(amx::available(), "bf16 products: AMX is not available");
    } else {
        assert!(
            dpbf16::available(),
            "bf16 products: AVX512-BF16 is not available"
        );
    }
    for_panel_ranges(out, w.rows, panels, tasks, |first, count, outs| {
        if on_amx {
            // SAFETY: AMX is available (asserted above); the ranges are inside `w`.
            unsafe { amx::panels(x16, w, first, count, outs, accumulate) }
        } else {
            // SAFETY: AVX512-BF16 is available (asserted above); the ranges are inside `w`.
            unsafe { dpbf16::panels(x16, w, first, count, outs, accumulate) }
        }
    });
}

/// The panels of an `[m, k] · [n, k]ᵀ` product and the parallel tasks they are split into
/// (one below [`PARALLEL_MIN_MACS`] or on one thread).
fn panel_tasks(m: usize, n: usize, k: usize) -> (usize, usize) {
    let panels = n.div_ceil(PANEL);
    let threads = rayon::current_num_threads();
    let tasks = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        (threads * 4).min(panels)
    } else {
        1
    };
    (panels, tasks)
}

/// `out ← sums`, or `out += sums` when `accumulate`.
#[inline(always)]
fn write(out: &mut [f32], sums: &[f32], accumulate: bool) {
    if accumulate {
        for (o, &s) in out.iter_mut().zip(sums) {
            *o += s;
        }
    } else {
        out.copy_from_slice(sums);
    }
}

/// Splits the panels into `tasks` runs and calls `f(first_panel, panels, outs)` for each (in
/// parallel when more than one), `outs` holding each input row's columns of those panels.
fn for_panel_ranges(
    out: &mut [f32],
    n: usize,
    panels: usize,
    tasks: usize,
    f: impl Fn(usize, usize, &mut [&mut [f32]]) + Sync,
) {
    let per = panels.div_ceil(tasks);
    let runs: Vec<_> = super::column_runs(out, n, per * PANEL)
        .into_iter()
        .map(|(start, len, outs)| (start / PANEL, len.div_ceil(PANEL), outs))
        .collect();
    if runs.len() > 1 {
        runs.into_par_iter()
            .for_each(|(first, count, mut outs)| f(first, count, &mut outs));
    } else {
        for (first, count, mut outs) in runs {
            f(first, count, &mut outs);
        }
    }
}

/// AVX-512 forms of the transposing packs: the same bits as [`to_bf16`] (round to nearest
/// even in integer arithmetic, NaN to `0x7fc0`), 16 values per instruction instead of one.
#[cfg(target_arch = "x86_64")]
mod pack {
    use std::arch::x86_64::{
        __m256i, __m512, _CMP_UNORD_Q, _mm256_permute2x128_si256, _mm256_storeu_si256,
        _mm256_unpackhi_epi16, _mm256_unpacklo_epi16, _mm512_add_epi32, _mm512_and_si512,
        _mm512_castps_si512, _mm512_castsi256_si512, _mm512_cmp_ps_mask, _mm512_cvtepi32_epi16,
        _mm512_i32gather_epi32, _mm512_i32gather_ps, _mm512_inserti64x4, _mm512_loadu_ps,
        _mm512_mask_blend_epi32, _mm512_mullo_epi32, _mm512_set1_epi32, _mm512_setr_epi32,
        _mm512_setzero_ps, _mm512_srli_epi32, _mm512_storeu_si512,
    };

    use super::{CHUNK, PANEL, TILE};

    /// 16 f32 rounded to bf16 (the bits of [`super::to_bf16`] lane by lane).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round16(v: __m512) -> __m256i {
        let bits = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            bits,
            _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd),
        ));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(
            nan,
            rounded,
            _mm512_set1_epi32(0x7fc0),
        ))
    }

    /// `out[i] = to_bf16(row[i])` for every value of `row` (`out` at least as long).
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn round_row(row: &[f32], out: &mut [u16]) {
        let (blocks, rest) = row.as_chunks::<PANEL>();
        for (values, dst) in blocks.iter().zip(out.chunks_exact_mut(PANEL)) {
            // SAFETY: 16 f32 read, 16 u16 written, both in bounds.
            unsafe {
                let rounded = round16(_mm512_loadu_ps(values.as_ptr()));
                _mm256_storeu_si256(dst.as_mut_ptr().cast(), rounded);
            }
        }
        let done = blocks.len() * PANEL;
        for (o, &v) in out[done..].iter_mut().zip(rest) {
            *o = super::to_bf16(v);
        }
    }

    /// One whole panel of [`super::Bf16Matrix::quantize`]: 16 rows of `cols` values
    /// (`rows`, `[16, cols]`) into `out` (the panel, `chunks · TILE`). Each row's 32 values of
    /// a chunk are rounded into 16 pairs (one 32-bit word each) in a 1 KiB scratch tile, and
    /// tile row `t` (pair `t` of all 16 rows) is gathered from it with one instruction.
    ///
    /// # Safety
    /// AVX-512F must be available; `rows.len()` is a multiple of 16 and `out` holds the panel.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel(rows: &[f32], out: &mut [u16]) {
        let cols = rows.len() / PANEL;
        let whole = cols / CHUNK;
        assert!(out.len() >= cols.div_ceil(CHUNK) * TILE);
        // Pair `t` of row `r` at word `r · 16 + t`.
        let mut scratch = [0u32; PANEL * PANEL];
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(PANEL as i32),
        );
        for chunk in 0..whole {
            for (r, words) in scratch.chunks_exact_mut(PANEL).enumerate() {
                let values: &[f32; CHUNK] = rows[r * cols + chunk * CHUNK..][..CHUNK]
                    .try_into()
                    .unwrap();
                // SAFETY: 32 f32 read (the array reference), 16 u32 written into `words`.
                unsafe {
                    let low = round16(_mm512_loadu_ps(values.as_ptr()));
                    let high = round16(_mm512_loadu_ps(values.as_ptr().add(PANEL)));
                    let pairs = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
                    _mm512_storeu_si512(words.as_mut_ptr().cast(), pairs);
                }
            }
            let tiles = &mut out[chunk * TILE..][..TILE];
            for t in 0..PANEL {
                // SAFETY: words t, 16 + t, …, 240 + t of `scratch`; 32 u16 written to `tiles`.
                unsafe {
                    let pair = _mm512_i32gather_epi32::<4>(offsets, scratch.as_ptr().add(t).cast());
                    _mm512_storeu_si512(tiles.as_mut_ptr().add(t * 2 * PANEL).cast(), pair);
                }
            }
        }
        // The last, partial chunk (zero-padded), value by value.
        for (r, row) in rows.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate().skip(whole * CHUNK) {
                let within = c % CHUNK;
                out[whole * TILE + (within / 2) * 2 * PANEL + r * 2 + within % 2] =
                    super::to_bf16(v);
            }
        }
    }

    /// One whole panel of [`super::Bf16Matrix::quantize_transposed`]: columns `r0 .. r0 + 16`
    /// of `w` (`[inner, cols]`) as the panel's 16 rows. Rows `c` and `c + 1` of `w` (one pair
    /// of the packed columns) become 32 consecutive values: their 16 roundings interleaved.
    ///
    /// # Safety
    /// AVX-512F must be available; `r0 + 16 <= cols`; `out` is the panel (`chunks · TILE`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transposed_panel(w: &[f32], cols: usize, r0: usize, out: &mut [u16]) {
        let inner = w.len() / cols;
        let row = |c: usize| -> __m512 {
            if c < inner {
                let values: &[f32; PANEL] = w[c * cols + r0..][..PANEL].try_into().unwrap();
                // SAFETY: 16 f32 in bounds (the array reference above).
                unsafe { _mm512_loadu_ps(values.as_ptr()) }
            } else {
                _mm512_setzero_ps()
            }
        };
        for c in (0..inner).step_by(2) {
            let (even, odd) = (round16(row(c)), round16(row(c + 1)));
            // unpack works in 128-bit halves: lo = pairs 0-3 | 8-11, hi = 4-7 | 12-15.
            let lo = _mm256_unpacklo_epi16(even, odd);
            let hi = _mm256_unpackhi_epi16(even, odd);
            let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
            let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
            let (chunk, within) = (c / CHUNK, c % CHUNK);
            let dst = &mut out[chunk * TILE + within * PANEL..][..2 * PANEL];
            // SAFETY: `dst` holds 32 u16: two 256-bit stores.
            unsafe {
                _mm256_storeu_si256(dst.as_mut_ptr().cast(), first);
                _mm256_storeu_si256(dst.as_mut_ptr().add(PANEL).cast(), second);
            }
        }
    }

    /// One whole block of [`super::amx::Inputs::transposed`]: columns `i0 .. i0 + 16` of `a`
    /// (`[rows, p]`) as 16 input rows of `stride` values in `out`, 16 of `a`'s rows gathered
    /// per instruction.
    ///
    /// # Safety
    /// AVX-512F must be available; `i0 + 16 <= p`; `out` holds 16 rows of `stride >= rows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transposed_inputs(
        a: &[f32],
        rows: usize,
        p: usize,
        i0: usize,
        stride: usize,
        out: &mut [u16],
    ) {
        assert!(i0 + PANEL <= p && a.len() == rows * p && out.len() >= PANEL * stride);
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(p as i32),
        );
        let whole = rows / PANEL * PANEL;
        for r in (0..whole).step_by(PANEL) {
            let base = a[r * p + i0..].as_ptr();
            for j in 0..PANEL {
                // SAFETY: rows r .. r + 16 at column i0 + j are inside `a`.
                let v = unsafe { _mm512_i32gather_ps::<4>(offsets, base.add(j)) };
                let dst = &mut out[j * stride + r..][..PANEL];
                // SAFETY: `dst` holds 16 u16.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), round16(v)) };
            }
        }
        for r in whole..rows {
            for (j, &v) in a[r * p + i0..][..PANEL].iter().enumerate() {
                out[j * stride + r] = super::to_bf16(v);
            }
        }
    }
}

/// The products on the f32 units (CPUs without AMX), straight from the packed tiles: each tile
/// row (one pair of columns of 16 weight rows, interleaved) is widened to f32 once and
/// multiplied into up to `MR` input rows, 16 results per row kept in registers.
mod fallback {
    #[cfg(target_arch = "x86_64")]
    use super::super::Fused;
    use super::super::{Isa, Plain};
    use super::{Bf16Matrix, CHUNK, PANEL, TILE};

    /// Input rows per pass.
    const MR: usize = 4;

    /// As `amx::panels`, with `x` already rounded to bf16 values (`[m, k]` f32).
    pub(super) fn panels(
        x: &[f32],
        k: usize,
        w: &Bf16Matrix,
        first: usize,
        count: usize,
        outs: &mut [&mut [f32]],
        accumulate: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::super::avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { panels_avx2(x, k, w, first, count, outs, accumulate) };
            return;
        }
        panels_body::<Plain>(x, k, w, first, count, outs, accumulate);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn panels_avx2(
        x: &[f32],
        k: usize,
        w: &Bf16Matrix,
        first: usize,
        count: usize,
        outs: &mut [&mut [f32]],
        accumulate: bool,
    ) {
        panels_body::<Fused>(x, k, w, first, count, outs, accumulate);
    }

    #[inline(always)]
    fn panels_body<A: Isa>(
        x: &[f32],
        k: usize,
        w: &Bf16Matrix,
        first: usize,
        count: usize,
        outs: &mut [&mut [f32]],
        accumulate: bool,
    ) {
        let m = x.len() / k;
        let chunks = k.div_ceil(CHUNK);
        for panel in first..first + count {
            let tiles = &w.packed[panel * chunks * TILE..][..chunks * TILE];
            let col0 = (panel - first) * PANEL;
            let cols = PANEL.min(outs[0].len() - col0);
            let mut i = 0;
            while i < m {
                let r = MR.min(m - i);
                let rows = &x[i * k..(i + r) * k];
                let sums = match r {
                    4 => rows_block::<A, 4>(rows, k, tiles),
                    3 => rows_block::<A, 3>(rows, k, tiles),
                    2 => rows_block::<A, 2>(rows, k, tiles),
                    _ => rows_block::<A, 1>(rows, k, tiles),
                };
                for (a, s) in sums.iter().enumerate().take(r) {
                    super::write(&mut outs[i + a][col0..col0 + cols], &s[..cols], accumulate);
                }
                i += r;
            }
        }
    }

    /// The 16 sums of each of `R` rows (`rows`: `[R, k]`) with one panel's tiles.
    #[inline(always)]
    fn rows_block<A: Isa, const R: usize>(
        rows: &[f32],
        k: usize,
        tiles: &[u16],
    ) -> [[f32; PANEL]; MR] {
        let mut acc = [[0.0f32; PANEL]; MR];
        for pair in 0..k.div_ceil(2) {
            let p = 2 * pair;
            let (chunk, t) = (p / CHUNK, (p % CHUNK) / 2);
            let tile_row = &tiles[chunk * TILE + t * 2 * PANEL..][..2 * PANEL];
            let mut even = [0.0f32; PANEL];
            let mut odd = [0.0f32; PANEL];
            for n in 0..PANEL {
                even[n] = f32::from_bits(u32::from(tile_row[2 * n]) << 16);
                odd[n] = f32::from_bits(u32::from(tile_row[2 * n + 1]) << 16);
            }
            for (a, sums) in acc.iter_mut().enumerate().take(R) {
                let row = &rows[a * k..(a + 1) * k];
                let x0 = row[p];
                // A padded last column (odd k) multiplies a zero weight.
                let x1 = if p + 1 < k { row[p + 1] } else { 0.0 };
                for n in 0..PANEL {
                    sums[n] = A::mul_add(x1, odd[n], A::mul_add(x0, even[n], sums[n]));
                }
            }
        }
        acc
    }
}

/// The AMX kernel (`TDPBF16PS` through inline assembly: the AMX intrinsics are not stable
/// Rust).
#[cfg(target_arch = "x86_64")]
pub(super) mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::{Bf16Matrix, CHUNK, PANEL, TILE, to_bf16};

    /// Whether the CPU has AMX-TILE and AMX-BF16 and the OS lets this process use the tile
    /// registers (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, asked once).
    /// `KAIZEN_NO_AMX=1` turns it off.
    pub(crate) fn available() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            if std::env::var_os("KAIZEN_NO_AMX").is_some_and(|v| !v.is_empty() && v != "0") {
                return false;
            }
            // Leaf 7 only where the CPU reports it (the highest leaf is checked first).
            if std::arch::x86_64::__cpuid(0).eax < 7 {
                return false;
            }
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (tile, bf16) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 22) != 0);
            tile && bf16 && request_tile_permission()
        })
    }

    #[cfg(target_os = "linux")]
    fn request_tile_permission() -> bool {
        const SYS_ARCH_PRCTL: usize = 158;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        let ret: isize;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes this process's permitted
        // XSAVE features; the syscall clobbers rcx and r11.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_permission() -> bool {
        false
    }

    /// The inputs in bf16, `[m_pad, k_pad]` row-major (zero-padded to whole tiles).
    pub(crate) struct Inputs {
        pub(super) values: Vec<u16>,
        /// Input rows.
        pub(super) m: usize,
        /// Rows per tile: `m` when under 16, else 16 (`m` padded to a multiple).
        tile_rows: usize,
        /// Values per row (`k` rounded up to [`CHUNK`]).
        pub(super) stride: usize,
    }

    impl Inputs {
        /// `x: [m, k]` rounded to bf16 (rows in parallel).
        pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
            let mut inputs = Self::zeros(m, k);
            inputs
                .values
                .par_chunks_mut(inputs.stride * PANEL)
                .zip(x.par_chunks(k * PANEL))
                .for_each(|(out, x)| {
                    for (row, out) in x
                        .chunks_exact(k)
                        .zip(out.chunks_exact_mut(k.div_ceil(CHUNK) * CHUNK))
                    {
                        if super::super::avx512() {
                            // SAFETY: AVX-512F is available.
                            unsafe { super::pack::round_row(row, out) };
                            continue;
                        }
                        for (o, &v) in out.iter_mut().zip(row) {
                            *o = to_bf16(v);
                        }
                    }
                });
            inputs
        }

        /// `aᵀ` rounded to bf16, for `a: [rows, p]` (the inputs are then `[p, rows]`), without
        /// forming the f32 transpose; 16 input rows (16 columns of `a`) per parallel task.
        pub(crate) fn transposed(a: &[f32], rows: usize, p: usize) -> Self {
            let mut inputs = Self::zeros(p, rows);
            let stride = inputs.stride;
            inputs
                .values
                .par_chunks_mut(stride * PANEL)
                .enumerate()
                .for_each(|(block, out)| {
                    let i0 = block * PANEL;
                    let width = PANEL.min(p.saturating_sub(i0));
                    if width == PANEL && super::super::avx512() {
                        // SAFETY: AVX-512F is available; columns i0..i0 + 16 are inside `a`.
                        unsafe { super::pack::transposed_inputs(a, rows, p, i0, stride, out) };
                        return;
                    }
                    for (r, a_row) in a.chunks_exact(p).enumerate() {
                        for (j, &v) in a_row[i0..i0 + width].iter().enumerate() {
                            out[j * stride + r] = to_bf16(v);
                        }
                    }
                });
            inputs
        }

        /// The packed values (for tests).
        #[cfg(test)]
        pub(crate) fn values(&self) -> &[u16] {
            &self.values
        }

        fn zeros(m: usize, k: usize) -> Self {
            let tile_rows = m.min(PANEL);
            let stride = k.div_ceil(CHUNK) * CHUNK;
            Self {
                values: vec![0u16; m.div_ceil(tile_rows) * tile_rows * stride],
                m,
                tile_rows,
                stride,
            }
        }
    }

    /// The 64-byte tile configuration: palette 1; tiles 0–3 the f32 results (`rows × 16`), 4–5
    /// the inputs (`rows × 32` bf16), 6–7 two weight panels (16 × 32 bf16 pairs).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new(rows: usize) -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                // colsb[t] (u16 at 16 + 2t): 64 bytes per row for every tile.
                c[16 + 2 * t] = 64;
                // rows[t] (u8 at 48 + t).
                c[48 + t] = if t >= 6 { PANEL as u8 } else { rows as u8 };
            }
            Self(c)
        }
    }

    /// Columns `first · 16 ..` of `count` panels of `bf16(x) · Wᵀ` into `outs` (each input
    /// row's slice of those columns, starting at panel `first`); added to what `outs` hold
    /// when `accumulate`.
    ///
    /// Two weight panels at a time against two blocks of 16 input rows: four result tiles, so
    /// each tile load feeds two `TDPBF16PS` (a single row block, as decoding has, feeds each
    /// weight tile to one).
    ///
    /// # Safety
    /// [`available`] must have returned true; the panels must be inside `w`.
    pub(crate) unsafe fn panels(
        x: &Inputs,
        w: &Bf16Matrix,
        first: usize,
        count: usize,
        outs: &mut [&mut [f32]],
        accumulate: bool,
    ) {
        let chunks = w.cols.div_ceil(CHUNK);
        let config = Config::new(x.tile_rows);
        let mut results = [[0.0f32; PANEL * PANEL]; 4];
        let x_stride = 2 * x.stride;
        let (tile_stride, out_stride) = (64usize, 64usize);
        let blocks = x.m.div_ceil(x.tile_rows);
        // SAFETY: the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
        let mut p = 0;
        while p < count {
            let pair = (count - p).min(2);
            let panel = first + p;
            let w0 = w.packed[panel * chunks * TILE..].as_ptr();
            // A lone last panel multiplies the first again (its result is dropped).
            let w1 = if pair == 2 {
                w.packed[(panel + 1) * chunks * TILE..].as_ptr()
            } else {
                w0
            };
            let mut block = 0;
            while block < blocks {
                let two = blocks - block >= 2;
                let rows0 = block * x.tile_rows;
                let a0 = x.values[rows0 * x.stride..].as_ptr();
                // SAFETY: each tile load reads `rows × 64` bytes: input rows `rows0..` of chunk
                // c (inside the padded inputs: `two` only when a second block exists), weight
                // tile c of each panel (inside the packed matrix); the stores write 16 × 16 f32
                // buffers.
                unsafe {
                    if two {
                        let a1 = x.values[(rows0 + x.tile_rows) * x.stride..].as_ptr();
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            options(nostack)
                        );
                        for c in 0..chunks {
                            asm!(
                                "tileloadd tmm4, [{a0} + {sa}]",
                                "tileloadd tmm6, [{b0} + {sb}]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tileloadd tmm7, [{b1} + {sb}]",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tileloadd tmm5, [{a1} + {sa}]",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a0 = in(reg) a0.add(c * CHUNK),
                                a1 = in(reg) a1.add(c * CHUNK),
                                sa = in(reg) x_stride,
                                b0 = in(reg) w0.add(c * TILE),
                                b1 = in(reg) w1.add(c * TILE),
                                sb = in(reg) tile_stride,
                                options(nostack),
                            );
                        }
                        asm!(
                            "tilestored [{c0} + {sc}], tmm0",
                            "tilestored [{c1} + {sc}], tmm1",
                            "tilestored [{c2} + {sc}], tmm2",
                            "tilestored [{c3} + {sc}], tmm3",
                            c0 = in(reg) results[0].as_mut_ptr(),
                            c1 = in(reg) results[1].as_mut_ptr(),
                            c2 = in(reg) results[2].as_mut_ptr(),
                            c3 = in(reg) results[3].as_mut_ptr(),
                            sc = in(reg) out_stride,
                            options(nostack),
                        );
                    } else {
                        asm!("tilezero tmm0", "tilezero tmm1", options(nostack));
                        for c in 0..chunks {
                            asm!(
                                "tileloadd tmm4, [{a} + {sa}]",
                                "tileloadd tmm6, [{b0} + {sb}]",
                                "tileloadd tmm7, [{b1} + {sb}]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                a = in(reg) a0.add(c * CHUNK),
                                sa = in(reg) x_stride,
                                b0 = in(reg) w0.add(c * TILE),
                                b1 = in(reg) w1.add(c * TILE),
                                sb = in(reg) tile_stride,
                                options(nostack),
                            );
                        }
                        asm!(
                            "tilestored [{c0} + {sc}], tmm0",
                            "tilestored [{c1} + {sc}], tmm1",
                            c0 = in(reg) results[0].as_mut_ptr(),
                            c1 = in(reg) results[1].as_mut_ptr(),
                            sc = in(reg) out_stride,
                            options(nostack),
                        );
                    }
                }
                let done = if two { 2 } else { 1 };
                for b in 0..done {
                    let first_row = rows0 + b * x.tile_rows;
                    let rows = x.tile_rows.min(x.m.saturating_sub(first_row));
                    for (q, result) in results[2 * b..].iter().enumerate().take(pair) {
                        let col0 = (p + q) * PANEL;
                        for r in 0..rows {
                            let out = &mut outs[first_row + r];
                            let cols = PANEL.min(out.len() - col0);
                            super::write(
                                &mut out[col0..col0 + cols],
                                &result[r * PANEL..][..cols],
                                accumulate,
                            );
                        }
                    }
                }
                block += done;
            }
            p += pair;
        }
        // SAFETY: releases the tile state this function configured.
        unsafe { asm!("tilerelease", options(nostack)) };
    }
}

/// The products with AVX512-BF16's `VDPBF16PS` (`_mm512_dpbf16_ps`): for each of 16 f32 sums,
/// `sum[n] += a[2n]·b[2n] + a[2n+1]·b[2n+1]` over bf16 pairs. A packed tile row (the weights of
/// a panel's 16 rows at one pair of columns, interleaved) is exactly one such `b`, and the
/// input pair `(x[2q], x[2q+1])` broadcast to all 16 lanes is `a`: one instruction does 32
/// multiply-adds, an f32 FMA 16, and the weights are read at 2 bytes each.
///
/// Blocks of up to [`dpbf16::ROWS`] input rows × [`dpbf16::PANELS`] panels keep their sums in
/// registers over the whole inner dimension; each weight vector feeds every row of the block
/// and each broadcast input pair every panel.
#[cfg(target_arch = "x86_64")]
pub(super) mod dpbf16 {
    use std::arch::x86_64::{
        __m512, __m512bh, __m512i, _mm512_dpbf16_ps, _mm512_loadu_si512, _mm512_set1_epi32,
        _mm512_setzero_ps, _mm512_storeu_ps,
    };
    use std::sync::OnceLock;

    use super::amx::Inputs;
    use super::{Bf16Matrix, CHUNK, PANEL, TILE};

    /// Input rows per register block.
    pub(crate) const ROWS: usize = 4;
    /// Weight panels per register block (`ROWS × PANELS` sums of 16 lanes in registers).
    pub(crate) const PANELS: usize = 4;

    /// Whether the CPU has AVX-512F and AVX512-BF16 (and `KAIZEN_NO_AVX512` is not set).
    pub(crate) fn available() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            super::super::avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }

    /// Columns `first · 16 ..` of `count` panels of `bf16(x) · Wᵀ` into `outs` (each input
    /// row's slice of those columns, starting at panel `first`); added to what `outs` hold
    /// when `accumulate`.
    ///
    /// # Safety
    /// [`available`] must have returned true; the panels must be inside `w`, and `x` must have
    /// `w`'s inner dimension.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(crate) unsafe fn panels(
        x: &Inputs,
        w: &Bf16Matrix,
        first: usize,
        count: usize,
        outs: &mut [&mut [f32]],
        accumulate: bool,
    ) {
        let chunks = w.cols.div_ceil(CHUNK);
        debug_assert!(x.stride == chunks * CHUNK);
        // Pairs of columns, padding included (padded inputs and weights are zeros).
        let pairs = chunks * CHUNK / 2;
        let mut p = 0;
        while p < count {
            let np = PANELS.min(count - p);
            let mut row = 0;
            while row < x.m {
                let nr = ROWS.min(x.m - row);
                let block = Block {
                    x,
                    w,
                    first_panel: first + p,
                    first_row: row,
                    pairs,
                    chunks,
                };
                // SAFETY: the caller guarantees AVX512-BF16; rows `row..row + nr` are inputs
                // and panels `first + p..first + p + np` are inside `w`.
                let sums = unsafe {
                    match (nr, np) {
                        (4, 4) => block.sums::<4, 4>(),
                        (4, 3) => block.sums::<4, 3>(),
                        (4, 2) => block.sums::<4, 2>(),
                        (4, _) => block.sums::<4, 1>(),
                        (3, 4) => block.sums::<3, 4>(),
                        (3, 3) => block.sums::<3, 3>(),
                        (3, 2) => block.sums::<3, 2>(),
                        (3, _) => block.sums::<3, 1>(),
                        (2, 4) => block.sums::<2, 4>(),
                        (2, 3) => block.sums::<2, 3>(),
                        (2, 2) => block.sums::<2, 2>(),
                        (2, _) => block.sums::<2, 1>(),
                        (_, 4) => block.sums::<1, 4>(),
                        (_, 3) => block.sums::<1, 3>(),
                        (_, 2) => block.sums::<1, 2>(),
                        (_, _) => block.sums::<1, 1>(),
                    }
                };
                for (r, row_sums) in sums.iter().enumerate().take(nr) {
                    let out = &mut outs[row + r];
                    for (q, panel_sums) in row_sums.iter().enumerate().take(np) {
                        let col0 = (p + q) * PANEL;
                        let cols = PANEL.min(out.len() - col0);
                        super::write(&mut out[col0..col0 + cols], &panel_sums[..cols], accumulate);
                    }
                }
                row += nr;
            }
            p += np;
        }
    }

    /// One register block's operands.
    struct Block<'a> {
        x: &'a Inputs,
        w: &'a Bf16Matrix,
        first_panel: usize,
        first_row: usize,
        pairs: usize,
        chunks: usize,
    }

    impl Block<'_> {
        /// The 16 sums of each of `R` input rows with each of `P` panels.
        ///
        /// # Safety
        /// AVX512-BF16 must be available; rows `first_row..first_row + R` must be inputs
        /// and panels `first_panel..first_panel + P` inside the matrix.
        #[inline(never)]
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn sums<const R: usize, const P: usize>(&self) -> [[[f32; PANEL]; PANELS]; ROWS] {
            let panel_len = self.chunks * TILE;
            let inputs: [*const u16; R] = std::array::from_fn(|r| {
                self.x.values[(self.first_row + r) * self.x.stride..].as_ptr()
            });
            let weights: [*const u16; P] = std::array::from_fn(|q| {
                self.w.packed[(self.first_panel + q) * panel_len..].as_ptr()
            });
            let mut acc: [[__m512; P]; R] = [[_mm512_setzero_ps(); P]; R];
            for pair in 0..self.pairs {
                // Pair `pair` of a panel is tile row `pair % 16` of tile `pair / 16`: 32
                // consecutive values at `pair · 32`, as `TILE = 16 · 32`.
                let b: [__m512bh; P] = std::array::from_fn(|q| {
                    // SAFETY: `pair · 32 + 32 ≤ panel_len` inside panel q.
                    let v = unsafe { _mm512_loadu_si512(weights[q].add(pair * 2 * PANEL).cast()) };
                    // SAFETY: a bit-cast between 512-bit vector types.
                    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
                });
                for r in 0..R {
                    // SAFETY: `2 · pair + 1 < stride` inside row r (a u32 read of two u16).
                    let two = unsafe { inputs[r].add(2 * pair).cast::<i32>().read_unaligned() };
                    // SAFETY: a bit-cast between 512-bit vector types.
                    let a =
                        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(two)) };
                    for q in 0..P {
                        acc[r][q] = _mm512_dpbf16_ps(acc[r][q], a, b[q]);
                    }
                }
            }
            let mut out = [[[0.0f32; PANEL]; PANELS]; ROWS];
            for r in 0..R {
                for q in 0..P {
                    // SAFETY: 16 f32 stores into a [f32; 16].
                    unsafe { _mm512_storeu_ps(out[r][q].as_mut_ptr(), acc[r][q]) };
                }
            }
            out
        }
    }
}
