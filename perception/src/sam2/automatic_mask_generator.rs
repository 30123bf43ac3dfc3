//! `SAM2AutomaticMaskGenerator` (sam2 1.1.0, `sam2/automatic_mask_generator.py`): every object
//! in an image without prompts. A grid of single-point prompts over the image (and over
//! overlapping crops), filtered by predicted IoU and stability, de-duplicated by box NMS within
//! and across crops, optionally refined once with the masks as prompts (`use_m2m`).
//!
//! One departure, documented in the README: the reference hands `min_mask_region_area` to the
//! image predictor's hole filling, a CUDA extension that is skipped (with a warning) where it
//! is not built, and leaves the OpenCV `postprocess_small_regions` unused. Here a positive
//! `min_mask_region_area` runs `postprocess_small_regions` (natively) on the result, on every
//! device, as segment-anything's generator does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use super::amg::{self, RegionMode};
use super::image_predictor::PointPredictor;
use crate::{PerceptionError, Result};

/// Points per side when neither `points_per_side` nor `point_grids` is given.
pub const DEFAULT_POINTS_PER_SIDE: usize = 32;

/// The generator's settings; names and defaults are the official constructor's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AmgConfig {
    /// Points sampled along one side of the image (`points_per_side²` prompts); exclusive with
    /// `point_grids`. Unset: 32, unless `point_grids` is given.
    pub points_per_side: Option<usize>,
    /// Explicit point grids in `[0, 1]²`, one per crop layer; exclusive with `points_per_side`.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Prompts run through the mask decoder at once.
    pub points_per_batch: usize,
    /// Masks whose predicted IoU is not above this are dropped (0 disables).
    pub pred_iou_thresh: f64,
    /// Masks whose stability score is below this are dropped (0 disables).
    pub stability_score_thresh: f64,
    /// Shift of the cutoff for the stability score.
    pub stability_score_offset: f64,
    /// Logit threshold of a mask pixel.
    pub mask_threshold: f64,
    /// Box IoU above which NMS drops the weaker of two masks of one crop.
    pub box_nms_thresh: f64,
    /// Crop layers run after the whole image (layer `i` has `(2^i)²` crops).
    pub crop_n_layers: usize,
    /// Box IoU above which masks of different crops are duplicates (smaller crops win).
    pub crop_nms_thresh: f64,
    /// Overlap of the first crop layer, as a fraction of the short side.
    pub crop_overlap_ratio: f64,
    /// Points per side of layer `n` are divided by this to the power `n`.
    pub crop_n_points_downscale_factor: usize,
    /// Holes and islands smaller than this many pixels are removed (0 disables).
    pub min_mask_region_area: usize,
    /// Refine each mask once with its own low-resolution logits as the prompt.
    pub use_m2m: bool,
    /// Three masks per point (else one).
    pub multimask_output: bool,
}

impl Default for AmgConfig {
    fn default() -> Self {
        Self {
            points_per_side: None,
            point_grids: None,
            points_per_batch: 64,
            pred_iou_thresh: 0.8,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            mask_threshold: 0.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0,
            use_m2m: false,
            multimask_output: true,
        }
    }
}

impl AmgConfig {
    /// The point grid of every crop layer, after checking the settings.
    pub fn point_grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let checks: [(bool, &str); 8] = [
            (
                !(self.points_per_side.is_some() && self.point_grids.is_some()),
                "exactly one of points_per_side and point_grids may be set",
            ),
            (self.points_per_side != Some(0), "points_per_side must be at least 1"),
            (self.points_per_batch > 0, "points_per_batch must be at least 1"),
            (self.crop_n_points_downscale_factor > 0, "crop_n_points_downscale_factor must be at least 1"),
            ((0.0..1.0).contains(&self.crop_overlap_ratio), "crop_overlap_ratio must be in [0, 1)"),
            (
                unit(self.box_nms_thresh) && unit(self.crop_nms_thresh),
                "box_nms_thresh and crop_nms_thresh must be in [0, 1]",
            ),
            (self.stability_score_offset >= 0.0, "stability_score_offset must not be negative"),
            (
                self.pred_iou_thresh.is_finite()
                    && self.stability_score_thresh.is_finite()
                    && self.mask_threshold.is_finite(),
                "thresholds must be finite",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(config(message.to_string()));
        }
        let grids = match (&self.point_grids, self.points_per_side) {
            (Some(grids), _) => grids.clone(),
            (None, n) => amg::build_all_layer_point_grids(
                n.unwrap_or(DEFAULT_POINTS_PER_SIDE),
                self.crop_n_layers,
                self.crop_n_points_downscale_factor,
            ),
        };
        if grids.len() <= self.crop_n_layers {
            return Err(config(format!(
                "point_grids has {} grids; crop_n_layers = {} needs {}",
                grids.len(),
                self.crop_n_layers,
                self.crop_n_layers + 1
            )));
        }
        if grids.iter().flatten().any(|p| !unit(p[0]) || !unit(p[1])) {
            return Err(config("point_grids must lie in [0, 1]".into()));
        }
        Ok(grids)
    }
}

/// One mask found in the image (a record of the reference's `generate`).
#[derive(Debug)]
pub struct AmgMask {
    /// The mask `[H, W]` (bool, on the host).
    pub segmentation: Tensor,
    /// Pixels in the mask.
    pub area: i64,
    /// Box `[x, y, w, h]` in pixels (inclusive corners, as the reference: `w = x1 - x0`).
    pub bbox: [f32; 4],
    /// The model's predicted IoU.
    pub predicted_iou: f32,
    /// The point prompt that produced it (image pixels).
    pub point_coords: [f32; 2],
    /// IoU of the mask thresholded at `mask_threshold ± stability_score_offset`.
    pub stability_score: f32,
    /// The crop it came from, `[x, y, w, h]`.
    pub crop_box: [i64; 4],
}

impl AmgMask {
    /// The box as `[x0, y0, x1, y1]` (inclusive).
    pub fn xyxy(&self) -> [f32; 4] {
        let [x, y, w, h] = self.bbox;
        [x, y, x + w, y + h]
    }
}

/// Masks of one crop (or of the whole image), in the reference's `MaskData` columns.
#[derive(Debug, Default)]
struct MaskData {
    /// Boolean masks at crop size, one tensor per mask (kept apart so filtering drops memory).
    masks: Vec<Tensor>,
    /// `[x0, y0, x1, y1]` inclusive, crop coordinates until uncropped.
    boxes: Vec<[f32; 4]>,
    iou: Vec<f32>,
    stability: Vec<f32>,
    points: Vec<[f32; 2]>,
    crop_boxes: Vec<[i64; 4]>,
}

impl MaskData {
    /// Keeps the rows `keep`, in that order.
    fn select(self, keep: &[usize]) -> Self {
        fn pick<T: Copy>(v: &[T], keep: &[usize]) -> Vec<T> {
            keep.iter().map(|&i| v[i]).collect()
        }
        Self {
            masks: keep.iter().map(|&i| self.masks[i].shallow_clone()).collect(),
            boxes: pick(&self.boxes, keep),
            iou: pick(&self.iou, keep),
            stability: pick(&self.stability, keep),
            points: pick(&self.points, keep),
            crop_boxes: pick(&self.crop_boxes, keep),
        }
    }

    fn extend(&mut self, other: Self) {
        self.masks.extend(other.masks);
        self.boxes.extend(other.boxes);
        self.iou.extend(other.iou);
        self.stability.extend(other.stability);
        self.points.extend(other.points);
        self.crop_boxes.extend(other.crop_boxes);
    }
}

/// Automatic mask generation over any [`PointPredictor`] (SAM 2's image predictor).
#[derive(Debug, Clone)]
pub struct AutomaticMaskGenerator {
    config: AmgConfig,
    grids: Vec<Vec<[f64; 2]>>,
}

impl AutomaticMaskGenerator {
    /// Checks `config` and builds the point grids.
    pub fn new(config: AmgConfig) -> Result<Self> {
        let grids = config.point_grids()?;
        Ok(Self { config, grids })
    }

    /// The settings.
    pub fn config(&self) -> &AmgConfig {
        &self.config
    }

    /// `generate`: every mask of a packed 8-bit RGB image, best first.
    pub fn generate<P: PointPredictor>(
        &self,
        predictor: &mut P,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<AmgMask>> {
        let _span = trace_span!("sam2_amg", width, height).entered();
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(config(format!("an RGB image of {width}×{height} needs {} bytes", width * height * 3)));
        }
        let (h, w) = (height as i64, width as i64);
        let crops = amg::generate_crop_boxes(h, w, self.config.crop_n_layers, self.config.crop_overlap_ratio);
        let mut data = MaskData::default();
        for crop in &crops {
            data.extend(self.process_crop(predictor, rgb, width, crop, (h, w))?);
        }
        if crops.len() > 1 {
            // Duplicates across crops: masks of smaller crops win.
            let scores: Vec<f32> =
                data.crop_boxes.iter().map(|c| 1.0 / ((c[2] - c[0]) * (c[3] - c[1])) as f32).collect();
            let keep = amg::nms(&data.boxes, &scores, self.config.crop_nms_thresh as f32);
            data = data.select(&keep);
        }
        let mut masks = Vec::with_capacity(data.masks.len());
        for (i, m) in data.masks.iter().enumerate() {
            let full = amg::uncrop_masks(&m.f_unsqueeze(0)?, data.crop_boxes[i], h, w)?.f_squeeze_dim(0)?;
            masks.push(full.f_to_device(Device::Cpu)?);
        }
        data.masks = masks;
        if self.config.min_mask_region_area > 0 {
            data =
                postprocess_small_regions(data, self.config.min_mask_region_area as f64, self.config.box_nms_thresh)?;
        }
        (0..data.masks.len())
            .map(|i| {
                let [x0, y0, x1, y1] = data.boxes[i];
                let c = data.crop_boxes[i];
                Ok(AmgMask {
                    area: data.masks[i].f_sum(Kind::Int64)?.int64_value(&[]),
                    segmentation: data.masks[i].shallow_clone(),
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    predicted_iou: data.iou[i],
                    point_coords: data.points[i],
                    stability_score: data.stability[i],
                    crop_box: [c[0], c[1], c[2] - c[0], c[3] - c[1]],
                })
            })
            .collect()
    }

    fn process_crop<P: PointPredictor>(
        &self,
        predictor: &mut P,
        rgb: &[u8],
        width: usize,
        crop: &amg::CropBox,
        orig_hw: (i64, i64),
    ) -> Result<MaskData> {
        let _span = trace_span!("sam2_amg_crop", layer = crop.layer).entered();
        let [x0, y0, x1, y1] = crop.xyxy;
        let (cw, ch) = ((x1 - x0) as usize, (y1 - y0) as usize);
        let mut cropped = Vec::with_capacity(cw * ch * 3);
        for row in y0 as usize..y1 as usize {
            let start = (row * width + x0 as usize) * 3;
            cropped.extend_from_slice(&rgb[start..start + cw * 3]);
        }
        predictor.set_image(&cropped, cw, ch)?;
        // Points in crop pixels: the grid scaled in f64, then stored as f32 (as the reference).
        let points: Vec<[f32; 2]> =
            self.grids[crop.layer].iter().map(|p| [(p[0] * cw as f64) as f32, (p[1] * ch as f64) as f32]).collect();
        let mut data = MaskData::default();
        for batch in points.chunks(self.config.points_per_batch) {
            data.extend(self.process_batch(predictor, batch, (ch as i64, cw as i64), crop.xyxy, orig_hw)?);
        }
        predictor.reset();
        let keep = amg::nms(&data.boxes, &data.iou, self.config.box_nms_thresh as f32);
        let mut data = data.select(&keep);
        let (dx, dy) = (x0 as f32, y0 as f32);
        for b in &mut data.boxes {
            *b = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
        }
        for p in &mut data.points {
            *p = [p[0] + dx, p[1] + dy];
        }
        Ok(data)
    }

    fn process_batch<P: PointPredictor>(
        &self,
        predictor: &P,
        points: &[[f32; 2]],
        crop_hw: (i64, i64),
        crop_box: [i64; 4],
        (orig_h, orig_w): (i64, i64),
    ) -> Result<MaskData> {
        let c = &self.config;
        let device = predictor.device();
        let n = points.len() as i64;
        let in_points = transform_coords(points, crop_hw, predictor.resolution(), device)?; // [n, 2]
        let labels = Tensor::f_ones([n, 1], (Kind::Int, device))?;
        let p = predictor.predict_points(&in_points.f_unsqueeze(1)?, &labels, None, c.multimask_output)?;
        let per_point = p.masks.size()[1];
        let mut masks = p.masks.f_flatten(0, 1)?; // [n·M, h, w]
        let mut iou = p.iou.f_flatten(0, 1)?; // [n·M]
        let mut point_rows: Vec<[f32; 2]> =
            points.iter().flat_map(|&q| std::iter::repeat_n(q, per_point as usize)).collect();
        if c.use_m2m {
            // One refinement step with each mask's own low-resolution logits as the prompt.
            let low_res = p.low_res_masks.f_flatten(0, 1)?; // [n·M, 256, 256]
            let all_points = transform_coords(&point_rows, crop_hw, predictor.resolution(), device)?;
            let (mut new_masks, mut new_iou) = (Vec::new(), Vec::new());
            let total = point_rows.len() as i64;
            let step = c.points_per_batch as i64;
            for start in (0..total).step_by(c.points_per_batch) {
                let len = step.min(total - start);
                let q = all_points.f_narrow(0, start, len)?.f_unsqueeze(1)?; // [b, 1, 2]
                let l = Tensor::f_ones([len, 1], (Kind::Int, device))?;
                let m = low_res.f_narrow(0, start, len)?.f_unsqueeze(1)?; // [b, 1, 256, 256]
                let r = predictor.predict_points(&q, &l, Some(&m), false)?;
                new_masks.push(r.masks);
                new_iou.push(r.iou);
            }
            masks = Tensor::f_cat(&new_masks, 0)?.f_squeeze_dim(1)?;
            iou = Tensor::f_cat(&new_iou, 0)?.f_squeeze_dim(1)?;
        }
        // Filtered as the reference does: by predicted IoU first, so that the stability score
        // is computed for the masks that passed it only.
        let mut idx = Tensor::f_arange(masks.size()[0], (Kind::Int64, device))?; // rows kept so far
        if c.pred_iou_thresh > 0.0 {
            let sel = iou.f_gt(c.pred_iou_thresh)?.f_nonzero()?.f_squeeze_dim(1)?;
            (masks, iou, idx) =
                (masks.f_index_select(0, &sel)?, iou.f_index_select(0, &sel)?, idx.f_index_select(0, &sel)?);
        }
        let mut stability = amg::calculate_stability_score(&masks, c.mask_threshold, c.stability_score_offset)?;
        if c.stability_score_thresh > 0.0 {
            let sel = stability.f_ge(c.stability_score_thresh)?.f_nonzero()?.f_squeeze_dim(1)?;
            (masks, iou, idx) =
                (masks.f_index_select(0, &sel)?, iou.f_index_select(0, &sel)?, idx.f_index_select(0, &sel)?);
            stability = stability.f_index_select(0, &sel)?;
        }
        let masks = masks.f_gt(c.mask_threshold)?; // [k, h, w] bool
        let iou: Vec<f32> = Vec::try_from(iou.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)?;
        let stability: Vec<f32> = Vec::try_from(stability.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)?;
        let rows: Vec<i64> = Vec::try_from(idx.f_to_device(Device::Cpu)?)?;
        point_rows = rows.iter().map(|&r| point_rows[r as usize]).collect();
        let boxes = amg::boxes_to_vec(&amg::batched_mask_to_box(&masks)?)?;
        let image = [0, 0, orig_w, orig_h];
        let kept: Vec<usize> =
            (0..boxes.len()).filter(|&i| !amg::is_box_near_crop_edge(boxes[i], crop_box, image)).collect();
        let n_kept = boxes.len();
        let data = MaskData {
            masks: (0..boxes.len()).map(|i| masks.get(i as i64)).collect(),
            boxes,
            iou,
            stability,
            points: point_rows,
            crop_boxes: vec![crop_box; n_kept],
        };
        Ok(data.select(&kept))
    }
}

/// `postprocess_small_regions`: removes small holes, then small islands, from every mask;
/// recomputes the boxes and drops new duplicates with NMS that prefers unchanged masks.
fn postprocess_small_regions(data: MaskData, min_area: f64, nms_thresh: f64) -> Result<MaskData> {
    if data.masks.is_empty() {
        return Ok(data);
    }
    let mut new_masks = Vec::with_capacity(data.masks.len());
    let mut scores = Vec::with_capacity(data.masks.len());
    for m in &data.masks {
        let size = m.size();
        let width = size[1] as usize;
        let flat: Vec<bool> = Vec::try_from(m.f_reshape([-1])?)?;
        let mut mask = flat;
        let holes = amg::remove_small_regions(&mut mask, width, min_area, RegionMode::Holes);
        let islands = amg::remove_small_regions(&mut mask, width, min_area, RegionMode::Islands);
        scores.push(if holes || islands { 0.0 } else { 1.0 });
        new_masks.push(Tensor::f_from_slice(&mask)?.f_view([size[0], size[1]])?);
    }
    let boxes = amg::boxes_to_vec(&amg::batched_mask_to_box(&Tensor::f_stack(&new_masks, 0)?)?)?;
    let keep = amg::nms(&boxes, &scores, nms_thresh as f32);
    let mut data = data;
    for &i in &keep {
        if scores[i] == 0.0 {
            data.masks[i] = new_masks[i].shallow_clone();
            data.boxes[i] = boxes[i];
        }
    }
    Ok(data.select(&keep))
}

/// `transform_coords(normalize=True)`: crop pixels to model-input pixels, in f32 as the
/// reference (`x / w · resolution`).
fn transform_coords(points: &[[f32; 2]], (h, w): (i64, i64), resolution: i64, device: Device) -> Result<Tensor> {
    let (w, h, r) = (w as f32, h as f32, resolution as f32);
    let flat: Vec<f32> = points.iter().flat_map(|p| [p[0] / w * r, p[1] / h * r]).collect();
    Ok(Tensor::f_from_slice(&flat)?.f_view([-1, 2])?.f_to_device(device)?)
}

fn config(message: String) -> PerceptionError {
    PerceptionError::Config { model: "sam2 automatic mask generator", message }
}
