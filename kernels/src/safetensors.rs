//! Reading safetensors files with every fault named: a cut or corrupt file fails with the
//! tensor it breaks (`tensor "blocks.3.mlp.fc1.weight" ends at byte 9,437,184 of the data,
//! the file holds 4,194,304`), not with the reader's generic "incomplete buffer". The header
//! is checked against the file's size before any tensor is read, so a truncated download is
//! reported without allocating for it.

use std::io::Read as _;
use std::path::Path;

use tch::Tensor;

/// The length prefix of the JSON header.
const LEN_BYTES: u64 = 8;
/// The header entry that is not a tensor.
const METADATA: &str = "__metadata__";

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub name: String,
    /// `F32`, `BF16`, ...
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its bytes within the data (after the header): `[begin, end)`.
    pub offsets: (u64, u64),
}

/// Bytes per element of a safetensors dtype.
fn element_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// The header's tensors, checked against each other and against the file's size: every
/// dtype known, every shape matching its byte span, every span inside the file. The message
/// names the first tensor at fault.
pub fn entries(path: &Path) -> Result<Vec<Entry>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; LEN_BYTES as usize];
    file.read_exact(&mut len)
        .map_err(|_| format!("not safetensors: {size} bytes, shorter than the header's length"))?;
    let len = u64::from_le_bytes(len);
    if len > size - LEN_BYTES {
        return Err(format!("not safetensors, or cut short: a header of {len} bytes in a file of {size}"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("corrupt safetensors header: {e}"))?;
    let data = size - LEN_BYTES - len;
    let mut entries = header
        .iter()
        .filter(|(name, _)| *name != METADATA)
        .map(|(name, value)| entry(name, value).map_err(|e| format!("tensor {name:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // In file order, so that a cut file names the first tensor it lacks.
    entries.sort_by_key(|e| e.offsets);
    for (k, e) in entries.iter().enumerate() {
        let (name, (begin, end)) = (&e.name, e.offsets);
        if end > data {
            let more = entries.len() - k - 1;
            let after = if more > 0 { format!(" (and the {more} after it)") } else { String::new() };
            return Err(format!(
                "tensor {name:?}{after} ends at byte {end} of the data, the file holds {data}: the file is cut short \
(fetch or import it again)"
            ));
        }
        let elements = e.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
        match element_bytes(&e.dtype).map(|b| elements.and_then(|n| n.checked_mul(b))) {
            None => return Err(format!("tensor {name:?}: unknown dtype {:?}", e.dtype)),
            Some(None) => return Err(format!("tensor {name:?}: shape {:?} is too large", e.shape)),
            Some(Some(b)) if b != end - begin => {
                return Err(format!(
                    "tensor {name:?}: {} {:?} needs {b} bytes, its offsets span {}: the header is corrupt",
                    e.dtype,
                    e.shape,
                    end - begin
                ));
            }
            Some(Some(_)) => {}
        }
    }
    Ok(entries)
}

/// One header entry: `{"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}`.
fn entry(name: &str, value: &serde_json::Value) -> Result<Entry, String> {
    let field = |k: &str| value.get(k).ok_or_else(|| format!("no {k:?}"));
    let numbers = |k: &str| -> Result<Vec<u64>, String> {
        field(k)?
            .as_array()
            .ok_or_else(|| format!("{k:?} is not a list"))?
            .iter()
            .map(|v| v.as_u64().ok_or_else(|| format!("{k:?} holds {v}, not a size")))
            .collect()
    };
    let dtype = field("dtype")?.as_str().ok_or("\"dtype\" is not a string")?.to_owned();
    let offsets = match numbers("data_offsets")?.as_slice() {
        [b, e] if b <= e => (*b, *e),
        other => return Err(format!("\"data_offsets\" {other:?} is not [begin, end]")),
    };
    Ok(Entry { name: name.to_owned(), dtype, shape: numbers("shape")?, offsets })
}

/// Every tensor of the file (on the CPU), after [`entries`] has checked its header.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    entries(path)?;
    Tensor::read_safetensors(path).map_err(|e| e.to_string())
}
