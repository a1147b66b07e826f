//! Evaluation of a run: embeddings of a whole split, retrieval recall, and the image-side
//! outputs of one batch for `gshn show`.

use super::config::{open_split, StepPrecision};
use super::engine::{load_engine, Engine};
use super::retrieval::{recall, Recall};
use crate::backend::Backend;
use crate::data::{prepare, PreparedSplit};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::util::rng::SplitMix64;
use std::path::Path;

impl<B: Backend> Engine<B> {
    /// Image and caption embeddings of a whole split (with the current parameters), and each
    /// caption's image index.
    pub fn embed(&mut self, split: &PreparedSplit) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
        self.sync_eval()?;
        let b = self.cfg.train.batch_size;
        let mut rng = SplitMix64::new(0);
        let mut img = Vec::new();
        for chunk in split.graphs.chunks(b) {
            self.feeder.feed_images(&mut self.image, chunk, &mut rng)?;
            self.image.run()?;
            let z = self.image.get(self.model_outputs.z_img)?;
            img.extend_from_slice(&z.storage().f32_prefix(chunk.len() * self.cfg.model.dim)?);
        }
        let caps: Vec<(&crate::data::Encoded, usize)> = split
            .captions
            .iter()
            .enumerate()
            .flat_map(|(i, cs)| cs.iter().map(move |c| (c, i)))
            .collect();
        let mut txt = Vec::new();
        for chunk in caps.chunks(b) {
            let enc: Vec<&crate::data::Encoded> = chunk.iter().map(|(c, _)| *c).collect();
            self.feeder.feed_text(&mut self.text, &enc)?;
            self.text.run()?;
            let z = self.text.get(self.model_outputs.z_txt)?;
            txt.extend_from_slice(&z.storage().f32_prefix(chunk.len() * self.cfg.model.dim)?);
        }
        let d = self.cfg.model.dim;
        let bad = |v: &[f32]| {
            v.chunks(d)
                .filter(|r| r.iter().any(|x| !x.is_finite()))
                .count()
        };
        let (bad_img, bad_txt) = (bad(&img), bad(&txt));
        if bad_img + bad_txt > 0 {
            // Retrieval of non-finite embeddings measures nothing: an error, in eval and in training.
            return Err(Error::invalid(
                "eval",
                format!(
                    "{bad_img} of {} image and {bad_txt} of {} caption embeddings are not finite \
                     (NaN or infinity): the weights have diverged or hold non-finite values",
                    img.len() / d,
                    txt.len() / d
                ),
            ));
        }
        Ok((img, txt, caps.iter().map(|(_, i)| *i).collect()))
    }

    /// Image↔text retrieval recalls of the current parameters on `split` (all its captions).
    pub fn evaluate(&mut self, split: &PreparedSplit) -> Result<Recall> {
        let (img, txt, owner) = self.embed(split)?;
        Ok(recall(&img, &txt, self.cfg.model.dim, &owner))
    }

    /// Image-side outputs for one batch (for `gshn show`): attention per layer and node spike rates.
    pub fn inspect(
        &mut self,
        graphs: &[crate::data::SceneGraph],
    ) -> Result<(crate::data::GraphBatch, Vec<Tensor>)> {
        self.sync_eval()?;
        let b = self
            .feeder
            .feed_images(&mut self.image, graphs, &mut SplitMix64::new(0))?;
        self.image.run()?;
        let outs = self
            .image_fetch
            .iter()
            .map(|&v| self.image.get(v))
            .collect::<Result<_>>()?;
        Ok((b, outs))
    }
}

/// Retrieval of a trained run on one split of a dataset root, computed in `precision`
/// (default: the run's own).
pub fn evaluate_run<B: Backend>(
    backend: B,
    run: &Path,
    data: &Path,
    split: &str,
    save_embeddings: Option<&Path>,
    precision: Option<StepPrecision>,
) -> Result<Recall> {
    let mut engine = load_engine(backend, run, precision)?;
    let ds = open_split(data, &engine.cfg, split)?;
    let vocab = engine.vocab.clone();
    let cfg = engine.cfg.clone();
    let prepared = prepare(&ds, &cfg.prepare_options(), &vocab, split)?;
    let (img, txt, owner) = engine.embed(&prepared)?;
    let d = cfg.model.dim;
    let r = recall(&img, &txt, d, &owner);
    if let Some(path) = save_embeddings {
        // For error analysis outside gshn: rows follow the split's image order and, per image,
        // its caption order; image_id maps rows back to the dataset.
        let ids = prepared
            .image_ids
            .iter()
            .map(|&i| i32::try_from(i))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| Error::invalid("save_embeddings", "an image id exceeds i32"))?;
        let owner_i32: Vec<i32> = owner.iter().map(|&i| i as i32).collect();
        let tensors = vec![
            ("image".to_string(), Tensor::new([img.len() / d, d], img)?),
            ("text".to_string(), Tensor::new([txt.len() / d, d], txt)?),
            (
                "caption_image".to_string(),
                Tensor::new([owner.len()], owner_i32)?,
            ),
            ("image_id".to_string(), Tensor::new([ids.len()], ids)?),
        ];
        crate::tensor::io::save_safetensors(path, &tensors, None)?;
    }
    Ok(r)
}
