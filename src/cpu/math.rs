//! Scalar math shared by the kernels: a vectorisable `exp`, the sigmoid, and RoPE's angle
//! tables and rotation (one definition for the composite model, the fused attention and the
//! decoder).

/// `exp(x)` to ~2 ulp for `x` in the float range, branch-free so that loops over it vectorise
/// (libm's `expf` is a call per element).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick (no SSE4.1 rounding instruction needed).
    let t = x * LOG2E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold n (two's complement); shifted into the exponent field they
    // give 2^n without a float-to-int conversion (n + 127 is within 1..=254 after the clamp).
    e * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// The logistic function `1 / (1 + e^-x)` on [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Llama 3's RoPE frequency scaling (`rope_scaling` with `rope_type = "llama3"` in a Hugging
/// Face `config.json`): long wavelengths are divided by `factor`, short ones kept, and those in
/// between blended.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// How positions are rotated: the base `theta` and an optional frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
}

impl RopeSpec {
    pub fn plain(theta: f64) -> RopeSpec {
        RopeSpec {
            theta,
            scaling: None,
        }
    }

    /// Frequency of pair `i` of a head of `head_dim`: `theta^(−2i / head_dim)`, then scaled as
    /// transformers' `_compute_llama3_parameters` does.
    pub fn freq(&self, i: usize, head_dim: usize) -> f64 {
        let f = 1.0 / self.theta.powf(2.0 * i as f64 / head_dim as f64);
        let Some(s) = self.scaling else { return f };
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen < high_wavelen {
            f
        } else if wavelen > low_wavelen {
            f / s.factor
        } else {
            let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                / (s.high_freq_factor - s.low_freq_factor);
            (1.0 - smooth) * f / s.factor + smooth * f
        }
    }
}

/// cos and sin of the RoPE angles of positions `start..start + len`, `[len][head_dim / 2]`
/// each: frequency [`RopeSpec::freq`] for pair `i`, in f64, then rounded. Every path (burn's
/// composite ops, the fused attention, the decoder) uses these tables.
pub fn rope_table(
    start: usize,
    len: usize,
    head_dim: usize,
    rope: RopeSpec,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let freqs: Vec<f64> = (0..half).map(|i| rope.freq(i, head_dim)).collect();
    let (mut cos, mut sin) = (
        Vec::with_capacity(len * half),
        Vec::with_capacity(len * half),
    );
    for p in start..start + len {
        for &freq in &freqs {
            let a = p as f64 * freq;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotate pairs `(i, i + half)` of one head's vector by a position's angles (RoPE), or by the
/// opposite angles when `inverse` (the transpose, for gradients).
#[inline(always)]
pub fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let s = if inverse { -1.0 } else { 1.0 };
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] - b * (s * sin[i]);
        x2[i] = a * (s * sin[i]) + b * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm_over_the_float_range() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0).is_finite());
    }
}
