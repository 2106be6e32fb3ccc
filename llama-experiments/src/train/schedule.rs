//! The learning-rate schedule of the paper: linear warmup, then cosine decay to a fraction of the
//! peak at the last step. A pure function of the step, so a resumed run needs no scheduler state.

/// Learning rate at optimiser step `step` (0-based) of `total`.
pub fn lr_at(step: u64, total: u64, peak: f64, warmup: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let min = peak * min_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let (peak, total, warmup) = (3e-4, 1000, 100);
        assert!((lr_at(0, total, peak, warmup, 0.1) - 3e-6).abs() < 1e-12);
        assert!((lr_at(49, total, peak, warmup, 0.1) - 1.5e-4).abs() < 1e-12);
        assert!((lr_at(100, total, peak, warmup, 0.1) - peak).abs() < 1e-12);
        // Halfway through the decay: the midpoint of peak and floor.
        let mid = lr_at(550, total, peak, warmup, 0.1);
        assert!((mid - (peak + 0.1 * peak) / 2.0).abs() < 1e-12, "{mid}");
        assert!((lr_at(1000, total, peak, warmup, 0.1) - 3e-5).abs() < 1e-12);
        assert!((lr_at(5000, total, peak, warmup, 0.1) - 3e-5).abs() < 1e-12);
        let lrs: Vec<f64> = (100..1000)
            .map(|s| lr_at(s, total, peak, warmup, 0.1))
            .collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(lr_at(0, 10, 1.0, 0, 0.1), 1.0);
    }
}
