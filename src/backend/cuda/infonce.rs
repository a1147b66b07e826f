//! CUDA: the InfoNCE family (`src/ops/infonce.rs`) on `kernels/infonce.cu`: tiled, log-sum-exp
//! only (the B×B logits never exist in memory). f32 tensors, gathered negatives, every precision
//! mode with the CPU's semantics, on two paths (see [`tile_path`]): the SIMT kernels (two
//! orientations, two backward passes), and the CPU's algorithm on 64×64 tiles — a one-pass
//! forward (row and column statistics from the same tiles) and a one-recompute backward along
//! anti-diagonals — with f32 by FMA and tf32 / bf16 on tensor cores (mma.sync).

use super::launch::{unsupported, Inputs, Kernels, Output};
use super::{CudaBackend, CudaBuffer};
use crate::backend::View;
use crate::error::{Error, Result};
use crate::ops::infonce::{InfoNceBackwardArgs, InfoNceGeometry, Precision};
use crate::ops::Op;
use crate::tensor::DType;

pub(super) fn execute(be: &CudaBackend, op: &Op, ins: Inputs, outs: &[Output]) -> Result<()> {
    let backward_args = match op {
        Op::InfoNceBackward(_) => Some(InfoNceBackwardArgs::of(op.name(), ins)?),
        _ => None,
    };
    let (a, p) = match &backward_args {
        Some(x) => (x.a, x.p),
        None => (&ins[0], &ins[1]),
    };
    if a.dtype != DType::F32 {
        return Err(unsupported(op, "the tiled InfoNCE kernels are f32 only"));
    }
    let (Op::InfoNce(at) | Op::InfoNceBackward(at)) = op else {
        return Err(Error::graph(format!("{} is not an InfoNCE op", op.name())));
    };
    let geo = at.geometry(op.name(), a.shape.dims(), p.shape.dims())?;
    let k = Kernels::typed(be, op, DType::F32);
    k.to_int("B*D", geo.rows.max(geo.cols) * geo.d)?;
    let call = Call {
        k: &k,
        geo,
        offset: k.to_int("offset", at.offset)?,
        prec: match at.precision {
            Precision::F32 => 0,
            Precision::Tf32 => 1,
            Precision::Bf16 => 2,
        },
        symmetric: at.symmetric,
    };
    match (backward_args, tile_path(op, at.precision)?) {
        (None, false) => call.forward(ins, outs),
        (Some(x), false) => call.backward(&x, outs),
        (None, true) => call.forward_tc(ins, outs),
        (Some(x), true) => call.backward_tc(&x, outs),
    }
}

/// Whether a call runs on the one-pass tile kernels (8, 9) rather than the two-orientation
/// SIMT kernels (1, 5). `GSHN_INFONCE_KERNELS` = `tiles` or `simt` picks one path for every
/// mode; unset (or `auto`): exact f32 on SIMT (the path verified on an H200), tf32 and bf16 on
/// the tiles (tensor cores). Both paths give every mode's semantics, so a GPU session can hold
/// one against the other. The variable is read once per process, not on every call.
fn tile_path(op: &Op, precision: Precision) -> Result<bool> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let choice = CHOICE.get_or_init(|| std::env::var("GSHN_INFONCE_KERNELS").ok());
    match choice.as_deref() {
        None | Some("" | "auto") => Ok(precision != Precision::F32),
        Some("tiles") => Ok(true),
        Some("simt") => Ok(false),
        Some(other) => Err(Error::invalid(
            op.name(),
            format!("GSHN_INFONCE_KERNELS={other:?}: use auto, tiles or simt"),
        )),
    }
}

/// One call: the launcher, the shapes and the attributes as the kernels take them.
struct Call<'a> {
    k: &'a Kernels<'a>,
    geo: InfoNceGeometry,
    offset: i32,
    /// `prec` of the kernels: 0 f32, 1 tf32, 2 bf16.
    prec: i32,
    symmetric: bool,
}

/// (row tiles, column splits KS) of a tile grid with `bx` rows and `by` columns: enough blocks
/// for two per SM.
fn tile_grid(be: &CudaBackend, bx: usize, by: usize) -> (usize, usize) {
    let row_tiles = bx.div_ceil(64);
    let splits = (2 * be.sm_count as usize)
        .div_ceil(row_tiles)
        .clamp(1, by.div_ceil(64).min(65535));
    (row_tiles, splits)
}

/// Edge of the tile kernels' tiles.
const TC_TILE: usize = 64;
/// Threads of a tile kernel's block.
const TC_BLOCK: u32 = 128;
/// Most row-tile groups of the tile forward (each holds two `[B]` column statistics).
const TC_GROUPS: usize = 32;

impl Call<'_> {
    /// The one-pass tile forward (kernels 8, 2, 3, 4 of infonce.cu).
    fn forward_tc(&self, ins: Inputs, outs: &[Output]) -> Result<()> {
        let (k, InfoNceGeometry { rows, cols, d }) = (self.k, self.geo);
        let (a, p, scale) = (ins[0].buf.ptr, ins[1].buf.ptr, ins[2].buf.ptr);
        let (loss, lse_row, lse_col) = (outs[0].ptr, outs[1].ptr, outs[2].ptr);
        let (row_tiles, col_tiles) = (rows.div_ceil(TC_TILE), cols.div_ceil(TC_TILE));
        let groups = row_tiles.min(TC_GROUPS);
        // About 8 blocks of 4 warps per SM.
        let splits = (8 * k.be.sm_count as usize)
            .div_ceil(groups)
            .clamp(1, col_tiles.min(65535));
        let col = if self.symmetric { groups * cols * 4 } else { 4 };
        let s =
            k.be.scratch(&[splits * rows * 4, splits * rows * 4, col, col, rows * 4])?;
        let (col_m, col_l) = if self.symmetric { (s[2], s[3]) } else { (0, 0) };
        k.grid("infonce_tc_lse", groups, splits)
            .block(TC_BLOCK)
            .ptr(a)
            .ptr(p)
            .ptr(scale)
            .ptr(s[0])
            .ptr(s[1])
            .ptr(col_m)
            .ptr(col_l)
            .dim("BX", rows)
            .dim("BY", cols)
            .dim("D", d)
            .int(self.prec)
            .dim("G", groups)
            .run()?;
        let mut merges = vec![(s[0], s[1], lse_row, rows, splits)];
        if self.symmetric {
            merges.push((col_m, col_l, lse_col, cols, groups));
        }
        for (m, l, lse, n, parts) in merges {
            k.flat("infonce_lse_merge", n)
                .ptr(m)
                .ptr(l)
                .ptr(lse)
                .dim("B", n)
                .dim("KS", parts)
                .run()?;
        }
        self.diag_and_loss(scale, a, p, s[4], loss, lse_row, lse_col)
    }

    /// The one-recompute tile backward: one launch per anti-diagonal of tiles
    /// (kernel 9), then the logit-scale gradient (kernel 7).
    fn backward_tc(
        &self,
        x: &InfoNceBackwardArgs<View<CudaBuffer>>,
        outs: &[Output],
    ) -> Result<()> {
        let (k, InfoNceGeometry { rows, cols, d }) = (self.k, self.geo);
        let (row_tiles, col_tiles) = (rows.div_ceil(TC_TILE), cols.div_ceil(TC_TILE));
        let tiles = row_tiles * col_tiles;
        let s = k.be.scratch(&[tiles * 4])?;
        let sym = self.symmetric;
        let (g_lse_row, g_lse_col) = x.g_lse.map_or((0, 0), |(r, c)| (r.buf.ptr, c.buf.ptr));
        for step in 0..row_tiles + col_tiles - 1 {
            let t_lo = step.saturating_sub(col_tiles - 1);
            let t_hi = step.min(row_tiles - 1);
            k.grid("infonce_tc_bwd", t_hi - t_lo + 1, 1)
                .block(TC_BLOCK)
                .ptr(x.a.buf.ptr)
                .ptr(x.p.buf.ptr)
                .ptr(x.lse_row.buf.ptr)
                .ptr(if sym { x.lse_col.buf.ptr } else { 0 })
                .ptr(g_lse_row)
                .ptr(if sym { g_lse_col } else { 0 })
                .ptr(x.logit_scale.buf.ptr)
                .ptr(x.g_loss.buf.ptr)
                .ptr(outs[0].ptr)
                .ptr(outs[1].ptr)
                .ptr(s[0])
                .dim("BX", rows)
                .dim("BY", cols)
                .dim("D", d)
                .flag(sym)
                .int(self.offset)
                .dim("step", step)
                .dim("t_lo", t_lo)
                .int(self.prec)
                .run()?;
        }
        k.grid("infonce_gscale", 1, 1)
            .ptr(s[0])
            .dim("partials", tiles)
            .ptr(x.logit_scale.buf.ptr)
            .ptr(outs[2].ptr)
            .run()
    }

    /// The positives' logits and the loss from the statistics (kernels 3 and 4).
    #[allow(clippy::too_many_arguments)]
    fn diag_and_loss(
        &self,
        scale: u64,
        a: u64,
        p: u64,
        diag: u64,
        loss: u64,
        lse_row: u64,
        lse_col: u64,
    ) -> Result<()> {
        let (k, rows, d) = (self.k, self.geo.rows, self.geo.d);
        k.warps("infonce_diag", rows)
            .ptr(a)
            .ptr(p)
            .ptr(scale)
            .ptr(diag)
            .dim("B", rows)
            .dim("D", d)
            .int(self.offset)
            .int(self.prec)
            .run()?;
        k.grid("infonce_loss", 1, 1)
            .ptr(lse_row)
            .ptr(if self.symmetric { lse_col } else { 0 })
            .ptr(diag)
            .ptr(loss)
            .dim("B", rows)
            .run()
    }

    /// a[B,D], p[P,D], logit_scale[] → loss[], lse_row[B], lse_col[B or 0]
    fn forward(&self, ins: Inputs, outs: &[Output]) -> Result<()> {
        let (k, InfoNceGeometry { rows, cols, d }) = (self.k, self.geo);
        let (a, p, scale) = (ins[0].buf.ptr, ins[1].buf.ptr, ins[2].buf.ptr);
        let (loss, lse_row, lse_col) = (outs[0].ptr, outs[1].ptr, outs[2].ptr);
        // (X, Y, BX, BY, lse): rows of X against the columns Y.
        let mut sides = vec![(a, p, rows, cols, lse_row)];
        if self.symmetric {
            sides.push((p, a, cols, rows, lse_col));
        }
        let most = sides
            .iter()
            .map(|&(_, _, bx, by, _)| tile_grid(k.be, bx, by).1 * bx)
            .max()
            .unwrap_or(0);
        let s = k.be.scratch(&[most * 4, most * 4, rows * 4])?;
        for (x, y, bx, by, lse) in sides {
            let (row_tiles, splits) = tile_grid(k.be, bx, by);
            k.grid("infonce_lse_partial", row_tiles, splits)
                .ptr(x)
                .ptr(y)
                .ptr(scale)
                .ptr(s[0])
                .ptr(s[1])
                .dim("BX", bx)
                .dim("BY", by)
                .dim("D", d)
                .int(self.prec)
                .run()?;
            k.flat("infonce_lse_merge", bx)
                .ptr(s[0])
                .ptr(s[1])
                .ptr(lse)
                .dim("B", bx)
                .dim("KS", splits)
                .run()?;
        }
        self.diag_and_loss(scale, a, p, s[2], loss, lse_row, lse_col)
    }

    /// g_loss, a, p, logit_scale, lse_row, lse_col (, g_lse_row, g_lse_col) → ga, gp, g_scale
    fn backward(&self, x: &InfoNceBackwardArgs<View<CudaBuffer>>, outs: &[Output]) -> Result<()> {
        let (k, InfoNceGeometry { rows, cols, d }) = (self.k, self.geo);
        let (g_loss, a, p, scale, lse_row, lse_col) = (
            x.g_loss.buf.ptr,
            x.a.buf.ptr,
            x.p.buf.ptr,
            x.logit_scale.buf.ptr,
            x.lse_row.buf.ptr,
            x.lse_col.buf.ptr,
        );
        let (g_lse_row, g_lse_col) = x.g_lse.map_or((0, 0), |(r, c)| (r.buf.ptr, c.buf.ptr));
        /// One direction of the backward: the kernel's (X, Y, lse_x, lse_y, g_lse_x, g_lse_y),
        /// their row counts, the gradient it writes, whether it also writes the logit-scale
        /// partials, its mode and where X-row r's positive sits (Y-column r + doff).
        struct Side {
            x: u64,
            y: u64,
            bx: usize,
            by: usize,
            lse: (u64, u64),
            g_lse: (u64, u64),
            out: u64,
            g_scale: bool,
            mode: i32,
            doff: i32,
        }
        let (sym, off) = (self.symmetric, self.offset);
        let sides = [
            Side {
                x: a,
                y: p,
                bx: rows,
                by: cols,
                lse: (lse_row, if sym { lse_col } else { 0 }),
                g_lse: (g_lse_row, if sym { g_lse_col } else { 0 }),
                out: outs[0].ptr,
                g_scale: true,
                mode: if sym { 0 } else { 1 },
                doff: off,
            },
            Side {
                x: p,
                y: a,
                bx: cols,
                by: rows,
                lse: if sym {
                    (lse_col, lse_row)
                } else {
                    (0, lse_row)
                },
                g_lse: if sym {
                    (g_lse_col, g_lse_row)
                } else {
                    (0, g_lse_row)
                },
                out: outs[1].ptr,
                g_scale: false,
                mode: if sym { 0 } else { 2 },
                doff: -off,
            },
        ];
        let grids = sides.each_ref().map(|s| tile_grid(k.be, s.bx, s.by));
        let parts = grids
            .iter()
            .zip(&sides)
            .map(|(&(_, splits), s)| if splits > 1 { splits * s.bx * d } else { 1 })
            .max()
            .unwrap_or(1);
        let (gscale_tiles, gscale_splits) = grids[0];
        let s =
            k.be.scratch(&[parts * 4, gscale_tiles * gscale_splits * 4])?;
        for (side, (row_tiles, splits)) in sides.iter().zip(grids) {
            let target = if splits > 1 { s[0] } else { side.out };
            k.grid("infonce_bwd", row_tiles, splits)
                .ptr(side.x)
                .ptr(side.y)
                .ptr(side.lse.0)
                .ptr(side.lse.1)
                .ptr(side.g_lse.0)
                .ptr(side.g_lse.1)
                .ptr(scale)
                .ptr(g_loss)
                .ptr(target)
                .ptr(if side.g_scale { s[1] } else { 0 })
                .dim("BX", side.bx)
                .dim("BY", side.by)
                .dim("D", d)
                .int(side.mode)
                .int(side.doff)
                .dim("n_mean", rows)
                .int(self.prec)
                .run()?;
            if splits > 1 {
                k.flat("infonce_sum_parts", side.bx * d)
                    .ptr(s[0])
                    .ptr(side.out)
                    .dim("KS", splits)
                    .dim("B*D", side.bx * d)
                    .run()?;
            }
        }
        k.grid("infonce_gscale", 1, 1)
            .ptr(s[1])
            .dim("partials", gscale_tiles * gscale_splits)
            .ptr(scale)
            .ptr(outs[2].ptr)
            .run()
    }
}
