//! Pixel feature maps (DESIGN §4.1): the built-in extractor (no weights) and external maps loaded
//! from `.safetensors`. Both give a [`FeatureMap`] laid out **`[h*w, C]`, pixel-major**
//! (`data[(y * w + x) * c + ch]`).

use std::path::Path;

use image::RgbImage;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};

/// A feature map at resolution `h × w` with `c` channels, layout `[h*w, c]` (pixel-major).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    /// Channels per cell.
    pub c: usize,
    /// Grid height in cells.
    pub h: usize,
    /// Grid width in cells.
    pub w: usize,
    /// `[h*w, c]` pixel-major values, `data[(y * w + x) * c + ch]`.
    pub data: Vec<f32>,
    /// Channel holding the cell's x position (y is the next one), if the map has such
    /// channels (the built-in features do; an external CNN map does not).
    pub position_channel: Option<usize>,
}

impl FeatureMap {
    /// Feature vector of cell `(y, x)`.
    pub fn cell(&self, y: usize, x: usize) -> &[f32] {
        let o = (y * self.w + x) * self.c;
        &self.data[o..o + self.c]
    }
}

/// Channels of the built-in extractor, in order.
pub const BUILTIN_CHANNEL_NAMES: [&str; 12] = [
    "r",
    "g",
    "b",    // colour in [0, 1]
    "luma", // Rec. 601 luminance in [0, 1]
    "chroma_cos",
    "chroma_sin", // saturation · (cos, sin)(hue): hue on the unit circle, no wrap-around
    "saturation", // HSV saturation in [0, 1]
    "x",
    "y", // cell centre, normalised to [0, 1]
    "sobel_dx",
    "sobel_dy",  // cell mean of the Sobel derivatives of luma, divided by 4 (in [-1, 1])
    "sobel_mag", // cell mean of the Sobel gradient magnitude / 4 (texture energy; does not cancel)
];

/// The built-in channels "x", "y".
const POSITION_CHANNEL: usize = 7;

/// Number of channels of [`builtin_features`].
pub const BUILTIN_CHANNELS: usize = BUILTIN_CHANNEL_NAMES.len();

/// Tensor name looked up in external feature files.
pub const FEATURE_TENSOR_NAME: &str = "features";

/// Built-in extractor settings: output grid `out_h × out_w` (adaptive average pooling, so any image
/// size gives the same grid, hence the same pixel count per graph). Default 16 × 16 (stride 4 on 64²).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// Output grid height in cells (default 16).
    pub out_h: usize,
    /// Output grid width in cells (default 16).
    pub out_w: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            out_h: 16,
            out_w: 16,
        }
    }
}

impl FeatureConfig {
    /// The largest `out_h` / `out_w`: a 1024 × 1024 grid is already 2^20 cells per image, and a
    /// mistyped size (100000²) would otherwise allocate hundreds of gigabytes per batch.
    pub const MAX_SIDE: usize = 1024;

    /// Both sides in `1..=MAX_SIDE`; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, v) in [("out_h", self.out_h), ("out_w", self.out_w)] {
            if !(1..=Self::MAX_SIDE).contains(&v) {
                return Err(format!(
                    "data.features.{key} must be in 1..={}, got {v}",
                    Self::MAX_SIDE
                ));
            }
        }
        Ok(())
    }
}

/// Adaptive pooling window `[start, end)` of output cell `i` of `n` over `len` inputs (PyTorch's
/// `adaptive_avg_pool` rule: never empty, covers everything).
pub(crate) fn pool_window(i: usize, n: usize, len: usize) -> (usize, usize) {
    let start = i * len / n;
    let end = ((i + 1) * len).div_ceil(n);
    (start, end.max(start + 1).min(len))
}

/// The built-in pixel features of an RGB image, adaptive-average-pooled to `cfg.out_h × cfg.out_w`.
/// See [`BUILTIN_CHANNEL_NAMES`]. Errors on an empty image or an empty grid.
pub fn builtin_features(img: &RgbImage, cfg: &FeatureConfig) -> Result<FeatureMap> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if iw == 0 || ih == 0 || cfg.out_h == 0 || cfg.out_w == 0 {
        return Err(DataError::contract(format!(
            "builtin_features: image {iw}x{ih} / grid {}x{} must be non-empty",
            cfg.out_w, cfg.out_h
        )));
    }
    const C: usize = BUILTIN_CHANNELS;
    // Per-pixel features (C channels), then pool.
    let raw = img.as_raw();
    let luma: Vec<f32> = raw
        .chunks_exact(3)
        .map(|p| (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0)
        .collect();
    let l = |y: isize, x: isize| -> f32 {
        let y = y.clamp(0, ih as isize - 1) as usize;
        let x = x.clamp(0, iw as isize - 1) as usize;
        luma[y * iw + x]
    };
    let mut px = vec![0f32; ih * iw * C];
    for y in 0..ih {
        for x in 0..iw {
            let i = y * iw + x;
            let p = &raw[i * 3..i * 3 + 3];
            let (r, g, b) = (
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
            );
            let max = r.max(g).max(b);
            let min = r.min(g).min(b);
            let delta = max - min;
            let sat = if max > 0.0 { delta / max } else { 0.0 };
            let hue = if delta <= 0.0 {
                0.0
            } else if max == r {
                ((g - b) / delta).rem_euclid(6.0)
            } else if max == g {
                (b - r) / delta + 2.0
            } else {
                (r - g) / delta + 4.0
            } * (std::f32::consts::PI / 3.0);
            let (yi, xi) = (y as isize, x as isize);
            let dx = (l(yi - 1, xi + 1) + 2.0 * l(yi, xi + 1) + l(yi + 1, xi + 1))
                - (l(yi - 1, xi - 1) + 2.0 * l(yi, xi - 1) + l(yi + 1, xi - 1));
            let dy = (l(yi + 1, xi - 1) + 2.0 * l(yi + 1, xi) + l(yi + 1, xi + 1))
                - (l(yi - 1, xi - 1) + 2.0 * l(yi - 1, xi) + l(yi - 1, xi + 1));
            let f = &mut px[i * C..i * C + C];
            f[0] = r;
            f[1] = g;
            f[2] = b;
            f[3] = luma[i];
            f[4] = sat * hue.cos();
            f[5] = sat * hue.sin();
            f[6] = sat;
            f[POSITION_CHANNEL] = 0.0; // position is set per cell below
            f[POSITION_CHANNEL + 1] = 0.0;
            f[9] = dx / 4.0;
            f[10] = dy / 4.0;
            f[11] = (dx * dx + dy * dy).sqrt() / 4.0;
        }
    }
    let (oh, ow) = (cfg.out_h, cfg.out_w);
    let mut data = vec![0f32; oh * ow * C];
    for cy in 0..oh {
        let (y0, y1) = pool_window(cy, oh, ih);
        for cx in 0..ow {
            let (x0, x1) = pool_window(cx, ow, iw);
            let out = &mut data[(cy * ow + cx) * C..(cy * ow + cx + 1) * C];
            for y in y0..y1 {
                for x in x0..x1 {
                    let f = &px[(y * iw + x) * C..(y * iw + x + 1) * C];
                    for (o, v) in out.iter_mut().zip(f) {
                        *o += v;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as f32;
            for o in out.iter_mut() {
                *o /= n;
            }
            out[POSITION_CHANNEL] = (cx as f32 + 0.5) / ow as f32;
            out[POSITION_CHANNEL + 1] = (cy as f32 + 0.5) / oh as f32;
        }
    }
    Ok(FeatureMap {
        c: C,
        h: oh,
        w: ow,
        data,
        position_channel: Some(POSITION_CHANNEL),
    })
}

/// Load an external feature map `[C, h, w]` (or `[1, C, h, w]`) from a `.safetensors` file and return
/// it as `[h*w, C]`. The tensor is `name`, else [`FEATURE_TENSOR_NAME`] (`"features"`), else the file's
/// only tensor. dtypes: F32, F16, BF16, F64 (converted to f32). Errors (naming the file) on a corrupt
/// file, a missing tensor, another rank / dtype, an empty shape, or a non-finite value.
pub fn load_feature_map(path: &Path, name: Option<&str>) -> Result<FeatureMap> {
    let bad = |msg: String| DataError::Features {
        path: path.to_path_buf(),
        msg,
    };
    let (wanted, shape, chw) = read_float_tensor(path, name)?;
    let (c, h, w) = match shape.as_slice() {
        [c, h, w] | [1, c, h, w] => (*c, *h, *w),
        _ => {
            return Err(bad(format!(
                "tensor {wanted:?} has shape {shape:?}; expected [C, h, w] or [1, C, h, w]"
            )))
        }
    };
    if c == 0 || h == 0 || w == 0 {
        return Err(bad(format!("tensor {wanted:?} has empty shape {shape:?}")));
    }
    if let Some(i) = chw.iter().position(|v| !v.is_finite()) {
        let (ch, rest) = (i / (h * w), i % (h * w));
        return Err(bad(format!(
            "tensor {wanted:?} has a non-finite value {} at [channel {ch}, y {}, x {}]",
            chw[i],
            rest / w,
            rest % w
        )));
    }
    let mut data = vec![0f32; c * h * w];
    for ch in 0..c {
        for p in 0..h * w {
            data[p * c + ch] = chw[ch * h * w + p];
        }
    }
    Ok(FeatureMap {
        c,
        h,
        w,
        data,
        position_channel: None,
    })
}

/// Reads one float tensor of a `.safetensors` file as f32: `name`, else
/// [`FEATURE_TENSOR_NAME`], else the file's only tensor. Returns (its name, shape, values);
/// errors name the file.
pub(crate) fn read_float_tensor(
    path: &Path,
    name: Option<&str>,
) -> Result<(String, Vec<usize>, Vec<f32>)> {
    let bytes = crate::util::bounded::read_safetensors(path)
        .map_err(|e| DataError::io(path, "feature file", e))?;
    let bad = |msg: String| DataError::Features {
        path: path.to_path_buf(),
        msg,
    };
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("corrupt safetensors: {e}")))?;
    let wanted = name.unwrap_or(FEATURE_TENSOR_NAME);
    let view = match st.tensor(wanted) {
        Ok(v) => v,
        Err(_) if name.is_none() && st.len() == 1 => {
            let (_, v) = st.iter().next().ok_or_else(|| bad("no tensor".into()))?;
            v
        }
        Err(_) => {
            return Err(bad(format!(
                "no tensor named {wanted:?} (has {:?})",
                st.names()
            )))
        }
    };
    let shape = view.shape().to_vec();
    let raw = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => {
            return Err(bad(format!(
                "tensor {wanted:?} has dtype {d:?}; expected F32, F16, BF16 or F64"
            )))
        }
    };
    if values.len() != shape.iter().product::<usize>() {
        return Err(bad(format!(
            "tensor {wanted:?} holds {} values, shape {shape:?} needs {}",
            values.len(),
            shape.iter().product::<usize>()
        )));
    }
    Ok((wanted.to_string(), shape, values))
}

/// Precomputed caption features of a split ([`SplitPaths::text_features`](super::SplitPaths)):
/// a tensor `features` [N, D] (or the file's only tensor) with one row per `captions.json`
/// annotation, in file order. Returns, per sample of `ds`, the rows of its captions. Errors name
/// the file: missing, corrupt, not 2-D, a row count other than the annotation count, a
/// non-finite value.
pub fn load_text_features(ds: &super::Dataset) -> Result<Vec<Vec<Vec<f32>>>> {
    let paths = ds.paths();
    let path = paths
        .text_features
        .clone()
        .ok_or_else(|| DataError::Missing {
            path: paths
                .captions_json
                .with_file_name("text_features.safetensors"),
            what: "text features file (model.text.source = \"features\")",
        })?;
    let bad = |msg: String| DataError::Features {
        path: path.clone(),
        msg,
    };
    let (wanted, shape, v) = read_float_tensor(&path, None)?;
    let [n, d] = shape[..] else {
        return Err(bad(format!(
            "tensor {wanted:?} has shape {shape:?}; expected [captions, D]"
        )));
    };
    if n != ds.caption_records() || d == 0 {
        return Err(bad(format!(
            "tensor {wanted:?} has shape {shape:?}; captions.json has {} annotations, so [{}, D > 0] is needed",
            ds.caption_records(),
            ds.caption_records()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!(
            "tensor {wanted:?} has a non-finite value {} at [{}, {}]",
            v[i],
            i / d,
            i % d
        )));
    }
    Ok((0..ds.len())
        .map(|i| {
            ds.caption_rows(i)
                .unwrap_or(&[])
                .iter()
                .map(|&r| v[r * d..(r + 1) * d].to_vec())
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gshn-feat-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_st(path: &Path, name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) {
        let v = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), bytes).unwrap();
        let out = safetensors::serialize([(name, v)], None).unwrap();
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn builtin_layout_colour_position_gradient() {
        // 8x8: left half red, right half blue; grid 2x2 → each cell is one colour.
        let img = RgbImage::from_fn(8, 8, |x, _| {
            if x < 4 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let f = builtin_features(&img, &FeatureConfig { out_h: 2, out_w: 2 }).unwrap();
        assert_eq!(
            (f.c, f.h, f.w, f.data.len()),
            (BUILTIN_CHANNELS, 2, 2, 4 * BUILTIN_CHANNELS)
        );
        assert!(f.data.iter().all(|v| v.is_finite()));
        // pixel-major: cell (0,0) red, cell (0,1) blue.
        assert_eq!(&f.cell(0, 0)[0..3], &[1.0, 0.0, 0.0]);
        assert_eq!(&f.cell(1, 1)[0..3], &[0.0, 0.0, 1.0]);
        assert_eq!((f.cell(0, 1)[7], f.cell(0, 1)[8]), (0.75, 0.25));
        assert_eq!((f.cell(1, 0)[7], f.cell(1, 0)[8]), (0.25, 0.75));
        // red hue 0 → chroma (1, 0); blue hue 240° → (cos, sin)(240°).
        assert!((f.cell(0, 0)[4] - 1.0).abs() < 1e-6 && f.cell(0, 0)[5].abs() < 1e-6);
        assert!((f.cell(0, 1)[4] + 0.5).abs() < 1e-5 && (f.cell(0, 1)[5] + 0.866).abs() < 1e-3);
        // A vertical edge at x=4: luma drops red→blue, so dx < 0 in both cells next to it; dy = 0.
        assert!(f.cell(0, 0)[9] < 0.0 && f.cell(0, 1)[9] < 0.0);
        assert!(f.cell(0, 0)[10].abs() < 1e-6);
        assert!(f.cell(0, 0)[11] > 0.0);
        // Flat image → zero gradients.
        let flat = RgbImage::from_pixel(6, 5, image::Rgb([10, 200, 30]));
        let g = builtin_features(&flat, &FeatureConfig { out_h: 4, out_w: 4 }).unwrap();
        assert!(g
            .data
            .chunks(BUILTIN_CHANNELS)
            .all(|c| c[9] == 0.0 && c[11] == 0.0));
        assert!(builtin_features(&flat, &FeatureConfig { out_h: 0, out_w: 4 }).is_err());
    }

    #[test]
    fn pool_windows_cover_and_never_empty() {
        for len in 1..20 {
            for n in 1..25 {
                let mut covered = vec![false; len];
                for i in 0..n {
                    let (s, e) = pool_window(i, n, len);
                    assert!(s < e && e <= len, "len {len} n {n} i {i}: {s}..{e}");
                    covered[s..e].iter_mut().for_each(|c| *c = true);
                }
                assert!(covered.iter().all(|&c| c));
            }
        }
    }

    #[test]
    fn external_chw_to_pixel_major_f32_and_f16() {
        let d = tmp("ext");
        // [C=2, h=2, w=3], value = 100*c + 10*y + x
        let vals: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..2).flat_map(move |y| (0..3).map(move |x| (100 * c + 10 * y + x) as f32))
            })
            .collect();
        let p = d.join("a.safetensors");
        write_st(
            &p,
            "features",
            Dtype::F32,
            &[2, 2, 3],
            bytemuck::cast_slice(&vals),
        );
        let f = load_feature_map(&p, None).unwrap();
        assert_eq!((f.c, f.h, f.w), (2, 2, 3));
        assert_eq!(f.cell(1, 2), &[12.0, 112.0]);
        assert_eq!(f.cell(0, 1), &[1.0, 101.0]);
        // f16, batch dim of one, other tensor name (only tensor in the file).
        let h: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let p16 = d.join("b.safetensors");
        write_st(&p16, "x", Dtype::F16, &[1, 2, 2, 3], &h);
        assert_eq!(load_feature_map(&p16, None).unwrap(), f);
    }

    #[test]
    fn external_errors_name_file_and_problem() {
        let d = tmp("bad");
        let p = d.join("rank.safetensors");
        write_st(&p, "features", Dtype::F32, &[4, 2], &[0u8; 32]);
        let e = load_feature_map(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("rank.safetensors") && e.contains("shape [4, 2]"),
            "{e}"
        );

        let p = d.join("dtype.safetensors");
        write_st(&p, "features", Dtype::I32, &[1, 2, 2], &[0u8; 16]);
        let e = load_feature_map(&p, None).unwrap_err().to_string();
        assert!(e.contains("dtype.safetensors") && e.contains("I32"), "{e}");

        let p = d.join("nan.safetensors");
        let v = [0.0f32, 1.0, f32::NAN, 2.0];
        write_st(
            &p,
            "features",
            Dtype::F32,
            &[1, 2, 2],
            bytemuck::cast_slice(&v),
        );
        let e = load_feature_map(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("nan.safetensors") && e.contains("non-finite") && e.contains("y 1, x 0"),
            "{e}"
        );

        let p = d.join("corrupt.safetensors");
        std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
        let e = load_feature_map(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("corrupt.safetensors") && e.contains("corrupt"),
            "{e}"
        );

        let p = d.join("two.safetensors");
        let a = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 1, 1], &[0u8; 4]).unwrap();
        let b = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 1, 1], &[0u8; 4]).unwrap();
        std::fs::write(
            &p,
            safetensors::serialize([("a", a), ("b", b)], None).unwrap(),
        )
        .unwrap();
        let e = load_feature_map(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("two.safetensors") && e.contains("no tensor named \"features\""),
            "{e}"
        );

        let e = load_feature_map(&d.join("absent.safetensors"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("absent.safetensors") && e.contains("missing"),
            "{e}"
        );
    }
}
