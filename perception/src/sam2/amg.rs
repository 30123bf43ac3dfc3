//! The helpers of automatic mask generation, exact to the official `sam2/utils/amg.py`
//! (sam2 1.1.0, itself segment-anything's): point grids, crop boxes, stability score, boxes of
//! masks, box NMS as torchvision's `batched_nms`, crop-edge filtering, and the removal of small
//! regions and holes that the reference does with OpenCV, here native.

use tch::{Device, Kind, Tensor};

use crate::{PerceptionError, Result};

/// Distance (pixels) within which a box side counts as touching a crop edge.
pub const CROP_EDGE_TOLERANCE: f32 = 20.0;

/// `build_point_grid`: `n × n` points evenly spaced in `[0, 1]²`, cell centres, row-major with
/// x varying fastest; computed in f64 as `np.linspace` does.
pub fn build_point_grid(n_per_side: usize) -> Vec<[f64; 2]> {
    let offset = 1.0 / (2 * n_per_side) as f64;
    let side = linspace(offset, 1.0 - offset, n_per_side);
    side.iter().flat_map(|&y| side.iter().map(move |&x| [x, y])).collect()
}

/// `np.linspace(start, stop, num)` (endpoint included), value for value.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut out: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = out.last_mut() {
        *last = stop;
    }
    out
}

/// `build_all_layer_point_grids`: one grid per crop layer, `n / scale^i` points a side.
pub fn build_all_layer_point_grids(n_per_side: usize, n_layers: usize, scale_per_layer: usize) -> Vec<Vec<[f64; 2]>> {
    (0..=n_layers)
        .map(|i| {
            let n = (n_per_side as f64 / (scale_per_layer as f64).powi(i as i32)) as usize;
            build_point_grid(n)
        })
        .collect()
}

/// A crop box `[x0, y0, x1, y1)` in image pixels, and the crop layer it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// `[x0, y0, x1, y1]`, exclusive upper corner.
    pub xyxy: [i64; 4],
    /// Crop layer (0: the whole image).
    pub layer: usize,
}

/// `generate_crop_boxes`: the whole image, then `(2^(i+1))²` overlapping crops for each layer
/// `i < n_layers`, in the reference's order (x0 outer, y0 inner).
pub fn generate_crop_boxes(height: i64, width: i64, n_layers: usize, overlap_ratio: f64) -> Vec<CropBox> {
    let mut boxes = vec![CropBox { xyxy: [0, 0, width, height], layer: 0 }];
    let short_side = height.min(width);
    let crop_len =
        |orig: i64, n: i64, overlap: i64| -> i64 { ((overlap * (n - 1) + orig) as f64 / n as f64).ceil() as i64 };
    for i_layer in 0..n_layers {
        let n = 1i64 << (i_layer + 1);
        let overlap = (overlap_ratio * short_side as f64 * (2.0 / n as f64)) as i64;
        let (crop_w, crop_h) = (crop_len(width, n, overlap), crop_len(height, n, overlap));
        for i in 0..n {
            for j in 0..n {
                let (x0, y0) = ((crop_w - overlap) * i, (crop_h - overlap) * j);
                boxes.push(CropBox {
                    xyxy: [x0, y0, (x0 + crop_w).min(width), (y0 + crop_h).min(height)],
                    layer: i_layer + 1,
                });
            }
        }
    }
    boxes
}

/// `calculate_stability_score`: IoU of the masks thresholded at `threshold ± offset`, for
/// logits `[N, H, W]`; `[N]` float. Counts are summed as the reference does (int16 rows, int32
/// totals), so the ratio is the same float.
pub fn calculate_stability_score(masks: &Tensor, mask_threshold: f64, offset: f64) -> Result<Tensor> {
    let count = |t: f64| -> Result<Tensor> {
        Ok(masks.f_gt(t)?.f_sum_dim_intlist(-1, false, Kind::Int16)?.f_sum_dim_intlist(-1, false, Kind::Int)?)
    };
    Ok(count(mask_threshold + offset)?.f_div(&count(mask_threshold - offset)?)?)
}

/// `batched_mask_to_box`: `[x0, y0, x1, y1]` (inclusive, int64) of boolean masks `[N, H, W]`;
/// `[0, 0, 0, 0]` for an empty mask.
pub fn batched_mask_to_box(masks: &Tensor) -> Result<Tensor> {
    let size = masks.size();
    let (n, h, w) = match size[..] {
        [n, h, w] => (n, h, w),
        _ => return Err(config(format!("masks must be [N, H, W], got {size:?}"))),
    };
    let device = masks.device();
    if n == 0 || h == 0 || w == 0 {
        return Ok(Tensor::f_zeros([n, 4], (Kind::Int64, device))?);
    }
    let edges = |dim: i64, len: i64| -> Result<(Tensor, Tensor)> {
        let (present, _) = masks.f_max_dim(dim, false)?; // [N, len] bool
        let coords = Tensor::f_arange(len, (Kind::Int64, device))?.f_unsqueeze(0)?;
        let at = present.f_mul(&coords)?; // bool · int64 -> int64
        let (high, _) = at.f_max_dim(-1, false)?;
        let (low, _) = at.f_add(&present.f_logical_not()?.f_mul_scalar(len)?)?.f_min_dim(-1, false)?;
        Ok((low, high))
    };
    let (top, bottom) = edges(-1, h)?;
    let (left, right) = edges(-2, w)?;
    let empty = right.f_lt_tensor(&left)?.f_logical_or(&bottom.f_lt_tensor(&top)?)?;
    let out = Tensor::f_stack(&[left, top, right, bottom], -1)?; // [N, 4]
    Ok(out.f_mul(&empty.f_logical_not()?.f_unsqueeze(-1)?)?)
}

/// `is_box_near_crop_edge` for one box `[x0, y0, x1, y1]` in crop coordinates: a side within
/// [`CROP_EDGE_TOLERANCE`] of the crop's edge but not of the image's.
pub fn is_box_near_crop_edge(b: [f32; 4], crop: [i64; 4], image: [i64; 4]) -> bool {
    let shifted = [b[0] + crop[0] as f32, b[1] + crop[1] as f32, b[2] + crop[0] as f32, b[3] + crop[1] as f32];
    (0..4).any(|i| {
        let near_crop = (shifted[i] - crop[i] as f32).abs() <= CROP_EDGE_TOLERANCE;
        let near_image = (shifted[i] - image[i] as f32).abs() <= CROP_EDGE_TOLERANCE;
        near_crop && !near_image
    })
}

/// torchvision's `nms` (and `batched_nms` with one category): indices of the kept boxes in
/// decreasing score order (a stable sort, so ties keep their input order); a box is dropped
/// when its IoU with a kept one is above `iou_threshold`. Float arithmetic as the CPU kernel.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let areas: Vec<f32> = boxes.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = boxes[i];
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            if inter / (areas[i] + areas[j] - inter) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Which kind of small region [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Background components (8-connected) smaller than the area become foreground.
    Holes,
    /// Foreground components smaller than the area become background (the largest is kept
    /// when all are small).
    Islands,
}

/// `remove_small_regions` (OpenCV's `connectedComponentsWithStats`, 8-connectivity, in the
/// reference): `mask` is row-major `height × width`; returns whether anything changed.
pub fn remove_small_regions(mask: &mut [bool], width: usize, area_thresh: f64, mode: RegionMode) -> bool {
    let holes = mode == RegionMode::Holes;
    // The working image: foreground of the regions looked at.
    let working: Vec<bool> = mask.iter().map(|&m| m != holes).collect();
    let (labels, sizes) = label_components(&working, width);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_thresh).collect();
    if !small.iter().any(|&s| s) {
        return false;
    }
    let fill: Vec<bool> = if holes {
        // Label 0 (the mask itself) and the small holes.
        small
    } else {
        let mut keep: Vec<bool> = small.iter().map(|&s| !s).collect();
        if !keep.iter().any(|&k| k) {
            // Every region is small: keep the largest (the first of equals, as argmax).
            let largest = (0..sizes.len()).fold(0, |best, i| if sizes[i] > sizes[best] { i } else { best });
            keep[largest] = true;
        }
        keep
    };
    for (m, &label) in mask.iter_mut().zip(&labels) {
        *m = match label {
            0 => holes,
            l => fill[l as usize - 1],
        };
    }
    true
}

/// 8-connected components of `fg`: a label per pixel (0 background, components numbered from
/// 1 in raster order of their first pixel) and the size of each component.
fn label_components(fg: &[bool], width: usize) -> (Vec<u32>, Vec<usize>) {
    let height = fg.len().checked_div(width).unwrap_or(0);
    let mut labels = vec![0u32; fg.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..fg.len() {
        if !fg[start] || labels[start] != 0 {
            continue;
        }
        sizes.push(0usize);
        let label = sizes.len() as u32;
        labels[start] = label;
        stack.push(start);
        while let Some(p) = stack.pop() {
            sizes[label as usize - 1] += 1;
            let (y, x) = (p / width, p % width);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if (dy, dx) == (0, 0) || ny < 0 || nx < 0 || ny >= height as i64 || nx >= width as i64 {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if fg[q] && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
    }
    (labels, sizes)
}

/// `uncrop_masks`: pads crop masks `[N, h, w]` with zeros to the image `[N, H, W]`.
pub fn uncrop_masks(masks: &Tensor, crop: [i64; 4], height: i64, width: i64) -> Result<Tensor> {
    let [x0, y0, x1, y1] = crop;
    if x0 == 0 && y0 == 0 && x1 == width && y1 == height {
        return Ok(masks.shallow_clone());
    }
    let (pad_x, pad_y) = (width - (x1 - x0), height - (y1 - y0));
    Ok(masks.f_constant_pad_nd([x0, pad_x - x0, y0, pad_y - y0])?)
}

/// Boxes `[N, 4]` (any kind) as float rows, on the host.
pub fn boxes_to_vec(boxes: &Tensor) -> Result<Vec<[f32; 4]>> {
    let flat: Vec<f32> = Vec::try_from(boxes.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_reshape([-1])?)?;
    Ok(flat.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

fn config(message: String) -> PerceptionError {
    PerceptionError::Config { model: "sam2 automatic mask generator", message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_cell_centres() {
        let g = build_point_grid(4);
        assert_eq!(g.len(), 16);
        assert_eq!(g[0], [0.125, 0.125]);
        assert_eq!(g[1], [0.375, 0.125]);
        assert_eq!(g[15], [0.875, 0.875]);
        let layers = build_all_layer_point_grids(32, 2, 2);
        assert_eq!(layers.iter().map(Vec::len).collect::<Vec<_>>(), [1024, 256, 64]);
    }

    #[test]
    fn crop_boxes_cover_the_image_with_overlap() {
        let boxes = generate_crop_boxes(480, 640, 1, 512.0 / 1500.0);
        assert_eq!(boxes.len(), 5);
        assert_eq!(boxes[0].xyxy, [0, 0, 640, 480]);
        // overlap = int(0.3413 · 480 · 1) = 163; crop 402 × 322; x0 outer, y0 inner.
        assert_eq!(boxes[1].xyxy, [0, 0, 402, 322]);
        assert_eq!(boxes[2].xyxy, [0, 159, 402, 480]);
        assert_eq!(boxes[3].xyxy, [239, 0, 640, 322]);
    }

    #[test]
    fn boxes_of_masks_are_inclusive_and_empty_is_zero() {
        let m = Tensor::zeros([2, 5, 6], (Kind::Bool, Device::Cpu));
        let _ = m.get(0).narrow(0, 1, 3).narrow(1, 2, 2).fill_(1);
        let b = boxes_to_vec(&batched_mask_to_box(&m).unwrap()).unwrap();
        assert_eq!(b, [[2.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_and_ties_in_order() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]];
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.5, 0.5], 0.7), [1, 2]);
        assert_eq!(nms(&boxes, &[0.5, 0.5, 0.5, 0.5], 0.7), [0, 2]);
        assert_eq!(nms(&boxes, &[0.5, 0.5, 0.5, 0.5], 1.0), [0, 1, 2, 3]);
    }

    #[test]
    fn small_islands_and_holes_are_removed() {
        // 6 × 6: a 3 × 3 block with a one-pixel hole, and a lone pixel in a corner (not
        // touching the block, even diagonally).
        let mut mask = vec![false; 36];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 6 + x] = true;
            }
        }
        mask[2 * 6 + 2] = false;
        mask[35] = true;
        let mut holes = mask.clone();
        assert!(remove_small_regions(&mut holes, 6, 2.0, RegionMode::Holes));
        assert!(holes[2 * 6 + 2] && holes[35]);
        let mut islands = holes.clone();
        assert!(remove_small_regions(&mut islands, 6, 2.0, RegionMode::Islands));
        assert!(!islands[35] && islands[2 * 6 + 2]);
        assert!(!remove_small_regions(&mut islands, 6, 2.0, RegionMode::Islands), "nothing left to remove");
        // Every island small: the largest stays.
        let mut all_small = vec![false; 36];
        all_small[0] = true;
        all_small[10] = true;
        all_small[11] = true;
        assert!(remove_small_regions(&mut all_small, 6, 5.0, RegionMode::Islands));
        assert_eq!(all_small.iter().filter(|&&m| m).count(), 2);
        assert!(all_small[10] && all_small[11]);
    }
}
