//! The exponential the kernels' softmaxes and SiLU gates take, in a form the compiler vectorises,
//! and [`vectorised`], which runs a loop compiled for the machine's widest vector unit.
//!
//! Why not `f32::exp`: it is a call into libm per element (`__expf_fma`), which no loop around it
//! can vectorise; after attempt 83 it was 12 % of a `tiny` training step on Flex, mostly the
//! loss's 2 M exponentials a step (docs/performance.md, attempt 85). [`exp`] is Cody and Waite's
//! range reduction and Cephes' degree-6 polynomial for `e^r` on `|r| ≤ ln 2 / 2`, in plain
//! multiplications, additions and selects: inside [`vectorised`] a loop over it becomes AVX-512 or
//! AVX2 code, picked at run time (the build targets baseline x86-64, so this is the only way to
//! reach them without `-C target-cpu`). Neither form contracts anything into a fused
//! multiply-add, so every machine computes the same bits.

/// `e^x` within 2 ulp of the correctly rounded value for normal results; 0 below about −103.9,
/// +∞ above about 88.72, NaN for NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact for |n| ≤ 2^15 (LN2_HI has 9 significant bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer (to nearest even), held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // `clamp` keeps NaN, which then flows through every step unchanged.
    let x = x.clamp(-104.0, 89.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    // 2^n as two normal powers of two (n ∈ [−150, 128]): results in the subnormal range and
    // just under the overflow are scaled without an invalid exponent field.
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) << 23) as u32);
    p * pow2(n1) * pow2(n2)
}

/// The logistic function `1 / (1 + e^−x)` through [`exp`].
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `f()` compiled for AVX-512 or AVX2 with FMA where this machine has them (checked once), else
/// for the build's baseline. `f`'s loops (and [`exp`], inlined into them) then vectorise at the
/// machine's width; the results are the same bits either way (no operation differs by width).
#[inline(always)]
pub(super) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                2
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                1
            } else {
                0
            }
        });
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match level {
            // SAFETY: the features these two are compiled for were detected on this CPU.
            2 => unsafe { wide(f) },
            1 => unsafe { narrow(f) },
            _ => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

/// `xs[i] ← e^(xs[i] − shift)`.
pub(super) fn exp_shifted(xs: &mut [f32], shift: f32) {
    vectorised(|| xs.iter_mut().for_each(|x| *x = exp(*x - shift)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64's exponential over the range a softmax or a gate meets, in ulps of the f32
    /// result, and the edges.
    #[test]
    fn is_within_two_ulps_of_the_exponential() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).to_bits();
            let ulp = (f32::from_bits(ulp + 1) - want as f32) as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(88.7).is_finite());
        assert!(exp(f32::NAN).is_nan());
        // A subnormal result, within 1 % (its own rounding is coarse).
        let sub = exp(-95.0) as f64;
        assert!((sub / (-95.0f64).exp() - 1.0).abs() < 1e-2, "{sub}");
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
    }

    /// The vectorised pass computes what the scalar form computes, bit for bit, remainder
    /// elements included (37 is no multiple of any vector width).
    #[test]
    fn the_vectorised_pass_gives_the_scalar_bits() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 2.345).collect();
        let mut v = xs.clone();
        exp_shifted(&mut v, 1.5);
        for (a, b) in xs.iter().zip(&v) {
            assert_eq!(exp(a - 1.5).to_bits(), b.to_bits(), "at {a}");
        }
    }
}
