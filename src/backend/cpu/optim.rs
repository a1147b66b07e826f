//! CPU kernels: AdamW and gradient clipping.

use super::{CpuView, CpuViewMut};
use crate::error::{Error, Result};
use crate::ops::Op;

pub(crate) fn execute(op: &Op, _inputs: &[CpuView], _outputs: &mut [CpuViewMut]) -> Result<()> {
    Err(Error::Unsupported {
        backend: "cpu",
        what: format!("{} not implemented yet", op.name()),
    })
}
