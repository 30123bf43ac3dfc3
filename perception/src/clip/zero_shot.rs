//! Zero-shot classification with CLIP (open_clip's `build_zero_shot_classifier`): every class
//! name is put into every prompt template, each text embedding is normalized, a class is the
//! mean of its templates' embeddings renormalized, and the logits of an image are
//! `100 · normalize(image) · class`.
//!
//! A classifier is built once per vocabulary (class names + templates) and cached: text
//! encoding is the expensive part, and a vocabulary rarely changes while a stream runs.

use std::collections::VecDeque;
use std::rc::Rc;

use tch::Tensor;

use super::tokenizer::ClipTokenizer;
use super::{Clip, normalize};
use crate::{PerceptionError, Result};

/// The scale of zero-shot logits (CLIP's trained `logit_scale.exp()`, fixed as in open_clip's
/// zero-shot evaluation).
pub const LOGIT_SCALE: f64 = 100.0;
/// Texts encoded per forward when building a classifier.
const TEXT_BATCH: usize = 64;

/// The 80 prompt templates of OpenAI's ImageNet evaluation (open_clip's
/// `OPENAI_IMAGENET_TEMPLATES`), `{}` standing for the class name.
pub const OPENAI_IMAGENET_TEMPLATES: [&str; 80] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// Class embeddings of one vocabulary.
#[derive(Debug)]
pub struct ZeroShotClassifier {
    classes: Vec<String>,
    templates: Vec<String>,
    weights: Tensor, // [embed_dim, classes], each column unit-norm
}

impl ZeroShotClassifier {
    /// Encodes every `template` (with `{}`) for every class.
    pub fn build<S: AsRef<str>, T: AsRef<str>>(
        clip: &Clip,
        tokenizer: &ClipTokenizer,
        classes: &[S],
        templates: &[T],
    ) -> Result<Self> {
        if classes.is_empty() || templates.is_empty() {
            return Err(PerceptionError::Config {
                model: "zero-shot classifier",
                message: "needs at least one class and one template".into(),
            });
        }
        let templates: Vec<String> = templates.iter().map(|t| t.as_ref().to_owned()).collect();
        let classes: Vec<String> = classes.iter().map(|c| c.as_ref().to_owned()).collect();
        let texts: Vec<String> =
            classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{}", c))).collect();
        let mut embeddings = Vec::new();
        for chunk in texts.chunks(TEXT_BATCH) {
            let ids = tokenizer.tokenize_batch(chunk)?.f_to_device(clip.device())?; // [n, 77]
            embeddings.push(normalize(&clip.encode_text(&ids)?)?); // [n, embed]
        }
        let all = Tensor::f_cat(&embeddings, 0)?; // [classes * templates, embed]
        let embed = all.size()[1];
        let mean = all.f_view([classes.len() as i64, templates.len() as i64, embed])?.f_mean_dim(
            Some(&[1i64][..]),
            false,
            None::<tch::Kind>,
        )?; // [classes, embed]
        let norm = mean.f_norm_scalaropt_dim(2, [1i64], true)?; // [classes, 1]
        let weights = mean.f_div(&norm)?.f_transpose(0, 1)?.f_contiguous()?; // [embed, classes]
        Ok(Self { classes, templates, weights })
    }

    /// The class names, in logit order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The templates used.
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// The class embeddings `[embed_dim, classes]`.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// Logits `[B, classes]` of image embeddings `[B, embed_dim]` (normalized here).
    pub fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        let w = self.weights.f_to_kind(image_features.kind())?;
        Ok(normalize(image_features)?.f_matmul(&w)?.f_mul_scalar(LOGIT_SCALE)?)
    }
}

/// Classifiers by vocabulary, the most recently used kept (at most `capacity`); it lives on
/// the inference thread with the model (tch tensors are not `Sync`).
#[derive(Debug)]
pub struct ClassifierCache {
    capacity: usize,
    entries: VecDeque<(Vec<String>, Vec<String>, Rc<ZeroShotClassifier>)>,
}

impl ClassifierCache {
    /// A cache of at most `capacity` vocabularies (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: VecDeque::new() }
    }

    /// The classifier of `classes` × `templates`, built on first use.
    pub fn get(
        &mut self,
        clip: &Clip,
        tokenizer: &ClipTokenizer,
        classes: &[String],
        templates: &[String],
    ) -> Result<Rc<ZeroShotClassifier>> {
        if let Some(entry) = self
            .entries
            .iter()
            .position(|(c, t, _)| c == classes && t == templates)
            .and_then(|i| self.entries.remove(i))
        {
            let classifier = entry.2.clone();
            self.entries.push_front(entry);
            return Ok(classifier);
        }
        let classifier = Rc::new(ZeroShotClassifier::build(clip, tokenizer, classes, templates)?);
        self.entries.push_front((classes.to_vec(), templates.to_vec(), classifier.clone()));
        self.entries.truncate(self.capacity);
        Ok(classifier)
    }

    /// Vocabularies held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
