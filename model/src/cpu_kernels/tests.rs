use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::matmul::{SKINNY_MAX_ROWS, skinny};
use super::*;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn tensor<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Device::default())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// `|a - b| <= tol · max(1, |b|)` element-wise.
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

/// `x · Wᵀ` in f64.
fn reference_matmul_transb(x: &[f32], m: usize, k: usize, w: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for xi in x.chunks(k).take(m) {
        for wj in w.chunks(k) {
            out.push(
                xi.iter()
                    .zip(wj)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>() as f32,
            );
        }
    }
    out
}

/// Products agree with burn's within `1e-5 · ‖x_i‖ ‖w_j‖` (the scale of a dot product's
/// rounding error: a sum with cancellation is not accurate relative to its own value in
/// either implementation).
fn assert_close_scaled(got: &[f32], burn: &[f32], x: &[f32], w: &[f32], k: usize, what: &str) {
    let norms = |v: &[f32]| -> Vec<f32> {
        v.chunks(k)
            .map(|r| r.iter().map(|a| a * a).sum::<f32>().sqrt())
            .collect()
    };
    let (nx, nw) = (norms(x), norms(w));
    for (idx, (a, b)) in got.iter().zip(burn).enumerate() {
        let (i, j) = (idx / nw.len(), idx % nw.len());
        let tol = 1e-5 * (nx[i] * nw[j]).max(1.0);
        assert!((a - b).abs() <= tol, "{what}: ({i}, {j}): {a} vs burn {b}");
    }
}

/// burn's `x · Wᵀ`.
fn burn_matmul_transb(x: &[f32], m: usize, k: usize, w: &[f32]) -> Vec<f32> {
    let n = w.len() / k;
    values(tensor(x, [m, k]).matmul(tensor(w, [n, k]).transpose()))
}

#[test]
fn skinny_and_tall_products_match_burn_matmul() {
    // Rows around the register block (4) and the skinny/GEMM switch; widths with and
    // without a SIMD tail; weight row counts around the 3-row block.
    for (seed, &(m, k)) in [
        (1, 1),
        (2, 7),
        (3, 8),
        (4, 9),
        (5, 64),
        (7, 67),
        (16, 576),
        (SKINNY_MAX_ROWS, 33),
        (SKINNY_MAX_ROWS + 1, 40),
        (matmul::skinny_max_rows() + 1, 40),
        (130, 96),
    ]
    .iter()
    .enumerate()
    {
        for n in [1, 2, 3, 5, 64, 301] {
            let x = random(m * k, seed as u64);
            let w = random(n * k, 100 + seed as u64);
            let mut out = vec![f32::NAN; m * n];
            matmul_transb(
                &x,
                m,
                k,
                &mut [Product {
                    weight: &w,
                    out: &mut out,
                }],
            );
            let what = format!("m={m} k={k} n={n}");
            assert_close(&out, &reference_matmul_transb(&x, m, k, &w), 1e-5, &what);
            assert_close_scaled(&out, &burn_matmul_transb(&x, m, k, &w), &x, &w, k, &what);
        }
    }
}

#[test]
fn fused_products_equal_separate_ones() {
    let (m, k) = (5, 64);
    let x = random(m * k, 1);
    let (wq, wk, wv) = (random(96 * k, 2), random(32 * k, 3), random(32 * k, 4));
    let (mut q, mut kk, mut v) = (vec![0.0; m * 96], vec![0.0; m * 32], vec![0.0; m * 32]);
    matmul_transb(
        &x,
        m,
        k,
        &mut [
            Product {
                weight: &wq,
                out: &mut q,
            },
            Product {
                weight: &wk,
                out: &mut kk,
            },
            Product {
                weight: &wv,
                out: &mut v,
            },
        ],
    );
    assert_close(&q, &reference_matmul_transb(&x, m, k, &wq), 1e-5, "q");
    assert_close(&kk, &reference_matmul_transb(&x, m, k, &wk), 1e-5, "k");
    assert_close(&v, &reference_matmul_transb(&x, m, k, &wv), 1e-5, "v");
}

#[test]
fn simd_and_portable_kernels_agree() {
    let (m, k, n) = (7, 131, 11);
    let x = random(m * k, 5);
    let w = random(n * k, 6);
    let run = |f: &dyn Fn(&mut [&mut [f32]])| {
        let mut out = vec![0.0; m * n];
        let mut rows: Vec<&mut [f32]> = out.chunks_mut(n).collect();
        f(&mut rows);
        out
    };
    let portable = run(&|rows| portable::skinny(&x, m, k, &w, rows));
    let dispatched = run(&|rows| skinny(&x, m, k, &w, rows));
    assert_close(&dispatched, &portable, 1e-5, "skinny");
}

/// Attention by the definition, in f64.
fn reference_attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    starts: &[usize],
    s: AttentionShape,
) -> Vec<f32> {
    let (h, kvh, d, cap) = (s.heads, s.kv_heads, s.head_dim, s.capacity);
    let (past, seq) = (s.past, s.seq);
    let g = h / kvh;
    let mut out = vec![0.0; q.len()];
    for (b, &start) in starts.iter().enumerate() {
        for t in 0..seq {
            let pos = past + t;
            let cols: Vec<usize> = if pos < start {
                vec![pos]
            } else {
                (start..=pos).collect()
            };
            for head in 0..h {
                let kv = head / g;
                let qv = &q[((b * seq + t) * h + head) * d..][..d];
                let at = |c: usize| ((b * kvh + kv) * cap + c) * d;
                let scores: Vec<f64> = cols
                    .iter()
                    .map(|&c| {
                        (0..d)
                            .map(|i| qv[i] as f64 * kc[at(c) + i] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let o: f64 = cols
                        .iter()
                        .zip(&e)
                        .map(|(&c, p)| p / z * vc[at(c) + i] as f64)
                        .sum();
                    out[((b * seq + t) * h + head) * d + i] = o as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_the_definition_with_padding_and_groups() {
    let shape = AttentionShape {
        heads: 6,
        kv_heads: 2,
        head_dim: 12,
        capacity: 24,
        past: 0,
        seq: 0,
    };
    // Prefill (past 0, 9 columns, left padding 0/3/8) and a decode step after 17 columns.
    for (past, seq) in [(0, 9), (17, 1)] {
        let shape = AttentionShape { past, seq, ..shape };
        let starts = [0, 3, 8];
        let rows = starts.len();
        let (h, d) = (shape.heads, shape.head_dim);
        let q = random(rows * seq * h * d, 7);
        let kc = random(rows * shape.kv_heads * shape.capacity * d, 8);
        let vc = random(kc.len(), 9);
        let mut out = vec![f32::NAN; q.len()];
        attention(&q, &kc, &vc, &starts, shape, &mut out);
        let want = reference_attention(&q, &kc, &vc, &starts, shape);
        assert_close(&out, &want, 1e-5, &format!("past={past} seq={seq}"));
    }
}

#[test]
fn exp_is_within_two_ulp_of_std() {
    let mut x = -87.0f32;
    while x < 88.0 {
        let (got, want) = (exp(x), x.exp());
        assert!(
            (got - want).abs() <= 2.5e-7 * want,
            "exp({x}) = {got}, std {want}"
        );
        x += 0.0137;
    }
    assert_eq!(exp(-100.0), 0.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(0.0), 1.0);
}

#[test]
fn exp_weights_sums_match_f64() {
    let x: Vec<f32> = random(50_000, 10).iter().map(|v| v * 8.0).collect();
    let (shift, scale) = (8.0, 1.0 / 0.7);
    let mut w = vec![0.0; x.len()];
    let mut blocks = Vec::new();
    let sums = exp_weights(&x, shift, scale, &mut w, &mut blocks);
    let s: Vec<f64> = x.iter().map(|&v| ((v - shift) * scale) as f64).collect();
    let total: f64 = s.iter().map(|v| v.exp()).sum();
    let weighted: f64 = s.iter().map(|v| v.exp() * v).sum();
    assert!(
        (sums.total - total).abs() < 1e-6 * total,
        "{sums:?} vs {total}"
    );
    assert!((sums.weighted - weighted).abs() < 1e-6 * weighted.abs());
    assert_eq!(blocks.len(), x.len().div_ceil(EXP_BLOCK));
    assert!((blocks.iter().sum::<f64>() - total).abs() < 1e-6 * total);
}

#[test]
fn rms_norm_rope_and_silu_match_burn() {
    let (tokens, heads, d) = (5, 3, 8);
    let width = heads * d;
    let x = random(tokens * width, 11);
    let gamma = random(width, 12);
    let mut y = vec![0.0; x.len()];
    rms_norm(&x, &gamma, 1e-5, &mut y);
    let norm = crate::RmsNorm::new(tensor(&gamma, [width]), 1e-5);
    assert_close(
        &y,
        &values(norm.forward(tensor(&x, [tokens, width]))),
        1e-6,
        "rms",
    );

    let rope_tables = crate::Rope::new(d, 64, 10_000.0);
    let positions = [0, 3, 7, 12, 63];
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for &p in &positions {
        let (c, s) = rope_tables.row(p);
        cos.extend_from_slice(c);
        sin.extend_from_slice(s);
    }
    let mut rotated = x.clone();
    rope(&mut rotated, heads, d, &cos, &sin);
    // burn: [batch 1, heads, seq, d] with tables [1, 1, seq, d].
    let xt = tensor(&x, [1, tokens, heads, d]).swap_dims(1, 2);
    let (ct, st) = rope_tables.tables(&positions, 1, tokens, &Device::default());
    let want = values(crate::Rope::apply(xt, &ct, &st).swap_dims(1, 2));
    assert_close(&rotated, &want, 1e-6, "rope");

    let mut gate: Vec<f32> = x.iter().map(|v| v * 6.0).collect();
    let up = random(gate.len(), 13);
    let want = values(silu(tensor(&gate, [gate.len()])) * tensor(&up, [up.len()]));
    silu_mul(&mut gate, &up);
    assert_close(&gate, &want, 1e-6, "silu");
}

#[test]
fn int8_blocks_round_to_within_half_a_step_and_a_zero_row_stays_zero() {
    // 70 columns: blocks of 32, 32 and 6.
    let k = 70;
    let mut w = random(5 * k, 40);
    w[2 * k..3 * k].fill(0.0);
    let q = Q8Matrix::quantize(&w, k);
    assert_eq!((q.rows(), q.blocks(), q.values.len()), (5, 3, 5 * k));
    assert_eq!(q.scales.len(), 15);
    assert!(q.scales[6..9].iter().all(|&s| s == 0.0), "the zero row");
    let back = q.dequantize();
    for (p, (a, b)) in back.iter().zip(&w).enumerate() {
        let (j, c) = (p / k, p % k);
        let s = q.scales[j * 3 + c / 32];
        assert!((a - b).abs() <= s / 2.0 + 1e-7, "({j}, {c}): {a} vs {b}");
    }
    for (block, &s) in q.values.chunks(k).flat_map(|r| r.chunks(32)).zip(&q.scales) {
        assert!(
            s == 0.0 || block.iter().any(|v| v.abs() == 127),
            "each block uses its range"
        );
    }
    let mut one = vec![0.0; k];
    q.row_into(3, &mut one);
    assert_eq!(one, back[3 * k..4 * k]);
}

#[test]
fn int8_products_equal_products_with_the_dequantised_matrix() {
    // k a multiple of the block (the SIMD kernel) and not (the portable one); n not a multiple
    // of 4; m across the skinny blocks and the GEMM.
    for (k, n) in [(96, 37), (70, 37)] {
        let q = Q8Matrix::quantize(&random(n * k, 41), k);
        let dequantised = q.dequantize();
        for m in [
            1,
            2,
            3,
            4,
            5,
            7,
            SKINNY_MAX_ROWS + 1,
            q8::Q8_SKINNY_MAX_ROWS + 1,
        ] {
            let x = random(m * k, 42 + m as u64);
            let want = reference_matmul_transb(&x, m, k, &dequantised);
            let mut got = vec![0.0; m * n];
            matmul_q8(&x, m, k, &q, &mut got);
            assert_close(&got, &want, 1e-5, &format!("matmul_q8 m={m}"));
            // The portable kernel alone.
            let mut portable_out = vec![0.0; m * n];
            let mut rows: Vec<&mut [f32]> = portable_out.chunks_mut(n).collect();
            q8::portable::skinny_q8(&x, m, k, &q.values, &q.scales, &mut rows);
            assert_close(&portable_out, &want, 1e-5, &format!("portable m={m}"));
        }
    }
}

/// Every ISA's products, run directly where this CPU has it (the dispatch picks only one):
/// f32 with `k` not a multiple of any vector width, int8 with `k` a multiple of the block, and
/// every row count up to two blocks of input rows, against the portable kernels.
#[test]
fn every_simd_product_kernel_matches_the_portable_one() {
    let n = 11; // two blocks of 4 weight rows and 3 single rows
    for m in 1..=13 {
        for k in [131, 64] {
            let x = random(m * k, 60 + m as u64);
            let w = random(n * k, 61);
            let mut want = vec![0.0; m * n];
            portable::skinny(&x, m, k, &w, &mut want.chunks_mut(n).collect::<Vec<_>>());
            #[cfg(target_arch = "x86_64")]
            {
                if avx2_fma() {
                    let mut got = vec![0.0; m * n];
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe {
                        avx2::skinny(&x, m, k, &w, &mut got.chunks_mut(n).collect::<Vec<_>>())
                    };
                    assert_close(&got, &want, 1e-5, &format!("avx2 skinny m={m} k={k}"));
                }
                if avx512() {
                    let mut got = vec![0.0; m * n];
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
                    unsafe {
                        avx512::skinny(&x, m, k, &w, &mut got.chunks_mut(n).collect::<Vec<_>>())
                    };
                    assert_close(&got, &want, 1e-5, &format!("avx512 skinny m={m} k={k}"));
                }
            }
        }
        let k = 96;
        let q = Q8Matrix::quantize(&random(n * k, 62), k);
        let x = random(m * k, 63 + m as u64);
        let mut want = vec![0.0; m * n];
        let mut rows: Vec<&mut [f32]> = want.chunks_mut(n).collect();
        q8::portable::skinny_q8(&x, m, k, &q.values, &q.scales, &mut rows);
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_fma() {
                let mut got = vec![0.0; m * n];
                let mut rows: Vec<&mut [f32]> = got.chunks_mut(n).collect();
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { q8::avx2::skinny_q8(&x, m, k, &q.values, &q.scales, &mut rows) };
                assert_close(&got, &want, 1e-5, &format!("avx2 skinny_q8 m={m}"));
            }
            if avx512() {
                let mut got = vec![0.0; m * n];
                let mut rows: Vec<&mut [f32]> = got.chunks_mut(n).collect();
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA, and k is a multiple of the block.
                unsafe { avx512::skinny_q8(&x, m, k, &q.values, &q.scales, &mut rows) };
                assert_close(&got, &want, 1e-5, &format!("avx512 skinny_q8 m={m}"));
            }
        }
    }
}

#[test]
fn bf16_rounds_to_nearest_even_and_back() {
    use super::bf16::{from_bf16, to_bf16};
    assert_eq!(to_bf16(1.0), 0x3f80);
    assert_eq!(from_bf16(0x3f80), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
    assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert_eq!(to_bf16(-2.5), 0xc020);
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    for v in random(1000, 70) {
        let r = from_bf16(to_bf16(v));
        assert!((r - v).abs() <= v.abs() * 2f32.powi(-8), "{v} -> {r}");
    }
}

/// bf16 products (on every path this CPU has: AMX, AVX512-BF16, the f32 units) equal bf16(x) ·
/// unpacked(W)ᵀ summed in f64, for row counts under, at and past a tile of 16 rows and the
/// tall (prefill) path, `k` a multiple of the 32-column tile, not, and odd, and `n` a multiple
/// of the 16-row panel and not.
#[test]
fn bf16_products_equal_rounded_inputs_times_the_unpacked_matrix() {
    use super::bf16::{Bf16Path, from_bf16, matmul_bf16_on, to_bf16};
    for (k, n) in [(96, 37), (70, 53), (67, 16)] {
        let w = random(n * k, 71);
        let b = Bf16Matrix::quantize(&w, k);
        let unpacked = b.dequantize();
        assert_eq!(unpacked.len(), n * k);
        for (got, want) in unpacked.iter().zip(&w) {
            assert_eq!(*got, from_bf16(to_bf16(*want)));
        }
        let mut row = vec![0.0; k];
        b.row_into(n - 1, &mut row);
        assert_eq!(row, unpacked[(n - 1) * k..]);
        // Packing the transpose of a [k, n] matrix without forming it gives the same pack.
        let mut w_t = vec![0.0; n * k];
        for r in 0..n {
            for c in 0..k {
                w_t[c * n + r] = w[r * k + c];
            }
        }
        assert_eq!(
            Bf16Matrix::quantize_transposed(&w_t, n),
            b,
            "transposed pack k={k} n={n}"
        );
        for m in [1, 3, 15, 16, 17, 33, SKINNY_MAX_ROWS + 1] {
            let x = random(m * k, 72 + m as u64);
            let rounded: Vec<f32> = x.iter().map(|&v| from_bf16(to_bf16(v))).collect();
            let want = reference_matmul_transb(&rounded, m, k, &unpacked);
            for path in Bf16Path::all_available() {
                let mut got = vec![0.0; m * n];
                matmul_bf16_on(&x, m, k, &b, &mut got, false, path);
                assert_close(&got, &want, 1e-5, &format!("bf16 m={m} k={k} {path:?}"));
                // Accumulating adds the same product onto what is there.
                let start = random(m * n, 90 + m as u64);
                let mut acc = start.clone();
                matmul_bf16_on(&x, m, k, &b, &mut acc, true, path);
                let want_acc: Vec<f32> = start.iter().zip(&want).map(|(a, b)| a + b).collect();
                assert_close(
                    &acc,
                    &want_acc,
                    1e-5,
                    &format!("bf16 += m={m} k={k} {path:?}"),
                );
            }
        }
    }
}

/// A weight gradient's product `bf16(aᵀ) · Wᵀ` (inputs read from `a`'s columns) equals the
/// product of the formed transpose, for `p` under, at and past a tile of 16 rows and `rows`
/// not a multiple of the 32-column tile; accumulating adds onto `out`.
#[test]
fn bf16_products_of_a_transpose_equal_those_of_the_formed_transpose() {
    use super::bf16::{from_bf16, matmul_bf16_tn, to_bf16};
    for (rows, p, n) in [(45, 7, 20), (70, 16, 33), (33, 41, 16)] {
        let a = random(rows * p, 80 + p as u64);
        let w = random(n * rows, 81);
        let b = Bf16Matrix::quantize(&w, rows);
        let unpacked = b.dequantize();
        let mut a_t = vec![0.0; rows * p];
        for r in 0..rows {
            for i in 0..p {
                a_t[i * rows + r] = from_bf16(to_bf16(a[r * p + i]));
            }
        }
        let want = reference_matmul_transb(&a_t, p, rows, &unpacked);
        let mut got = vec![0.0; p * n];
        matmul_bf16_tn(&a, rows, p, &b, &mut got, false);
        assert_close(&got, &want, 1e-5, &format!("tn rows={rows} p={p}"));
        let mut acc = vec![1.0; p * n];
        matmul_bf16_tn(&a, rows, p, &b, &mut acc, true);
        let want_acc: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
        assert_close(&acc, &want_acc, 1e-5, &format!("tn += rows={rows} p={p}"));
    }
}

/// The vectorised `e^x` steps (`vexp`) against the portable loops, on this CPU.
#[cfg(target_arch = "x86_64")]
#[test]
fn vectorised_exp_steps_match_the_portable_ones() {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    if !avx2_fma() {
        eprintln!("no AVX2 + FMA on this CPU: only the portable steps run here");
        return;
    }
    // e^x lane by lane, across the range and at its edges.
    let mut xs: Vec<f32> = (0..4000).map(|i| -88.0 + i as f32 * 0.0443).collect();
    xs.extend([
        -100.0,
        -87.31,
        88.71,
        100.0,
        0.0,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
    ]);
    xs.resize(xs.len().next_multiple_of(LANES), 1.0);
    for c in xs.chunks_exact(LANES) {
        let mut got = [0.0f32; LANES];
        // SAFETY: the CPU has AVX2 and FMA (checked above); `c` and `got` hold eight f32.
        unsafe { _mm256_storeu_ps(got.as_mut_ptr(), vexp::exp8(_mm256_loadu_ps(c.as_ptr()))) };
        for (&x, &g) in c.iter().zip(&got) {
            let want = exp(x);
            assert!(
                g == want || (g - want).abs() <= 2.5e-7 * want || (g.is_nan() && want.is_nan()),
                "exp8({x}) = {g}, scalar {want}"
            );
        }
    }

    // Lengths with and without a scalar tail; one masked (-∞) logit.
    for n in [7, 64, 1031] {
        let mut x: Vec<f32> = random(n, 90 + n as u64).iter().map(|v| v * 9.0).collect();
        x[n / 2] = f32::NEG_INFINITY;
        let (shift, scale) = (3.0, 1.0 / 0.8);
        let (mut w_port, mut w_vec) = (vec![0.0; n], vec![0.0; n]);
        let (mut b_port, mut b_vec) = (Vec::new(), Vec::new());
        let port = exp_weights_portable(&x, shift, scale, &mut w_port, &mut b_port);
        // SAFETY: as above.
        let vec = unsafe { vexp::exp_weights(&x, shift, scale, &mut w_vec, &mut b_vec) };
        assert_close(&w_vec, &w_port, 1e-6, &format!("exp weights n={n}"));
        assert_eq!(w_vec[n / 2], 0.0, "a masked logit has weight 0");
        assert!(
            (vec.total - port.total).abs() <= 1e-6 * port.total,
            "{vec:?} {port:?}"
        );
        assert!((vec.weighted - port.weighted).abs() <= 1e-5 * port.weighted.abs());
        assert_eq!(b_vec.len(), b_port.len());
        assert!(vec.weighted.is_finite());

        let up = random(n, 95);
        let (mut g_port, mut g_vec) = (x.clone(), x.clone());
        g_port[n / 2] = -30.0;
        g_vec[n / 2] = -30.0;
        silu_mul_portable(&mut g_port, &up);
        // SAFETY: as above.
        unsafe { vexp::silu_mul(&mut g_vec, &up) };
        assert_close(&g_vec, &g_port, 1e-6, &format!("silu n={n}"));

        let (mut s_port, mut s_vec) = (x.clone(), x.clone());
        let lse_port = softmax_scaled_in_place(&mut s_port, 0.125);
        // SAFETY: as above.
        let lse_vec = unsafe { vexp::softmax_scaled(&mut s_vec, 0.125) };
        assert_close(&s_vec, &s_port, 1e-6, &format!("softmax n={n}"));
        let lse: f64 = x
            .iter()
            .map(|&v| (v as f64 * 0.125).exp())
            .sum::<f64>()
            .ln();
        assert!((lse_vec as f64 - lse).abs() < 1e-5 && (lse_port as f64 - lse).abs() < 1e-5);

        let (mut d_port, mut d_vec) = (s_port.clone(), s_port.clone());
        softmax_backward_portable(&mut d_port, 0.3, 1.7, 0.9, -0.2, 1.25);
        // SAFETY: as above.
        unsafe { vexp::softmax_backward(&mut d_vec, 0.3, 1.7, 0.9, -0.2, 1.25) };
        assert_close(&d_vec, &d_port, 1e-6, &format!("softmax backward n={n}"));

        let (mut sig_port, mut sig_vec) = (vec![0.0; n], vec![0.0; n]);
        sigmoid_portable(&x, &mut sig_port);
        // SAFETY: as above.
        unsafe { vexp::sigmoid(&x, &mut sig_vec) };
        assert_close(&sig_vec, &sig_port, 1e-6, &format!("sigmoid n={n}"));
        assert_eq!(sig_vec[n / 2], 0.0, "σ(-∞) = 0");
        assert!((s_vec.iter().sum::<f32>() - 1.0).abs() < 1e-5);

        let mut with_nan = x.clone();
        with_nan[1] = f32::NAN;
        let want = with_nan.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&with_nan), want, "max n={n}");
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}

/// Values whose rounding has edge cases: NaN, ±∞, ±0, subnormals, ties to even, the largest
/// finite f32 (rounds to ∞), mixed with ordinary ones.
fn special_values(n: usize, seed: u64) -> Vec<f32> {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-41,
        f32::from_bits(0x3f80_8000), // halfway between two bf16: ties to even (down)
        f32::from_bits(0x3f81_8000), // halfway: ties to even (up)
        f32::MAX,
    ];
    random(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 3 == 0 {
                specials[(i / 3) % specials.len()]
            } else {
                v
            }
        })
        .collect()
}

/// The packs (AVX-512 on whole panels where the CPU has it, scalar elsewhere) give the bits of
/// the layout's definition, and the transposing ones those of packing the formed transpose
/// with `to_bf16`, special values included.
#[test]
fn transposing_packs_give_the_bits_of_the_formed_transpose() {
    use super::bf16::to_bf16;
    for (rows, cols) in [(32, 64), (48, 96), (37, 70), (16, 40), (5, 33), (67, 576)] {
        let w = special_values(rows * cols, 3 + rows as u64);
        assert_eq!(
            Bf16Matrix::quantize(&w, cols),
            Bf16Matrix::quantize_reference(&w, cols),
            "quantize rows={rows} cols={cols}"
        );
    }
    for (inner, cols) in [(67, 37), (32, 48), (5, 16), (40, 33)] {
        let w = special_values(inner * cols, 5 + inner as u64);
        let mut w_t = vec![0.0; w.len()];
        for r in 0..inner {
            for c in 0..cols {
                w_t[c * inner + r] = w[r * cols + c];
            }
        }
        assert_eq!(
            Bf16Matrix::quantize_transposed(&w, cols),
            Bf16Matrix::quantize(&w_t, inner),
            "quantize_transposed inner={inner} cols={cols}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    for (rows, p) in [(5, 16), (16, 16), (37, 35), (70, 48)] {
        use super::bf16::amx::Inputs;
        let a = special_values(rows * p, 9 + rows as u64);
        let mut a_t = vec![0.0; a.len()];
        for r in 0..rows {
            for i in 0..p {
                a_t[i * rows + r] = a[r * p + i];
            }
        }
        let got = Inputs::transposed(&a, rows, p);
        let want = Inputs::new(&a_t, p, rows);
        let (got, want) = (got.values(), want.values());
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "Inputs::transposed rows={rows} p={p} at {i}");
        }
        // Both hold every value as `to_bf16` rounds it (row i of the inputs is column i of a).
        let stride = got.len() / p.div_ceil(16) / 16.min(p);
        for i in 0..p {
            for r in 0..rows {
                assert_eq!(want[i * stride + r], to_bf16(a[r * p + i]), "({i}, {r})");
            }
        }
    }
}
