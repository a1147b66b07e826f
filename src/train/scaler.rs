//! Dynamic loss scaling for f16 training (`train.precision = "f16"`), with the semantics of
//! PyTorch's `torch.cuda.amp.GradScaler`: the loss is multiplied by `scale` before the
//! backward, so that small f16 gradients do not flush to zero; the gradients are divided by it
//! before clipping and AdamW. A step whose gradient holds an infinity or a NaN (an f16
//! overflow) is skipped — parameters and AdamW moments unchanged — and the scale halves; after
//! `growth_interval` clean steps in a row it doubles.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The scaler's state: saved in checkpoints, so an f16 run resumes exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// What the loss is multiplied by (a power of two: scaling and unscaling are exact).
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean: usize,
    /// Steps skipped so far: AdamW's step count (its bias correction) counts only the
    /// steps taken, as `optimizer.step()` is not called on a skipped step in PyTorch.
    pub skipped: usize,
    /// Clean steps in a row after which the scale doubles.
    pub growth_interval: usize,
}

impl Default for LossScaler {
    /// GradScaler's defaults: scale 2¹⁶, doubling after 2000 clean steps.
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            clean: 0,
            skipped: 0,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// Below this scale the run has diverged (every gradient non-finite whatever the scale):
    /// an error, not an endless run of skipped steps.
    pub const MIN_SCALE: f64 = 1.0 / (1u64 << 24) as f64;

    /// Records a step's outcome: `finite` = its gradient norm was finite (the step was
    /// applied). Returns whether it was applied.
    pub fn update(&mut self, finite: bool, step: usize) -> Result<bool> {
        if finite {
            self.clean += 1;
            if self.clean == self.growth_interval {
                self.scale *= 2.0;
                self.clean = 0;
            }
            return Ok(true);
        }
        self.scale *= 0.5;
        self.clean = 0;
        self.skipped += 1;
        if self.scale < Self::MIN_SCALE {
            return Err(Error::invalid(
                "train",
                format!(
                    "the f16 loss scale fell below 2^-24 at step {step}: every gradient is \
                     non-finite (the run has diverged); lower train.lr or use bf16"
                ),
            ));
        }
        Ok(false)
    }

    /// AdamW's 1-based step number for the run's step `step` (0-based): the steps applied,
    /// this one included (at least 1).
    pub fn adam_step(&self, step: usize) -> usize {
        (step + 1).saturating_sub(self.skipped).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_skips_the_step_and_backs_off_clean_steps_grow_the_scale() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..LossScaler::default()
        };
        assert_eq!(s.adam_step(0), 1);
        assert!(s.update(true, 0).unwrap());
        assert!(
            !s.update(false, 1).unwrap(),
            "an overflowing step is skipped"
        );
        assert_eq!((s.scale, s.clean, s.skipped), (32768.0, 0, 1));
        // step 2 is AdamW's second step: step 1 did not count
        assert_eq!(s.adam_step(2), 2);
        for k in 2..4 {
            s.update(true, k).unwrap();
        }
        assert_eq!(s.scale, 32768.0, "two clean steps: not yet");
        s.update(true, 4).unwrap();
        assert_eq!((s.scale, s.clean), (65536.0, 0), "three: doubled");
        // a run whose gradients never become finite ends with an error
        let mut s = LossScaler::default();
        let e = (0..100).find_map(|k| s.update(false, k).err()).unwrap();
        assert!(e.to_string().contains("diverged"), "{e}");
        assert_eq!(s.skipped, 41);
    }
}
