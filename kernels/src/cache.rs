//! Tensors derived from a size alone (position encodings, rotary tables), computed once.

use std::sync::{Mutex, PoisonError};

use tch::{Device, Kind, Tensor};

/// `(h, w, dtype, device)` of a cached tensor.
type SizeKey = (i64, i64, Kind, Device);

/// A small cache of tensors keyed by size, dtype and device.
#[derive(Debug, Default)]
pub struct SizeCache(Mutex<Vec<(SizeKey, Tensor)>>);

impl SizeCache {
    /// The tensor for `(h, w)` in `kind` on `device`, made by `make` the first time.
    pub fn get_or_insert<E>(
        &self,
        h: i64,
        w: i64,
        kind: Kind,
        device: Device,
        make: impl FnOnce() -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let key = (h, w, kind, device);
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(t.shallow_clone());
        }
        let t = make()?;
        cache.push((key, t.shallow_clone()));
        Ok(t)
    }

    /// Forgets everything (after the weights a tensor was derived from change).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}
