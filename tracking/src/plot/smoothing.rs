//! Smoothing noisy metric curves.

/// TensorBoard's debiased exponential moving average, with `weight` in `[0, 1)`:
///
/// `m_i = weight · m_{i-1} + (1 − weight) · v_i`, `m_{-1} = 0`, `s_i = m_i / (1 − weight^{i+1})`
///
/// The debiasing term makes early points unbiased by the zero start. `weight = 0` returns the
/// values unchanged; weights outside `[0, 1)` are clamped to it. Non-finite values are skipped
/// (they neither move the average nor appear in the output, which stays aligned with the input
/// by repeating the previous smoothed value; before the first finite value, NaN).
/// Source: tensorboard/plugins/scalar/vz_line_chart2/line-chart.ts (`resmoothDataset`).
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let weight = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut count = 0i32;
    let mut current = f64::NAN;
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                count += 1;
                last = last * weight + (1.0 - weight) * v;
                let debias = 1.0 - weight.powi(count);
                current = if debias > 0.0 { last / debias } else { v };
            }
            current
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_series_stays_constant_thanks_to_debiasing() {
        let s = smooth(&[3.0; 5], 0.9);
        for v in s {
            assert!((v - 3.0).abs() < 1e-12, "{v}");
        }
    }

    #[test]
    fn ema_matches_hand_computation_and_skips_nan() {
        // weight 0.5: m0 = 0.5, s0 = 0.5/0.5 = 1; m1 = 0.25 + 1.5 = 1.75, s1 = 1.75/0.75.
        let s = smooth(&[1.0, f64::NAN, 3.0], 0.5);
        assert!((s[0] - 1.0).abs() < 1e-12);
        assert!((s[1] - 1.0).abs() < 1e-12);
        assert!((s[2] - 1.75 / 0.75).abs() < 1e-12);
        assert_eq!(smooth(&[1.0, 5.0], 0.0), vec![1.0, 5.0]);
    }
}
