//! Learning-rate schedule: linear warm-up, then cosine decay to `min_ratio · lr`.

/// Linear warm-up to `lr`, then cosine decay to `min_ratio · lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// Steps of linear warm-up (0: none).
    pub warmup_steps: usize,
    /// Step at which the decay reaches its floor (held after).
    pub total_steps: usize,
    /// Floor of the decay as a fraction of `lr`.
    pub min_ratio: f64,
}

impl WarmupCosine {
    /// Learning rate of optimizer step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        self.lr * (self.min_ratio + (1.0 - self.min_ratio) * cos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = WarmupCosine {
            lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            min_ratio: 0.1,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(10) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 0.55e-3).abs() < 1e-12);
        assert!((s.at(110) - 1e-4).abs() < 1e-12);
        assert!((s.at(1000) - 1e-4).abs() < 1e-12);
        for i in 10..110 {
            assert!(s.at(i + 1) <= s.at(i));
        }
    }
}
