//! Affine warps bit-exact to OpenCV's `cv2.warpAffine(..., flags=cv2.INTER_LINEAR)` on 8-bit
//! images with a zero constant border, and `cv2.getAffineTransform` (what PHALP and HMR 2.0
//! cut person crops with). OpenCV inverts the matrix in doubles, steps the source coordinate
//! in fixed point (10 fractional bits, rounded to 1/32 of a pixel), and blends the four
//! neighbours with 15-bit integer weights from a table whose rows sum to exactly 2^15;
//! neighbours outside the image count as 0.

/// Fractional bits of the source coordinates while stepping along a row.
const AB_BITS: i32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
/// Sub-pixel positions per axis: 1/32 pixel.
const INTER_BITS: i32 = 5;
const INTER_TAB_SIZE: i64 = 1 << INTER_BITS;
/// Fixed-point bits of the interpolation weights.
const COEF_BITS: i32 = 15;
const COEF_SCALE: i64 = 1 << COEF_BITS;

/// `cvRound`: to the nearest integer, ties to even (the FPU's default mode).
fn cv_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// The 2×3 matrix (row-major) mapping the three `src` points to the three `dst` points, as
/// `cv2.getAffineTransform` solves it (a 6×6 system, Gaussian elimination with partial
/// pivoting, in doubles).
pub fn affine_from_points(src: [[f32; 2]; 3], dst: [[f32; 2]; 3]) -> Option<[f64; 6]> {
    // Unknowns (m00, m01, m02, m10, m11, m12); rows i and i + 3 for point i.
    let mut a = [[0.0f64; 6]; 6];
    let mut b = [0.0f64; 6];
    for i in 0..3 {
        let (x, y) = (f64::from(src[i][0]), f64::from(src[i][1]));
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0];
        a[i + 3] = [0.0, 0.0, 0.0, x, y, 1.0];
        b[i] = f64::from(dst[i][0]);
        b[i + 3] = f64::from(dst[i][1]);
    }
    solve_lu(&mut a, &mut b)?;
    Some(b)
}

/// OpenCV's `LUImpl` on a 6×6 system: forward elimination with partial pivoting, then back
/// substitution; the solution is left in `b`.
fn solve_lu(a: &mut [[f64; 6]; 6], b: &mut [f64; 6]) -> Option<()> {
    const N: usize = 6;
    const EPS: f64 = f64::EPSILON * 100.0;
    for i in 0..N {
        let mut k = i;
        for j in i + 1..N {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        if a[k][i].abs() < EPS {
            return None;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        for j in i + 1..N {
            let alpha = a[j][i] * d;
            let (above, below) = a.split_at_mut(j);
            for (r, p) in below[0][i + 1..].iter_mut().zip(&above[i][i + 1..]) {
                *r += alpha * p;
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..N).rev() {
        let mut s = b[i];
        for k in i + 1..N {
            s -= a[i][k] * b[k];
        }
        b[i] = s / a[i][i];
    }
    Some(())
}

/// The bilinear weights of each of the 32×32 sub-pixel positions, scaled to 2^15 and
/// corrected so that each row sums to exactly 2^15 (OpenCV's `initInterTab2D`).
fn bilinear_table() -> Vec<[i64; 4]> {
    let n = INTER_TAB_SIZE as usize;
    let mut table = Vec::with_capacity(n * n);
    for i in 0..n {
        let fy = i as f64 / n as f64;
        for j in 0..n {
            let fx = j as f64 / n as f64;
            let w = [(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx];
            let mut iw = w.map(|v| cv_round(v * COEF_SCALE as f64));
            let diff = COEF_SCALE - iw.iter().sum::<i64>();
            if diff != 0 {
                // The largest weight absorbs a deficit's excess, the smallest a surplus.
                let pick = if diff < 0 {
                    (0..4).max_by_key(|&k| (iw[k], std::cmp::Reverse(k)))
                } else {
                    (0..4).min_by_key(|&k| (iw[k], k))
                };
                if let Some(k) = pick {
                    iw[k] += diff;
                }
            }
            table.push(iw);
        }
    }
    table
}

/// `cv2.warpAffine(src, m, (dst_w, dst_h), flags=cv2.INTER_LINEAR)` (constant border 0) of a
/// packed 8-bit image of `channels` channels; `m` maps source to destination (row-major 2×3).
pub fn warp_affine_linear(
    src: &[u8],
    (w, h, channels): (usize, usize, usize),
    m: &[f64; 6],
    (dst_w, dst_h): (usize, usize),
) -> Vec<u8> {
    // The inverse map (destination → source), as OpenCV inverts it.
    let mut m = *m;
    let det = m[0] * m[4] - m[1] * m[3];
    let d = if det != 0.0 { 1.0 / det } else { 0.0 };
    let (a11, a22) = (m[4] * d, m[0] * d);
    m[0] = a11;
    m[1] *= -d;
    m[3] *= -d;
    m[4] = a22;
    let (b1, b2) = (-m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]);
    m[2] = b1;
    m[5] = b2;

    let table = bilinear_table();
    let round_delta = (AB_SCALE as i64) / INTER_TAB_SIZE / 2;
    let adelta: Vec<i64> = (0..dst_w).map(|x| cv_round(m[0] * x as f64 * AB_SCALE)).collect();
    let bdelta: Vec<i64> = (0..dst_w).map(|x| cv_round(m[3] * x as f64 * AB_SCALE)).collect();
    let mut out = vec![0u8; dst_w * dst_h * channels];
    let shift = AB_BITS - INTER_BITS;
    let mask = INTER_TAB_SIZE - 1;
    for y in 0..dst_h {
        let x0 = cv_round((m[1] * y as f64 + m[2]) * AB_SCALE) + round_delta;
        let y0 = cv_round((m[4] * y as f64 + m[5]) * AB_SCALE) + round_delta;
        for x in 0..dst_w {
            let sx_fixed = (x0 + adelta[x]) >> shift;
            let sy_fixed = (y0 + bdelta[x]) >> shift;
            let (sx, sy) = (sx_fixed >> INTER_BITS, sy_fixed >> INTER_BITS);
            let weights = &table[((sy_fixed & mask) * INTER_TAB_SIZE + (sx_fixed & mask)) as usize];
            let at = (y * dst_w + x) * channels;
            for c in 0..channels {
                let mut acc = 0i64;
                for (k, (dy, dx)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let (yy, xx) = (sy + dy, sx + dx);
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        acc += weights[k] * i64::from(src[(yy as usize * w + xx as usize) * channels + c]);
                    }
                }
                out[at + c] = ((acc + (1 << (COEF_BITS - 1))) >> COEF_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_sum_to_one() {
        assert!(bilinear_table().iter().all(|w| w.iter().sum::<i64>() == COEF_SCALE));
    }

    #[test]
    fn identity_and_shift() {
        let src: Vec<u8> = (0..4 * 3 * 2).map(|v| v as u8 * 7).collect(); // 4×3, 2 channels
        let id =
            affine_from_points([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).unwrap();
        assert_eq!(warp_affine_linear(&src, (4, 3, 2), &id, (4, 3)), src);
        // One pixel right: the first column is the zero border.
        let right = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let out = warp_affine_linear(&src, (4, 3, 2), &right, (4, 3));
        assert_eq!(&out[0..2], &[0, 0]);
        assert_eq!(&out[2..4], &src[0..2]);
    }
}
