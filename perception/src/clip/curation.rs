//! MetaCLIP's metadata-balanced curation (Xu et al., "Demystifying CLIP Data", ICLR 2024,
//! §3; `metaclip/substr_matching.py`, `metaclip/metaclip1/balancing.py`).
//!
//! 1. **Matching**: a caption is `spacing`-ed (`,.;:?!` and backtick padded with spaces, tabs
//!    and line breaks made spaces, the whole wrapped in spaces) and an entry of the metadata
//!    matches when `" {entry} "` is a substring (case-sensitive, as published). Captions that
//!    match nothing are dropped.
//! 2. **Counting**: `count[e]` = captions matching `e` over the whole pool.
//! 3. **Balancing** with threshold `t`: `p[e] = t / max(count[e], t)` (entries seen fewer than
//!    `t` times are kept in full); a caption is kept if *any* of its matched entries passes its
//!    draw `u < p[e]`.
//!
//! **Draws.** The published code draws `random.random()` per matched entry, in the iteration
//! order of a Python set, which nothing else can reproduce. Here a draw is a counter-based hash,
//! `u(seed, pair, entry)`: three rounds of splitmix64 over the seed, the pair's index in the
//! pool and the entry id, the top 53 bits as a float in `[0, 1)` (see [`draw`]). It is the same
//! in every language (the parity test checks the selected set against a Python reference),
//! does not depend on the order entries or pairs are visited (curation can be sharded), and is
//! distributed as the published draws: one independent uniform per (pair, entry).
//!
//! Matching runs one Aho-Corasick automaton over the spaced entries (overlapping matches, as
//! the official `substr_matching_ahocorasick`), so its cost does not grow with the metadata.

use aho_corasick::AhoCorasick;

use crate::{PerceptionError, Result};

/// Punctuation `spacing` pads with spaces.
const PUNCTUATION: [char; 7] = [',', '.', ';', ':', '?', '!', '`'];
/// MetaCLIP 400M's threshold (`configs/metaclip_data.py`, `max_match`).
pub const T_400M: u64 = 20_000;
/// MetaCLIP 2.5B's threshold.
pub const T_2_5B: u64 = 170_000;

/// MetaCLIP's `spacing(text)`.
pub fn spacing(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    out.push(' ');
    for c in text.chars() {
        match c {
            c if PUNCTUATION.contains(&c) => {
                out.push(' ');
                out.push(c);
                out.push(' ');
            }
            '\t' | '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push(' ');
    out
}

/// splitmix64's output function applied to `x` (Steele et al., 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform draw of `entry` for the `pair`-th caption: `[0, 1)`, 53 bits.
pub fn draw(seed: u64, pair: u64, entry: u64) -> f64 {
    let h = splitmix64(splitmix64(splitmix64(seed) ^ pair) ^ entry);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The metadata (entries, e.g. WordNet synsets and Wikipedia n-grams and titles) with its
/// matching automaton.
#[derive(Debug)]
pub struct Metadata {
    entries: Vec<String>,
    automaton: AhoCorasick,
}

impl Metadata {
    /// Builds the matcher of `entries` (ids are their positions).
    pub fn new(entries: Vec<String>) -> Result<Self> {
        let spaced: Vec<String> = entries.iter().map(|e| format!(" {e} ")).collect();
        let automaton = AhoCorasick::new(&spaced)
            .map_err(|e| PerceptionError::Config { model: "curation metadata", message: e.to_string() })?;
        Ok(Self { entries, automaton })
    }

    /// One entry per line (blank lines skipped), or a JSON array of strings (`metadata.json`).
    pub fn parse(text: &str) -> Result<Self> {
        let entries = if text.trim_start().starts_with('[') {
            serde_json::from_str::<Vec<String>>(text)
                .map_err(|e| PerceptionError::Config { model: "curation metadata", message: e.to_string() })?
        } else {
            text.lines().map(str::trim_end).filter(|l| !l.is_empty()).map(str::to_owned).collect()
        };
        Self::new(entries)
    }

    /// The entries.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Ids of the entries `text` matches, ascending (`substr_matching`).
    pub fn matches(&self, text: &str) -> Vec<usize> {
        let spaced = spacing(text);
        let mut ids: Vec<usize> =
            self.automaton.find_overlapping_iter(&spaced).map(|m| m.pattern().as_usize()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The outcome of curating a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Curation {
    /// Matched entry ids per caption (ascending).
    pub matched: Vec<Vec<usize>>,
    /// Captions matching each entry over the pool.
    pub counts: Vec<u64>,
    /// Sampling probability of each entry, `t / max(count, t)`.
    pub probs: Vec<f64>,
    /// Indices of the kept captions, ascending.
    pub selected: Vec<usize>,
}

/// Per-entry counts of matched id lists.
pub fn entry_counts(matched: &[Vec<usize>], entries: usize) -> Vec<u64> {
    let mut counts = vec![0u64; entries];
    for ids in matched {
        for &i in ids {
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
    }
    counts
}

/// Whether the `pair`-th caption with `matched` entries is kept (`balance_sampling`).
pub fn keep(matched: &[usize], probs: &[f64], seed: u64, pair: u64) -> bool {
    matched.iter().any(|&e| probs.get(e).is_some_and(|&p| draw(seed, pair, e as u64) < p))
}

/// Matches, counts and balances `captions` against `metadata` with threshold `t`.
pub fn curate<S: AsRef<str>>(captions: &[S], metadata: &Metadata, t: u64, seed: u64) -> Curation {
    let matched: Vec<Vec<usize>> = captions.iter().map(|c| metadata.matches(c.as_ref())).collect();
    balance(matched, metadata.entries().len(), t, seed)
}

/// Counts and balancing of already matched captions.
pub fn balance(matched: Vec<Vec<usize>>, entries: usize, t: u64, seed: u64) -> Curation {
    let counts = entry_counts(&matched, entries);
    let probs: Vec<f64> = counts.iter().map(|&c| t as f64 / c.max(t) as f64).collect();
    let selected =
        matched.iter().enumerate().filter(|(k, ids)| keep(ids, &probs, seed, *k as u64)).map(|(k, _)| k).collect();
    Curation { matched, counts, probs, selected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_matching() {
        assert_eq!(spacing("a,b\tc"), " a , b c ");
        let m = Metadata::new(vec!["cat".into(), "black cat".into(), "dog".into(), "c++".into()]).unwrap();
        assert_eq!(m.matches("A black cat, and c++."), vec![0, 1, 3]);
        assert_eq!(m.matches("cats and dogs"), Vec::<usize>::new());
    }

    #[test]
    fn tail_entries_are_kept_in_full() {
        let matched = vec![vec![0], vec![0], vec![1]];
        let c = balance(matched, 2, 5, 1);
        assert_eq!(c.counts, [2, 1]);
        assert_eq!(c.selected, [0, 1, 2]);
    }
}
