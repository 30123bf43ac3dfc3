//! Checking a weights file's keys and shapes against a model's, with every offending key
//! reported at once (used by every model loader).

use std::collections::{BTreeMap, BTreeSet};

/// Keys listed per kind before the rest are counted.
const SHOWN: usize = 12;

/// Compares the model's parameter shapes (`expected`) with a file's (`found`). `None` when
/// they agree; otherwise one message naming the missing, unexpected and mis-shaped keys
/// (`N missing keys: ...; N unexpected keys: ...; N shape mismatches: k: file [..], model
/// [..]`), each key shown through `show` (a loader may name keys as the file spells them).
pub fn key_report(
    expected: &BTreeMap<String, Vec<i64>>,
    found: &BTreeMap<String, Vec<i64>>,
    show: impl Fn(&str) -> String,
) -> Option<String> {
    let missing: BTreeSet<String> = expected.keys().filter(|k| !found.contains_key(*k)).map(|k| show(k)).collect();
    let unexpected: BTreeSet<String> = found.keys().filter(|k| !expected.contains_key(*k)).map(|k| show(k)).collect();
    let mismatched: Vec<String> = found
        .iter()
        .filter_map(|(k, f)| {
            expected.get(k).filter(|e| *e != f).map(|e| format!("{}: file {f:?}, model {e:?}", show(k)))
        })
        .collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing keys: {}", missing.len(), join(&missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected keys: {}", unexpected.len(), join(&unexpected)));
    }
    if !mismatched.is_empty() {
        parts.push(format!("{} shape mismatches: {}", mismatched.len(), mismatched.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn join(keys: &BTreeSet<String>) -> String {
    let mut s = keys.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s += &format!(", … ({} more)", keys.len() - SHOWN);
    }
    s
}
