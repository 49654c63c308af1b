//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts and formulas follow ggml's reference dequantizers (`ggml-quants.c`,
//! `dequantize_row_*`); values are tested against the `gguf` Python package
//! (`gguf.quants.dequantize`, see `tests/fixtures/gguf_quants.json`).

use half::f16;

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

/// A ggml tensor element type (the `type` field of a GGUF tensor info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 × 4-bit, one f16 scale: `x = (q − 8)·d`.
    Q4_0,
    /// 32 × 4-bit, f16 scale and minimum: `x = q·d + m`.
    Q4_1,
    /// 32 × 8-bit, one f16 scale: `x = q·d`.
    Q8_0,
    /// 256-element super-blocks of 8 × 32 4-bit values with 6-bit scales and minimums.
    Q4K,
    /// As Q4_K with a fifth bit per value.
    Q5K,
    /// 256-element super-blocks of 16 × 16 6-bit values with 8-bit scales.
    Q6K,
}

impl GgmlType {
    /// Maps the GGUF type id; `None` for types kaizen does not read.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// ggml's name for a type id (also for ids kaizen does not read), for error messages.
    pub fn name_of(id: u32) -> &'static str {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        NAMES.get(id as usize).copied().unwrap_or("unknown")
    }

    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
        }
    }

    /// Bytes needed for `elements` values, or `None` if `elements` is not a whole number of
    /// blocks (or overflows).
    pub fn byte_size(self, elements: usize) -> Option<usize> {
        let (per_block, bytes) = self.block();
        if !elements.is_multiple_of(per_block) {
            return None;
        }
        (elements / per_block).checked_mul(bytes)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `raw` (exactly `ty.byte_size(out.len())` bytes) into `out`.
///
/// # Panics
/// If `raw` has the wrong length (callers check sizes with [`GgmlType::byte_size`]).
pub fn dequantize(ty: GgmlType, raw: &[u8], out: &mut [f32]) {
    let (per_block, bytes) = ty.block();
    assert_eq!(
        Some(raw.len()),
        ty.byte_size(out.len()),
        "dequantize: size mismatch"
    );
    let blocks = raw.chunks_exact(bytes).zip(out.chunks_exact_mut(per_block));
    match ty {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::Bf16 => {
            for (b, y) in blocks {
                y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
    }
}

/// `d: f16, qs: [u8; 16]`; `y[j] = (lo(qs[j]) − 8)·d`, `y[j+16] = (hi(qs[j]) − 8)·d`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`; `y[j] = lo(qs[j])·d + m`, `y[j+16] = hi(qs[j])·d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `d: f16, qs: [i8; 32]`; `y[j] = qs[j]·d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and minimum of sub-block `j` packed in the 12 `scales` bytes of Q4_K/Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; sub-block `s` of 32 values:
/// `y = d·sc_s·q − dmin·m_s`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, pair) in qs.chunks_exact(32).zip(0..4) {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let base = pair * 64;
        for l in 0..32 {
            y[base + l] = d * sc1 * (chunk[l] & 0x0F) as f32 - dmin * m1;
            y[base + 32 + l] = d * sc2 * (chunk[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with the fifth bit
/// of value `l` of sub-block `s` in bit `s` of `qh[l]`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, pair) in qs.chunks_exact(32).zip(0..4) {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let base = pair * 64;
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[base + l] = d * sc1 * ((chunk[l] & 0x0F) + hi1) as f32 - dmin * m1;
            y[base + 32 + l] = d * sc2 * ((chunk[l] >> 4) + hi2) as f32 - dmin * m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; value `= d·sc·(q6 − 32)` with the
/// 6-bit `q6` split over `ql` (low 4 bits) and `qh` (high 2 bits).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (sc[is + k] as i8) as f32 * d;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_and_q8_0_by_hand() {
        // d = 0.5 (f16 0x3800), nibbles 0..15 in low, 15..0 in high.
        let mut b = vec![0x00, 0x38];
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut y = [0.0; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        let mut b = vec![0x00, 0x3C]; // d = 1
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize(GgmlType::Q8_0, &b, &mut y);
        assert_eq!(y[0], -16.0);
        assert_eq!(y[31], 15.0);
    }

    #[test]
    fn sizes_must_be_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.byte_size(64), Some(40));
        assert_eq!(GgmlType::Q4_1.byte_size(33), None);
        assert_eq!(GgmlType::Q6K.byte_size(512), Some(420));
        assert_eq!(GgmlType::name_of(11), "Q3_K");
        assert_eq!(GgmlType::from_id(11), None);
    }
}
