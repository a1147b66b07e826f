//! Image↔text retrieval metrics (R@1/5/10, rsum), COCO protocol: every caption of the
//! split is a query for text→image; an image query counts as a hit if *any* of its
//! captions ranks within K.

use serde::{Deserialize, Serialize};

/// Retrieval recalls in percent (COCO protocol, see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Image→text R@1.
    pub i2t_r1: f64,
    /// Image→text R@5.
    pub i2t_r5: f64,
    /// Image→text R@10.
    pub i2t_r10: f64,
    /// Text→image R@1.
    pub t2i_r1: f64,
    /// Text→image R@5.
    pub t2i_r5: f64,
    /// Text→image R@10.
    pub t2i_r10: f64,
    /// Sum of the six recalls (0–600).
    pub rsum: f64,
}

/// `img[I, D]` and `txt[T, D]` row-major embeddings (normalised), `caption_image[t]` the
/// image index of caption t. Recalls are percentages.
pub fn recall(img: &[f32], txt: &[f32], d: usize, caption_image: &[usize]) -> Recall {
    let ni = img.len() / d.max(1);
    let nt = caption_image.len();
    let sim = |i: usize, t: usize| -> f32 {
        img[i * d..(i + 1) * d]
            .iter()
            .zip(&txt[t * d..(t + 1) * d])
            .map(|(a, b)| a * b)
            .sum()
    };
    // Rank of the best true match; ties count against the query (the pessimistic rank),
    // so a collapsed model scores 0 rather than a lucky 100. Likewise for NaN: a non-finite
    // truth is a miss, and a competitor counts unless it scores strictly lower
    // (`counts_against`), so a diverged model scores 0, never 100.
    let mut i2t = [0usize; 3];
    for i in 0..ni {
        let scores: Vec<f32> = (0..nt).map(|t| sim(i, t)).collect();
        let best_true = (0..nt)
            .filter(|&t| caption_image[t] == i)
            .map(|t| scores[t])
            .fold(f32::NEG_INFINITY, f32::max);
        if !best_true.is_finite() {
            continue; // no caption, or none with a finite score: a miss
        }
        let rank = scores
            .iter()
            .enumerate()
            .filter(|&(t, &s)| caption_image[t] != i && counts_against(s, best_true))
            .count();
        count(rank, &mut i2t);
    }
    let mut t2i = [0usize; 3];
    for (t, &owner) in caption_image.iter().enumerate() {
        let truth = sim(owner, t);
        let rank = if truth.is_finite() {
            (0..ni)
                .filter(|&i| i != owner && counts_against(sim(i, t), truth))
                .count()
        } else {
            usize::MAX
        };
        count(rank, &mut t2i);
    }
    let pct = |c: usize, n: usize| 100.0 * c as f64 / n.max(1) as f64;
    let mut r = Recall {
        i2t_r1: pct(i2t[0], ni),
        i2t_r5: pct(i2t[1], ni),
        i2t_r10: pct(i2t[2], ni),
        t2i_r1: pct(t2i[0], nt),
        t2i_r5: pct(t2i[1], nt),
        t2i_r10: pct(t2i[2], nt),
        rsum: 0.0,
    };
    r.rsum = r.i2t_r1 + r.i2t_r5 + r.i2t_r10 + r.t2i_r1 + r.t2i_r5 + r.t2i_r10;
    r
}

/// A competitor ranks at or above the truth unless it scores strictly lower: ties and NaN
/// count against the query.
fn counts_against(score: f32, truth: f32) -> bool {
    score.partial_cmp(&truth) != Some(std::cmp::Ordering::Less)
}

fn count(rank: usize, hits: &mut [usize; 3]) {
    for (h, k) in hits.iter_mut().zip([1, 5, 10]) {
        if rank < k {
            *h += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_random_and_collapsed_embeddings() {
        // 3 images in 2-D, two captions each, captions equal to their image: all hits.
        let img = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let txt: Vec<f32> = [0, 0, 1, 1, 2, 2]
            .iter()
            .flat_map(|&i| img[i * 2..i * 2 + 2].to_vec())
            .collect();
        let r = recall(&img, &txt, 2, &[0, 0, 1, 1, 2, 2]);
        assert_eq!((r.i2t_r1, r.t2i_r1, r.rsum), (100.0, 100.0, 600.0));
        // Collapsed: every similarity equal -> pessimistic ranks -> R@1 = 0.
        let same = [1.0f32; 6];
        let r = recall(&same, &[1.0; 12], 2, &[0, 0, 1, 1, 2, 2]);
        assert_eq!(r.t2i_r1, 0.0);
        assert_eq!(r.i2t_r1, 0.0);
        // Swapped captions: caption of image 0 points at image 1 and vice versa.
        let txt2: Vec<f32> = [1, 0, 2]
            .iter()
            .flat_map(|&i| img[i * 2..i * 2 + 2].to_vec())
            .collect();
        let r = recall(&img, &txt2, 2, &[0, 1, 2]);
        assert!((r.t2i_r1 - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn non_finite_embeddings_score_as_misses() {
        let img = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let owners = [0, 0, 1, 1, 2, 2];
        let txt: Vec<f32> = owners
            .iter()
            .flat_map(|&i| img[i * 2..i * 2 + 2].to_vec())
            .collect();
        // Everything NaN (a diverged model): no hit at all.
        let r = recall(&[f32::NAN; 6], &[f32::NAN; 12], 2, &owners);
        assert_eq!(r.rsum, 0.0);
        // One NaN image: its own queries miss; the others' captions are not beaten by it.
        let mut bad = img;
        bad[2] = f32::NAN;
        let r = recall(&bad, &txt, 2, &owners);
        assert!((r.t2i_r1 - 0.0).abs() < 1e-9, "{r:?}");
        // A NaN caption: its query misses, and it counts against every image query.
        let mut txt_nan = txt.clone();
        txt_nan[0] = f32::NAN;
        let r = recall(&img, &txt_nan, 2, &owners);
        assert!(r.t2i_r1 < 100.0 && r.i2t_r1 < 100.0, "{r:?}");
    }
}
