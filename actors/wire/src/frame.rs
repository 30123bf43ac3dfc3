//! Where the pixels of a frame are in its buffer: pixel formats, strides, plane offsets.
//!
//! Camera buffers are rarely tightly packed: GStreamer pads RGB rows to a multiple of four
//! bytes and NV12 planes to the decoder's alignment. A [`FrameLayout`] carries a stride and an
//! offset per plane; every consumer (codecs, preprocessing) reads rows through it.

/// Largest value of an 8-bit sample, as a float.
const U8_MAX: f64 = 255.0;

/// Why a buffer does not hold the layout it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The pixel buffer is shorter than its layout requires.
    #[error("frame buffer too short: {format:?} {width}x{height} needs {needed} bytes, got {got}")]
    ShortBuffer {
        /// Pixel format of the frame.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Bytes the layout requires.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The layout itself is inconsistent (zero size, stride smaller than a row, ...).
    #[error("invalid frame layout: {0}")]
    Invalid(String),
}

/// Pixel formats a [`FrameLayout`] can describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb,
    /// Packed 8-bit B, G, R.
    Bgr,
    /// 8-bit luma only.
    Gray8,
    /// Planar luma plus interleaved, 2×2-subsampled U/V (two planes).
    Nv12,
}

impl PixelFormat {
    /// Bytes per pixel of the first plane.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb | Self::Bgr => 3,
            Self::Gray8 | Self::Nv12 => 1,
        }
    }

    /// Number of planes.
    pub fn planes(self) -> usize {
        match self {
            Self::Nv12 => 2,
            _ => 1,
        }
    }

    /// Visible bytes of one row of `plane` for a frame `width` pixels wide.
    pub fn row_bytes(self, plane: usize, width: usize) -> usize {
        match (self, plane) {
            // U and V interleaved at half horizontal resolution, rounded up.
            (Self::Nv12, 1) => width.div_ceil(2) * 2,
            _ => width * self.bytes_per_pixel(),
        }
    }

    /// Number of rows of `plane` for a frame `height` pixels high.
    pub fn plane_rows(self, plane: usize, height: usize) -> usize {
        match (self, plane) {
            (Self::Nv12, 1) => height.div_ceil(2),
            _ => height,
        }
    }
}

/// YUV → RGB matrix for NV12 frames (limited range, as GStreamer's `videoconvert` uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YuvMatrix {
    /// ITU-R BT.601 (SD and GStreamer's default for small frames).
    #[default]
    Bt601,
    /// ITU-R BT.709 (HD).
    Bt709,
}

impl YuvMatrix {
    /// `(r_v, g_u, g_v, b_u)` coefficients applied to centred chroma.
    pub fn coefficients(self) -> (f64, f64, f64, f64) {
        match self {
            Self::Bt601 => (1.596_027, -0.391_762, -0.812_968, 2.017_232),
            Self::Bt709 => (1.792_741, -0.213_249, -0.532_909, 2.112_402),
        }
    }
}

/// Where the pixels of a frame are inside its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next, per plane (unused planes are 0).
    pub strides: [usize; 2],
    /// Byte offset of each plane in the buffer (unused planes are 0).
    pub offsets: [usize; 2],
    /// Matrix for NV12; ignored by the other formats.
    pub yuv_matrix: YuvMatrix,
}

impl FrameLayout {
    /// A tightly packed layout (stride = visible row bytes, planes back to back).
    pub fn packed(format: PixelFormat, width: usize, height: usize) -> Self {
        let stride0 = format.row_bytes(0, width);
        let (stride1, offset1) =
            if format.planes() == 2 { (format.row_bytes(1, width), stride0 * height) } else { (0, 0) };
        Self {
            format,
            width,
            height,
            strides: [stride0, stride1],
            offsets: [0, offset1],
            yuv_matrix: YuvMatrix::default(),
        }
    }

    /// Bytes a buffer needs to hold this layout (the last row of a plane needs no padding).
    pub fn required_len(&self) -> usize {
        (0..self.format.planes())
            .map(|p| {
                let rows = self.format.plane_rows(p, self.height);
                self.offsets[p] + self.strides[p] * rows.saturating_sub(1) + self.format.row_bytes(p, self.width)
            })
            .max()
            .unwrap_or(0)
    }

    /// Checks that the layout is self-consistent and fits in `len` bytes.
    pub fn validate(&self, len: usize) -> Result<(), LayoutError> {
        if self.width == 0 || self.height == 0 {
            return Err(LayoutError::Invalid(format!("empty frame {}x{}", self.width, self.height)));
        }
        for p in 0..self.format.planes() {
            let row = self.format.row_bytes(p, self.width);
            if self.strides[p] < row {
                return Err(LayoutError::Invalid(format!(
                    "plane {p} stride {} is smaller than its {row} visible bytes",
                    self.strides[p]
                )));
            }
        }
        let needed = self.required_len();
        if len < needed {
            return Err(LayoutError::ShortBuffer {
                format: self.format,
                width: self.width,
                height: self.height,
                needed,
                got: len,
            });
        }
        Ok(())
    }

    /// Copies the visible pixels of each plane into one tightly packed buffer.
    pub fn pack(&self, data: &[u8]) -> Result<Vec<u8>, LayoutError> {
        self.validate(data.len())?;
        let packed = Self::packed(self.format, self.width, self.height);
        let mut out = Vec::with_capacity(packed.required_len());
        for p in 0..self.format.planes() {
            let row = self.format.row_bytes(p, self.width);
            for r in 0..self.format.plane_rows(p, self.height) {
                let start = self.offsets[p] + r * self.strides[p];
                out.extend_from_slice(
                    data.get(start..start + row)
                        .ok_or_else(|| LayoutError::Invalid(format!("plane {p} row {r} outside the buffer")))?,
                );
            }
        }
        Ok(out)
    }

    /// The frame as packed 8-bit RGB on the host (`height` rows of `3 · width` bytes): BGR
    /// swapped, gray replicated (as Pillow's `convert("RGB")`), NV12 converted with
    /// [`YuvMatrix`] and rounded to the nearest level.
    pub fn to_rgb8(&self, data: &[u8]) -> Result<Vec<u8>, LayoutError> {
        let packed = self.pack(data)?;
        let n = self.width * self.height;
        Ok(match self.format {
            PixelFormat::Rgb => packed,
            PixelFormat::Bgr => packed.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect(),
            PixelFormat::Gray8 => packed.iter().flat_map(|&g| [g, g, g]).collect(),
            PixelFormat::Nv12 => {
                let (luma, chroma) = packed.split_at(n);
                let chroma_row = self.format.row_bytes(1, self.width);
                let (r_v, g_u, g_v, b_u) = self.yuv_matrix.coefficients();
                let mut out = Vec::with_capacity(3 * n);
                for (i, &y) in luma.iter().enumerate() {
                    let (row, col) = (i / self.width, i % self.width);
                    let at = (row / 2) * chroma_row + (col / 2) * 2;
                    let (u, v) = (f64::from(chroma[at]) - 128.0, f64::from(chroma[at + 1]) - 128.0);
                    let l = (f64::from(y) - 16.0) * 255.0 / 219.0;
                    let level = |x: f64| x.clamp(0.0, U8_MAX).round() as u8;
                    out.extend([level(l + r_v * v), level(l + g_u * u + g_v * v), level(l + b_u * u)]);
                }
                out
            }
        })
    }
}
