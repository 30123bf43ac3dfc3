//! NumPy arrays out of Python pickles, without Python: the SMPL model files (`SMPL_NEUTRAL.pkl`,
//! a Python 2 pickle of a dict whose blend shapes are chumpy arrays and whose joint regressor
//! is a SciPy sparse matrix) and HMR 2.0's `SMPL_to_J19.pkl`.
//!
//! `serde-pickle` reads the pickle without running anything: an object of any class becomes
//! the state it was pickled with. A NumPy array's state is `(version, shape, dtype,
//! is_fortran, raw bytes)`; its element type does not survive that reading, so the caller
//! says whether it expects floats or integers and the width comes from the byte count
//! (little-endian, as NumPy writes on every platform Ocellus runs on). A chumpy array is its
//! `x`; a SciPy CSC or CSR matrix (`data`, `indices`, `indptr`, `_shape`) is made dense.

use std::collections::BTreeMap;
use std::path::Path;

use serde_pickle::{HashableValue, Value};
use tch::{Kind, Tensor};

use crate::{PerceptionError, Result};

/// What elements an array is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elements {
    /// `float64` or `float32` → f32.
    Float,
    /// Unsigned or non-negative integers (`uint32`, `int64`, ...) → i64.
    Integer,
}

fn error(path: &Path, message: String) -> PerceptionError {
    PerceptionError::Weights { path: path.to_path_buf(), message }
}

/// Reads the pickle at `path` (objects of any class as their state; nothing runs).
pub fn read(path: &Path) -> Result<Value> {
    let file = std::fs::File::open(path).map_err(|e| error(path, e.to_string()))?;
    let options = serde_pickle::DeOptions::new().keep_restore_state().replace_unresolved_globals();
    serde_pickle::value_from_reader(std::io::BufReader::new(file), options)
        .map_err(|e| error(path, format!("not a readable pickle: {e}")))
}

/// The entries of a pickled dict by name (Python 2 `str` keys are bytes).
pub fn dict(path: &Path, value: &Value) -> Result<BTreeMap<String, Value>> {
    let Value::Dict(d) = value else { return Err(error(path, "expected a dict of arrays".into())) };
    Ok(d.iter()
        .filter_map(|(k, v)| {
            let key = match k {
                HashableValue::String(s) => s.clone(),
                HashableValue::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                _ => return None,
            };
            Some((key, v.clone()))
        })
        .collect())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::I64(i) => Some(*i),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn shape_of(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(t) | Value::List(t) => t.iter().map(int).collect(),
        _ => None,
    }
}

fn field<'a>(d: &'a BTreeMap<HashableValue, Value>, name: &str) -> Option<&'a Value> {
    d.get(&HashableValue::String(name.to_owned())).or_else(|| d.get(&HashableValue::Bytes(name.as_bytes().to_vec())))
}

/// The dense array `value` holds (a NumPy array, a chumpy array, a SciPy CSC/CSR matrix), as
/// f32 or i64 (`elements`). `name` is for errors.
pub fn array(path: &Path, name: &str, value: &Value, elements: Elements) -> Result<Tensor> {
    let bad = |m: &str| error(path, format!("{name}: {m}"));
    match value {
        // NumPy: (version, shape, dtype, is_fortran, raw bytes).
        Value::Tuple(state) if state.len() == 5 => {
            let shape = shape_of(&state[1]).ok_or_else(|| bad("a NumPy array without a shape"))?;
            let fortran = matches!(state[3], Value::Bool(true) | Value::I64(1));
            let Value::Bytes(raw) = &state[4] else { return Err(bad("a NumPy array of Python objects")) };
            let n: i64 = shape.iter().product();
            if n == 0 || raw.len() % n as usize != 0 {
                return Err(bad(&format!("{} bytes for shape {shape:?}", raw.len())));
            }
            let dtype = match (elements, raw.len() / n as usize) {
                (Elements::Float, 8) => Dtype::F64,
                (Elements::Float, 4) => Dtype::F32,
                (Elements::Integer, 8) => Dtype::I64,
                (Elements::Integer, 4) => Dtype::U32,
                (Elements::Integer, 2) => Dtype::U16,
                (Elements::Integer, 1) => Dtype::U8,
                (_, width) => return Err(bad(&format!("{width}-byte elements where {elements:?} were expected"))),
            };
            decode(raw, &shape, fortran, dtype, elements).map_err(|e| bad(&e.to_string()))
        }
        Value::Dict(d) => {
            // chumpy: the array is its `x`.
            if let Some(x) = field(d, "x") {
                return array(path, name, x, elements);
            }
            // SciPy sparse: data / indices / indptr / _shape.
            let (Some(data), Some(indices), Some(indptr)) = (field(d, "data"), field(d, "indices"), field(d, "indptr"))
            else {
                return Err(bad("an object this reader cannot turn into an array"));
            };
            let shape = field(d, "_shape")
                .or_else(|| field(d, "shape"))
                .and_then(shape_of)
                .ok_or_else(|| bad("a sparse matrix without a shape"))?;
            let [rows, cols] = shape[..] else { return Err(bad("a sparse matrix that is not 2-D")) };
            let data = Vec::<f64>::try_from(
                array(path, name, data, Elements::Float)?.f_to_kind(Kind::Double)?.f_reshape([-1])?,
            )?;
            let indices = Vec::<i64>::try_from(array(path, name, indices, Elements::Integer)?.f_reshape([-1])?)?;
            let indptr = Vec::<i64>::try_from(array(path, name, indptr, Elements::Integer)?.f_reshape([-1])?)?;
            // The matrix's own `format` when pickled; else CSC has a pointer per column, CSR one per row.
            let csc = match field(d, "format") {
                Some(Value::String(f)) => f == "csc",
                Some(Value::Bytes(f)) => f == b"csc",
                _ => indptr.len() as i64 == cols + 1,
            };
            let mut dense = vec![0f64; (rows * cols) as usize];
            for outer in 0..indptr.len().saturating_sub(1) {
                let (from, to) = (indptr[outer] as usize, indptr[outer + 1] as usize);
                for k in from..to.min(indices.len()).min(data.len()) {
                    let inner = indices[k] as usize;
                    let (r, c) = if csc { (inner, outer) } else { (outer, inner) };
                    if r < rows as usize && c < cols as usize {
                        dense[r * cols as usize + c] = data[k];
                    }
                }
            }
            Ok(Tensor::from_slice(&dense).f_reshape([rows, cols])?.f_to_kind(match elements {
                Elements::Float => Kind::Float,
                Elements::Integer => Kind::Int64,
            })?)
        }
        _ => Err(bad("not an array")),
    }
}

/// Element types of NumPy files and pickles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F64,
    F32,
    I64,
    I32,
    U32,
    U16,
    I16,
    U8,
}

impl Dtype {
    fn of_descr(descr: &str) -> Option<Self> {
        Some(match descr.trim_start_matches(['<', '|', '=']) {
            "f8" => Self::F64,
            "f4" => Self::F32,
            "i8" => Self::I64,
            "i4" => Self::I32,
            "u4" => Self::U32,
            "u2" => Self::U16,
            "i2" => Self::I16,
            "u1" => Self::U8,
            _ => return None,
        })
    }

    fn width(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::U16 | Self::I16 => 2,
            Self::U8 => 1,
        }
    }
}

/// `raw` little-endian elements of `dtype` in C or Fortran order → a C-contiguous tensor of
/// `shape`, f32 or i64.
fn decode(raw: &[u8], shape: &[i64], fortran: bool, dtype: Dtype, elements: Elements) -> Result<Tensor> {
    let n: i64 = shape.iter().product();
    if raw.len() != n as usize * dtype.width() {
        return Err(PerceptionError::Config {
            model: "array",
            message: format!("{} bytes for {n} {dtype:?} elements", raw.len()),
        });
    }
    let stored: Vec<i64> = if fortran { shape.iter().rev().copied().collect() } else { shape.to_vec() };
    let ints = |v: Vec<i64>| Tensor::from_slice(&v);
    let flat = match dtype {
        Dtype::F64 => Tensor::f_from_data_size(raw, &[n], Kind::Double)?,
        Dtype::F32 => Tensor::f_from_data_size(raw, &[n], Kind::Float)?,
        Dtype::I64 => Tensor::f_from_data_size(raw, &[n], Kind::Int64)?,
        Dtype::I32 => {
            ints(raw.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
        }
        Dtype::U32 => {
            ints(raw.chunks_exact(4).map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
        }
        Dtype::U16 => ints(raw.chunks_exact(2).map(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))).collect()),
        Dtype::I16 => ints(raw.chunks_exact(2).map(|b| i64::from(i16::from_le_bytes([b[0], b[1]]))).collect()),
        Dtype::U8 => ints(raw.iter().map(|&b| i64::from(b)).collect()),
    };
    let t = flat.f_reshape(&stored)?;
    let t = if fortran {
        let dims: Vec<i64> = (0..stored.len() as i64).rev().collect();
        t.f_permute(&dims)?.f_contiguous()?
    } else {
        t
    };
    Ok(t.f_to_kind(match elements {
        Elements::Float => Kind::Float,
        Elements::Integer => Kind::Int64,
    })?)
}

/// The arrays of an `.npz` file (NumPy's zip of `.npy` files), as f32 or i64 by `elements`
/// of each name (floats when not listed).
pub fn read_npz(path: &Path, elements: impl Fn(&str) -> Elements) -> Result<BTreeMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| error(path, e.to_string()))?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| error(path, format!("not an .npz: {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| error(path, e.to_string()))?;
        let name = entry.name().trim_end_matches(".npy").to_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(|e| error(path, format!("{name}: {e}")))?;
        let (header, data) = npy_header(&bytes).ok_or_else(|| error(path, format!("{name}: not a .npy array")))?;
        let descr = header_value(header, "descr").ok_or_else(|| error(path, format!("{name}: no descr")))?;
        let dtype = Dtype::of_descr(descr.trim_matches(['\'', '"']))
            .ok_or_else(|| error(path, format!("{name}: unsupported element type {descr}")))?;
        let fortran = header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True"));
        let shape: Vec<i64> = header_value(header, "shape")
            .map(|s| s.trim_matches(['(', ')']).split(',').filter_map(|d| d.trim().parse().ok()).collect())
            .ok_or_else(|| error(path, format!("{name}: no shape")))?;
        let t =
            decode(data, &shape, fortran, dtype, elements(&name)).map_err(|e| error(path, format!("{name}: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The header text and the data of a `.npy` file.
fn npy_header(bytes: &[u8]) -> Option<(&str, &[u8])> {
    if bytes.get(..6)? != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match bytes.get(6)? {
        1 => (usize::from(u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?])), 10),
        _ => (u32::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?, *bytes.get(10)?, *bytes.get(11)?]) as usize, 12),
    };
    let header = std::str::from_utf8(bytes.get(start..start + len)?).ok()?;
    Some((header, bytes.get(start + len..)?))
}

/// The text of `key`'s value in a `.npy` header dict (`{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find(',')? };
    Some(rest[..end].trim())
}
