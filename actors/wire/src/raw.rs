//! Ocellus raw frames: a fixed 56-byte little-endian header, then the pixels.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `OCFR` |
//! | 4..6 | version (1) |
//! | 6..8 | header length (56; a reader skips what it does not know) |
//! | 8 | pixel format: 0 RGB, 1 BGR, 2 GRAY8, 3 NV12 |
//! | 9 | flags: bit 0 = NV12 uses BT.709 (else BT.601) |
//! | 10..12 | reserved (0) |
//! | 12..20 | width, height (u32) |
//! | 20..28 | row stride of plane 0 and plane 1 (u32; plane 1: NV12's UV plane, else 0) |
//! | 28..36 | offset of plane 0 and plane 1 in the pixels (u32) |
//! | 36..40 | reserved (0) |
//! | 40..48 | sequence number (u64) |
//! | 48..56 | capture time, ns since the Unix epoch (i64) |
//!
//! The camera is not in the header: the key names it.

use crate::{CodecError, CodecResult, FrameLayout, MAX_DIMENSION, PixelFormat, YuvMatrix};
use bytes::Bytes;

/// `OCFR`.
pub const MAGIC: [u8; 4] = *b"OCFR";
/// The version this build writes and reads.
pub const VERSION: u16 = 1;
/// Length of the version-1 header.
pub const HEADER_LEN: usize = 56;
/// Largest row stride a decoder accepts.
pub const MAX_STRIDE: usize = 1 << 20;

/// What a raw frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// Layout of the pixels that follow.
    pub layout: FrameLayout,
    /// Sequence number.
    pub seq: u64,
    /// Capture time, ns since the epoch.
    pub capture_ns: i64,
}

fn format_code(format: PixelFormat) -> u8 {
    match format {
        PixelFormat::Rgb => 0,
        PixelFormat::Bgr => 1,
        PixelFormat::Gray8 => 2,
        PixelFormat::Nv12 => 3,
    }
}

fn u32_of(what: &str, v: usize) -> CodecResult<u32> {
    u32::try_from(v).map_err(|_| CodecError::Size(format!("{what} {v} does not fit in 32 bits")))
}

/// The header of a frame laid out as `l`, number `seq`, captured at `capture_ns`.
pub fn encode_header(l: &FrameLayout, seq: u64, capture_ns: i64) -> CodecResult<[u8; HEADER_LEN]> {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[8] = format_code(l.format);
    h[9] = u8::from(l.yuv_matrix == YuvMatrix::Bt709);
    let fields = [
        ("width", l.width, 12),
        ("height", l.height, 16),
        ("stride", l.strides[0], 20),
        ("stride", l.strides[1], 24),
        ("offset", l.offsets[0], 28),
        ("offset", l.offsets[1], 32),
    ];
    for (what, v, at) in fields {
        h[at..at + 4].copy_from_slice(&u32_of(what, v)?.to_le_bytes());
    }
    h[40..48].copy_from_slice(&seq.to_le_bytes());
    h[48..56].copy_from_slice(&capture_ns.to_le_bytes());
    Ok(h)
}

/// Header and pixels in one buffer (one copy of the pixels).
pub fn encode(layout: &FrameLayout, pixels: &[u8], seq: u64, capture_ns: i64) -> CodecResult<Vec<u8>> {
    let header = encode_header(layout, seq, capture_ns)?;
    let mut out = Vec::with_capacity(HEADER_LEN + pixels.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(pixels);
    Ok(out)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Checks `layout` against the decoders' limits, then against `len` bytes of pixels.
pub fn check_layout(layout: &FrameLayout, len: usize) -> CodecResult<()> {
    let max = MAX_DIMENSION as usize;
    if layout.width == 0 || layout.height == 0 || layout.width > max || layout.height > max {
        return Err(CodecError::Size(format!(
            "{}x{} is outside 1..={MAX_DIMENSION} pixels per side",
            layout.width, layout.height
        )));
    }
    if layout.strides.iter().any(|&s| s > MAX_STRIDE) || layout.offsets.iter().any(|&o| o > len) {
        return Err(CodecError::Size(format!(
            "strides {:?} or plane offsets {:?} are out of range for {len} bytes",
            layout.strides, layout.offsets
        )));
    }
    layout.validate(len).map_err(|e| CodecError::Size(e.to_string()))
}

/// Splits a raw frame into its header and its pixels (which share `payload`'s memory).
pub fn decode(payload: &Bytes) -> CodecResult<(RawHeader, Bytes)> {
    let b = payload.as_ref();
    if b.len() < 8 {
        return Err(CodecError::Truncated { what: "raw frame header", needed: HEADER_LEN, got: b.len() });
    }
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let header_len = usize::from(u16::from_le_bytes([b[6], b[7]]));
    if header_len < HEADER_LEN {
        return Err(CodecError::Size(format!("header length {header_len} is shorter than {HEADER_LEN}")));
    }
    if b.len() < header_len {
        return Err(CodecError::Truncated { what: "raw frame header", needed: header_len, got: b.len() });
    }
    let format = match b[8] {
        0 => PixelFormat::Rgb,
        1 => PixelFormat::Bgr,
        2 => PixelFormat::Gray8,
        3 => PixelFormat::Nv12,
        other => return Err(CodecError::PixelFormatCode(other)),
    };
    let field = |at: usize| read_u32(b, at) as usize;
    let layout = FrameLayout {
        format,
        width: field(12),
        height: field(16),
        strides: [field(20), field(24)],
        offsets: [field(28), field(32)],
        yuv_matrix: if b[9] & 1 == 1 { YuvMatrix::Bt709 } else { YuvMatrix::Bt601 },
    };
    let pixels = payload.slice(header_len..);
    check_layout(&layout, pixels.len())?;
    let header = RawHeader { layout, seq: read_u64(b, 40), capture_ns: read_u64(b, 48) as i64 };
    Ok((header, pixels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: PixelFormat, w: usize, h: usize) -> (FrameLayout, Bytes) {
        let layout = FrameLayout::packed(format, w, h);
        let pixels: Vec<u8> = (0..layout.required_len()).map(|i| (i * 7 % 256) as u8).collect();
        (layout, Bytes::from(pixels))
    }

    fn encode_frame((layout, pixels): &(FrameLayout, Bytes)) -> CodecResult<Vec<u8>> {
        encode(layout, pixels, 42, -5)
    }

    #[test]
    fn round_trip_every_format() {
        for format in [PixelFormat::Rgb, PixelFormat::Bgr, PixelFormat::Gray8, PixelFormat::Nv12] {
            let f = frame(format, 5, 3);
            let wire = Bytes::from(encode_frame(&f).expect("encode"));
            let (h, pixels) = decode(&wire).expect("decode");
            assert_eq!((h.layout, h.seq, h.capture_ns), (f.0, 42, -5));
            assert_eq!(pixels, f.1);
        }
    }

    #[test]
    fn rejects_what_does_not_fit() {
        let f = frame(PixelFormat::Rgb, 4, 4);
        let wire = encode_frame(&f).expect("encode");
        let short = Bytes::from(wire[..wire.len() - 1].to_vec());
        assert!(matches!(decode(&short), Err(CodecError::Size(_))));
        assert!(matches!(decode(&Bytes::from_static(b"OCFR")), Err(CodecError::Truncated { .. })));
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&Bytes::from(bad)), Err(CodecError::BadMagic(_))));
        let mut bad = wire.clone();
        bad[8] = 9;
        assert_eq!(decode(&Bytes::from(bad)), Err(CodecError::PixelFormatCode(9)));
        let mut bad = wire;
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&Bytes::from(bad)), Err(CodecError::Size(_))));
    }
}
