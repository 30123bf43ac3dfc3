//! Window partitioning of `[B, H, W, C]` maps (SAM 2 `backbones/utils.py`).

use tch::Tensor;

use crate::Result;

/// Splits `[B, H, W, C]` into `[B * nW, ws, ws, C]` windows, zero-padding the bottom and right
/// to a multiple of `ws`; returns the padded size too.
pub fn partition(x: &Tensor, ws: i64) -> Result<(Tensor, (i64, i64))> {
    let (b, h, w, c) = x.size4()?;
    let pad_h = (ws - h % ws) % ws;
    let pad_w = (ws - w % ws) % ws;
    let x = if pad_h > 0 || pad_w > 0 { x.f_constant_pad_nd([0, 0, 0, pad_w, 0, pad_h])? } else { x.shallow_clone() };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .f_view([b, hp / ws, ws, wp / ws, ws, c])? // [B, nH, ws, nW, ws, C]
        .f_permute([0, 1, 3, 2, 4, 5])? // [B, nH, nW, ws, ws, C]
        .f_reshape([-1, ws, ws, c])?;
    Ok((windows, (hp, wp)))
}

/// Inverse of [`partition`]: `[B * nW, ws, ws, C]` → `[B, H, W, C]`, padding removed.
pub fn unpartition(windows: &Tensor, ws: i64, (hp, wp): (i64, i64), (h, w): (i64, i64)) -> Result<Tensor> {
    let b = windows.size()[0] / (hp * wp / ws / ws);
    let x = windows
        .f_reshape([b, hp / ws, wp / ws, ws, ws, -1])? // [B, nH, nW, ws, ws, C]
        .f_permute([0, 1, 3, 2, 4, 5])? // [B, nH, ws, nW, ws, C]
        .f_reshape([b, hp, wp, -1])?;
    if hp > h || wp > w { Ok(x.f_slice(1, 0, h, 1)?.f_slice(2, 0, w, 1)?) } else { Ok(x) }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    #[test]
    fn partition_round_trips_with_padding() {
        let x = Tensor::randn([2, 10, 13, 3], (Kind::Float, Device::Cpu));
        let (win, padded) = partition(&x, 4).unwrap();
        assert_eq!(padded, (12, 16));
        assert_eq!(win.size(), [2 * 3 * 4, 4, 4, 3]);
        let back = unpartition(&win, 4, padded, (10, 13)).unwrap();
        assert!(back.equal(&x));
    }
}
