//! Where a person is in the camera's frame, from HMR 2.0's crop camera, as PHALP places it
//! (`phalp/models/hmar/hmar.py`, `get_3d_parameters`; `phalp/trackers/PHALP.py`): the frame is
//! padded to a centred square and scaled to the 256-px render resolution; the crop's box
//! centre and side are measured there; the weak-perspective camera `(s, tx, ty)` becomes a
//! translation with focal length 5000 whose depth follows the box's size and whose x, y follow
//! the box's place.

use nalgebra::{Vector2, Vector3};

/// Added to the scale before dividing by it (the reference's).
const SCALE_EPS: f64 = 1e-9;

/// PHALP's camera: focal length and render resolution (`EXTRA.FOCAL_LENGTH`, `render.res`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameCamera {
    /// Focal length, pixels of the render resolution.
    pub focal_length: f64,
    /// Side of the square the frame is padded and scaled to.
    pub resolution: f64,
}

impl Default for FrameCamera {
    fn default() -> Self {
        Self { focal_length: 5000.0, resolution: 256.0 }
    }
}

/// A person box in frame pixels: its centre and its longer side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxInFrame {
    /// Centre `(x, y)`, frame pixels.
    pub center: Vector2<f64>,
    /// The longer side, frame pixels.
    pub side: f64,
}

impl FrameCamera {
    /// The box's centre and side in the padded, scaled square of a `width × height` frame
    /// (the square is `max(width, height)` with the frame centred, integer offsets).
    pub fn to_render(&self, b: BoxInFrame, width: u32, height: u32) -> (Vector2<f64>, f64) {
        let side = width.max(height);
        let (left, top) = ((side - width) / 2, (side - height) / 2);
        let ratio = self.resolution / f64::from(side);
        ((b.center + Vector2::new(f64::from(left), f64::from(top))) * ratio, b.side * ratio)
    }

    /// The translation of the person (camera frame, metres) from the crop camera
    /// `(s, tx, ty)` and the box's centre and side in render pixels: `tz = 2 f / (s · scale)`,
    /// `txy += (centre − S/2) · tz / f`.
    pub fn translation(&self, cam: Vector3<f64>, center: Vector2<f64>, scale: f64) -> Vector3<f64> {
        let tz = 2.0 * self.focal_length / (cam.x * scale + SCALE_EPS);
        let shift = (center - Vector2::repeat(self.resolution / 2.0)) * tz / self.focal_length;
        Vector3::new(cam.y + shift.x, cam.z + shift.y, tz)
    }

    /// A 3-D point seen at `t` projected to render pixels: `((f / S) · P_xy / P_z + 1/2) · S`.
    pub fn project(&self, point: Vector3<f64>, t: Vector3<f64>) -> Vector2<f64> {
        let p = point + t;
        let f = self.focal_length / self.resolution;
        (Vector2::new(p.x, p.y) / p.z * f + Vector2::repeat(0.5)) * self.resolution
    }

    /// [`FrameCamera::project`] back in frame pixels of a `width × height` frame.
    pub fn to_frame(&self, render: Vector2<f64>, width: u32, height: u32) -> Vector2<f64> {
        let side = width.max(height);
        let (left, top) = ((side - width) / 2, (side - height) / 2);
        render * (f64::from(side) / self.resolution) - Vector2::new(f64::from(left), f64::from(top))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_padded_to_a_centred_square() {
        let c = FrameCamera::default();
        // 640×480: a 640 square, the frame 80 px down; ratio 256 / 640 = 0.4.
        let (center, scale) = c.to_render(BoxInFrame { center: Vector2::new(320.0, 240.0), side: 100.0 }, 640, 480);
        assert!((center - Vector2::new(128.0, 128.0)).norm() < 1e-12 && (scale - 40.0).abs() < 1e-12);
        // Back to frame pixels.
        let back = c.to_frame(Vector2::new(128.0, 128.0), 640, 480);
        assert!((back - Vector2::new(320.0, 240.0)).norm() < 1e-12);
        // A person at the centre of the render stays on the optical axis.
        let t = c.translation(Vector3::new(1.0, 0.0, 0.0), Vector2::new(128.0, 128.0), 256.0);
        assert!((t - Vector3::new(0.0, 0.0, 2.0 * 5000.0 / 256.0)).norm() < 1e-6);
    }
}
