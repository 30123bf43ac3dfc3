//! CLIP's byte-level BPE tokenizer, token-exact with open_clip's `SimpleTokenizer`
//! (`open_clip/tokenizer.py`, itself OpenAI's `clip/simple_tokenizer.py`).
//!
//! Vocabulary: the 256 byte characters, the same with `</w>` (end of word), one token per merge
//! of `bpe_simple_vocab_16e6.txt.gz` (lines `1 .. 48895`), then `<start_of_text>` (49406) and
//! `<end_of_text>` (49407): 49408 tokens. The file (OpenAI CLIP's, which open_clip and MetaCLIP
//! ship) is built into Ocellus; another can be read from a path.
//!
//! Cleaning (open_clip's `clean = "lower"`): `ftfy.fix_text`, `html.unescape` twice, strip,
//! whitespace runs collapsed to one space, lowercase. ftfy has no Rust port; this module ports
//! every ftfy step that open_clip's defaults run *except the mojibake repair*
//! (`fix_encoding`, which guesses that text like `"doesnâ€™t"` was UTF-8 decoded as
//! Windows-1252 and re-decodes it): HTML entities outside markup, C1 controls as
//! Windows-1252, Latin ligatures, full/half-width forms, curly quotes, line breaks, terminal
//! escapes, control characters, NFC — per line, to a fixed point, as `fix_text` does. Text
//! with mojibake therefore tokenizes as written, where open_clip would tokenize the repaired
//! text; the parity corpus keeps two such strings to show the difference. The tables come
//! from ftfy and Python's `html` module (`text_tables.tsv`, written by
//! `perception/scripts/clip_text_tables.py`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization as _;

use crate::{PerceptionError, Result};

/// Tokens per text (all CLIP models).
pub const CONTEXT_LENGTH: usize = 77;
/// `<start_of_text>`.
pub const SOT: u32 = 49406;
/// `<end_of_text>`.
pub const EOT: u32 = 49407;
/// Tokens in the vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// The vocabulary file inside the `open_clip` package.
pub const VOCAB_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";
/// The vocabulary file's bytes (sha256 924691ac…d6804a).
const EMBEDDED_VOCAB: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
/// Merges used: `49152 - 256 - 2` (OpenAI's vocabulary size minus bytes and specials).
const MERGES: usize = 49152 - 256 - 2;
/// The split pattern of `SimpleTokenizer` (`re.IGNORECASE`).
const PATTERN: &str = r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's tokenizer (immutable, shareable between threads).
#[derive(Debug)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    /// `(left id, right id)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Vocabulary id of each byte's character (`</w>` variant: + 256).
    byte_ids: [u32; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
}

fn vocab_error(path: &Path, message: String) -> PerceptionError {
    PerceptionError::Weights { path: path.to_path_buf(), message }
}

/// GPT-2's reversible byte → printable character map (`bytes_to_unicode`), in its dict order:
/// `(byte, char)` for the printable bytes first, then the others mapped from U+0100 on. The
/// vocabulary lists the characters in this order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut pairs: Vec<(u8, char)> = printable.iter().map(|&b| (b, char::from(b))).collect();
    let mut extra = 0u32;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            // Codes 0x100..0x143: always valid chars.
            pairs.push((b, char::from_u32(0x100 + extra).unwrap_or('\u{FFFD}')));
            extra += 1;
        }
    }
    pairs
}

impl ClipTokenizer {
    /// Reads `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| vocab_error(path, e.to_string()))?;
        Self::from_gz(file).map_err(|m| vocab_error(path, m))
    }

    /// The CLIP vocabulary built into Ocellus (OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`,
    /// the file open_clip and MetaCLIP ship; MIT licence).
    pub fn embedded() -> Result<Self> {
        Self::from_gz(EMBEDDED_VOCAB).map_err(|m| vocab_error(Path::new(VOCAB_FILE), m))
    }

    fn from_gz(gz: impl Read) -> std::result::Result<Self, String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| e.to_string())?;
        Self::from_merges(&text)
    }

    /// Builds the tokenizer from the text of the merges file (first line a header).
    pub fn from_merges(text: &str) -> std::result::Result<Self, String> {
        let byte_chars = bytes_to_unicode();
        let mut decoder: Vec<String> = byte_chars.iter().map(|(_, c)| c.to_string()).collect();
        decoder.extend(byte_chars.iter().map(|(_, c)| format!("{c}</w>")));
        let mut byte_ids = [0u32; 256];
        for (i, (b, _)) in byte_chars.iter().enumerate() {
            byte_ids[usize::from(*b)] = i as u32;
        }
        let lines: Vec<&str> = text.split('\n').skip(1).take(MERGES).collect();
        if lines.len() != MERGES {
            return Err(format!("{} merges, expected {MERGES}", lines.len()));
        }
        let mut encoder: HashMap<String, u32> = HashMap::with_capacity(VOCAB_SIZE);
        for (i, t) in decoder.iter().enumerate() {
            encoder.insert(t.clone(), i as u32);
        }
        let mut merges = HashMap::with_capacity(MERGES);
        for (rank, line) in lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
                return Err(format!("merge {rank} is not a pair: {line:?}"));
            };
            let (Some(&ia), Some(&ib)) = (encoder.get(a), encoder.get(b)) else {
                return Err(format!("merge {rank} uses an unknown token: {line:?}"));
            };
            let id = decoder.len() as u32;
            let merged = format!("{a}{b}");
            decoder.push(merged.clone());
            encoder.insert(merged, id);
            merges.entry((ia, ib)).or_insert((rank as u32, id));
        }
        for special in ["<start_of_text>", "<end_of_text>"] {
            encoder.insert(special.to_owned(), decoder.len() as u32);
            decoder.push(special.to_owned());
        }
        let byte_decoder = byte_chars.iter().map(|(b, c)| (*c, *b)).collect();
        let pattern = Regex::new(PATTERN).map_err(|e| e.to_string())?;
        Ok(Self { encoder, decoder, merges, byte_ids, byte_decoder, pattern })
    }

    /// The id of a vocabulary token (`"cat</w>"`, `"<end_of_text>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// BPE ids of `text` after cleaning, without SOT / EOT (`SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean_lower(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&text) {
            match m.as_str() {
                "<start_of_text>" => ids.push(SOT),
                "<end_of_text>" => ids.push(EOT),
                word => self.bpe(word, &mut ids),
            }
        }
        ids
    }

    /// Merges one pre-token (its bytes as characters, `</w>` on the last one).
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let Some((last, head)) = bytes.split_last() else { return };
        let mut symbols: Vec<u32> = head.iter().map(|&b| self.byte_ids[usize::from(b)]).collect();
        symbols.push(self.byte_ids[usize::from(*last)] + 256); // the `c</w>` variant
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, id)| (rank, w[0], w[1], id)))
                .min_by_key(|m| m.0);
            let Some((_, first, second, merged)) = best else { break };
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if symbols[i] == first && symbols.get(i + 1) == Some(&second) {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
            if symbols.len() == 1 {
                break;
            }
        }
        out.extend_from_slice(&symbols);
    }

    /// SOT + ids + EOT, cut to `context_length` (the last kept token becomes EOT), padded with 0.
    pub fn tokenize_with(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = Vec::with_capacity(context_length);
        ids.push(i64::from(SOT));
        ids.extend(self.encode(text).into_iter().map(i64::from));
        ids.push(i64::from(EOT));
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = i64::from(EOT);
            }
        }
        ids.resize(context_length, 0);
        ids
    }

    /// [`ClipTokenizer::tokenize_with`] at 77 tokens.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        self.tokenize_with(text, CONTEXT_LENGTH)
    }

    /// Token ids of several texts as a `[N, 77]` int64 tensor.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<tch::Tensor> {
        let flat: Vec<i64> = texts.iter().flat_map(|t| self.tokenize(t.as_ref())).collect();
        Ok(tch::Tensor::f_from_slice(&flat)?.f_view([texts.len() as i64, CONTEXT_LENGTH as i64])?) // [N, 77]
    }

    /// Text of ids (`</w>` becomes a space; invalid UTF-8 is replaced), as `SimpleTokenizer.decode`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let joined: String = ids.iter().filter_map(|&i| self.decoder.get(i as usize)).map(String::as_str).collect();
        let bytes: Vec<u8> = joined.chars().filter_map(|c| self.byte_decoder.get(&c).copied()).collect();
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}

// --- cleaning --------------------------------------------------------------------------------

/// The character tables of ftfy and Python's `html` (see the module doc).
struct Tables {
    html5: HashMap<String, String>,
    ftfy_entities: HashMap<String, String>,
    charrefs: HashMap<u32, String>,
    invalid: std::collections::HashSet<u32>,
    /// C1 controls, ligatures, widths, controls: one map per ftfy step, in ftfy's order.
    c1: HashMap<char, String>,
    ligatures: HashMap<char, String>,
    width: HashMap<char, String>,
    controls: std::collections::HashSet<char>,
    html_ref: Regex,
    ftfy_entity: Regex,
    ansi: Regex,
}

fn chars_of(hex: &str) -> String {
    hex.split_whitespace().filter_map(|h| u32::from_str_radix(h, 16).ok()).filter_map(char::from_u32).collect()
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            html5: HashMap::new(),
            ftfy_entities: HashMap::new(),
            charrefs: HashMap::new(),
            invalid: Default::default(),
            c1: HashMap::new(),
            ligatures: HashMap::new(),
            width: HashMap::new(),
            controls: Default::default(),
            // Constant patterns: covered by every test.
            html_ref: Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)").expect("pattern"),
            ftfy_entity: Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("pattern"),
            ansi: Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("pattern"),
        };
        let code = |h: &str| u32::from_str_radix(h, 16).ok();
        let ch = |h: &str| code(h).and_then(char::from_u32);
        for line in include_str!("text_tables.tsv").lines().filter(|l| !l.starts_with('#')) {
            let mut f = line.splitn(3, '\t');
            let (Some(kind), Some(key), value) = (f.next(), f.next(), f.next().unwrap_or("")) else { continue };
            match kind {
                "html5" => drop(t.html5.insert(key.to_owned(), chars_of(value))),
                "ftfy_ent" => drop(t.ftfy_entities.insert(key.to_owned(), chars_of(value))),
                "charref" => drop(code(key).map(|k| t.charrefs.insert(k, chars_of(value)))),
                "invalid" => drop(code(key).map(|k| t.invalid.insert(k))),
                "c1" => drop(ch(key).map(|k| t.c1.insert(k, chars_of(value)))),
                "ligature" => drop(ch(key).map(|k| t.ligatures.insert(k, chars_of(value)))),
                "width" => drop(ch(key).map(|k| t.width.insert(k, chars_of(value)))),
                "control" => drop(ch(key).map(|k| t.controls.insert(k))),
                _ => {}
            }
        }
        t
    })
}

/// Python's `str.isspace` (Unicode White_Space plus the separators U+1C..U+1F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean_lower(text: &str) -> String {
    let text = html_unescape(&html_unescape(&fix_text(text)));
    text.split(is_py_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Python's `html.unescape`.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let t = tables();
    t.html_ref
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let s = caps.get(1).map_or("", |m| m.as_str());
            if let Some(num) = s.strip_prefix('#') {
                let (digits, radix) = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => (hex, 16),
                    None => (num, 10),
                };
                // Too many digits for u32 is "> 0x10FFFF" all the same.
                let n = u32::from_str_radix(digits.trim_end_matches(';'), radix).unwrap_or(u32::MAX);
                if let Some(r) = t.charrefs.get(&n) {
                    return r.clone();
                }
                if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
                    return "\u{FFFD}".to_owned();
                }
                if t.invalid.contains(&n) {
                    return String::new();
                }
                return char::from_u32(n).map_or_else(|| "\u{FFFD}".to_owned(), |c| c.to_string());
            }
            if let Some(v) = t.html5.get(s) {
                return v.clone();
            }
            // The longest name that is a prefix (at least 2 characters), the rest kept.
            let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(2).collect();
            for &end in bounds.iter().rev() {
                if let Some(v) = t.html5.get(&s[..end]) {
                    return format!("{v}{}", &s[end..]);
                }
            }
            format!("&{s}")
        })
        .into_owned()
}

/// `ftfy.fix_text` with open_clip's (default) configuration, without `fix_encoding`.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false; // "auto": looks like HTML, for this line and every later one
        }
        let mut s = segment.to_owned();
        loop {
            let before = s.clone();
            if unescape {
                s = ftfy_unescape(&s);
            }
            s = fix_chars(&s);
            if s == before {
                break;
            }
        }
        out.push_str(&s);
    }
    out
}

/// ftfy's `unescape_html`: known entities (and upper-case variants), numeric references.
fn ftfy_unescape(text: &str) -> String {
    let t = tables();
    t.ftfy_entity
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let m = caps.get(0).map_or("", |m| m.as_str());
            if let Some(v) = t.ftfy_entities.get(m) {
                return v.clone();
            }
            if m.starts_with("&#") {
                let u = html_unescape(m);
                return if u.contains(';') { m.to_owned() } else { u };
            }
            m.to_owned()
        })
        .into_owned()
}

/// One pass of ftfy's character fixers, in its order, then NFC.
fn fix_chars(text: &str) -> String {
    let t = tables();
    let map = |s: &str, table: &HashMap<char, String>| -> String {
        s.chars().fold(String::with_capacity(s.len()), |mut acc, c| {
            match table.get(&c) {
                Some(r) => acc.push_str(r),
                None => acc.push(c),
            }
            acc
        })
    };
    let s = map(text, &t.c1);
    let s = map(&s, &t.ligatures);
    let s = map(&s, &t.width);
    // uncurl_quotes
    let s: String = s
        .chars()
        .map(|c| match c {
            '\u{201c}'..='\u{201f}' => '"',
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => '\'',
            c => c,
        })
        .collect();
    // fix_line_breaks
    let s = s.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    let s = t.ansi.replace_all(&s, "");
    let s: String = s.chars().filter(|c| !t.controls.contains(c)).collect();
    s.nfc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean_lower("  Hello\t\nWORLD  "), "hello world");
        assert_eq!(html_unescape("&amp;amp; &lt &notit; &#x41;&#0;"), "&amp; < ¬it; A\u{FFFD}");
        assert_eq!(clean_lower("ﬁne “q” ｆｕｌｌ"), "fine \"q\" full");
        assert_eq!(clean_lower("e\u{301}"), "\u{e9}");
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let m = bytes_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().map(|p| p.1).collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[0], (b'!', '!'));
        assert_eq!(m[188], (0, '\u{100}'));
    }
}
