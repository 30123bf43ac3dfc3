//! The Llama 3 tokenizer: tiktoken BPE from Meta's `tokenizer.model`, or a Hugging Face
//! `tokenizer.json`, with Meta's 256 special tokens.
//!
//! Encoding follows `llama_models.llama3.tokenizer.Tokenizer` exactly: the text is cut into
//! chunks of at most 400,000 characters, and each chunk into runs of at most 25,000
//! consecutive whitespace or non-whitespace characters, before BPE (this is how the reference
//! avoids a tiktoken stack overflow, and it changes the tokens of very long runs, so it is
//! part of the format). By default, text that looks like a special token is encoded as plain
//! text, as the reference does (`allowed_special=set()`); [`Tokenizer::encode_with_special`]
//! turns the special-token strings into their ids.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use tiktoken_rs::CoreBPE;

use crate::{LanguageError, Result};

/// The pre-tokenization pattern of Llama 3 (`Tokenizer.pat_str`).
pub const PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// `text` with every special-token string defused (`<|` → `< |`), so that no tokenizer reads
/// it as a special token, even one that allows them (the Guard's prompt, a server that applies
/// a chat template to text and tokenizes the result). Text without `<|` is unchanged.
pub fn defuse_special_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains("<|") {
        std::borrow::Cow::Owned(text.replace("<|", "< |"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Number of special tokens after the BPE ranks.
pub const NUM_SPECIAL_TOKENS: usize = 256;
/// Number of BPE ranks of the real `tokenizer.model`.
pub const NUM_BASE_TOKENS: usize = 128_000;
/// Characters per encode call in the reference (`TIKTOKEN_MAX_ENCODE_CHARS`).
const MAX_ENCODE_CHARS: usize = 400_000;
/// Longest run of whitespace or non-whitespace characters per BPE call
/// (`MAX_NO_WHITESPACES_CHARS`).
const MAX_NO_WHITESPACE_CHARS: usize = 25_000;

/// The named special tokens, in id order from 128000 (llama-models naming).
const NAMED_SPECIAL: [&str; 12] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
];

/// The special tokens of Llama 3.1+ (`<|begin_of_text|>` … `<|reserved_special_token_247|>`).
pub fn special_token_names() -> Vec<String> {
    let mut names: Vec<String> = NAMED_SPECIAL.iter().map(|s| (*s).to_owned()).collect();
    names
        .extend((0..NUM_SPECIAL_TOKENS - NAMED_SPECIAL.len()).map(|i| format!("<|reserved_special_token_{}|>", 2 + i)));
    names
}

enum Backend {
    /// Meta's `tokenizer.model` through tiktoken.
    Tiktoken(Box<CoreBPE>),
    /// A Hugging Face `tokenizer.json`; `ordinary` encodes special-token text as text.
    HuggingFace { special: Box<tokenizers::Tokenizer>, ordinary: Box<tokenizers::Tokenizer> },
}

/// The Llama 3 tokenizer (shared, read-only).
pub struct Tokenizer {
    backend: Backend,
    special: HashMap<String, u32>,
    special_names: HashMap<u32, String>,
    /// Vocabulary size including the special tokens (128256).
    pub n_words: usize,
    /// `<|begin_of_text|>`.
    pub bos_id: u32,
    /// `<|end_of_text|>`.
    pub eos_id: u32,
    /// `<|eot_id|>`: end of turn.
    pub eot_id: u32,
    /// `<|eom_id|>`: end of message (a tool call awaits its result).
    pub eom_id: u32,
    /// `<|python_tag|>`: a built-in tool call follows.
    pub python_tag_id: u32,
    /// `<|finetune_right_pad_id|>`.
    pub pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Tiktoken(_) => "tiktoken",
            Backend::HuggingFace { .. } => "tokenizer.json",
        };
        f.debug_struct("Tokenizer").field("backend", &kind).field("n_words", &self.n_words).finish()
    }
}

fn tokenizer_error(path: &Path, message: impl std::fmt::Display) -> LanguageError {
    LanguageError::Tokenizer(format!("{}: {message}", path.display()))
}

impl Tokenizer {
    /// Loads `tokenizer.json` (Hugging Face) by extension, anything else as a tiktoken file.
    pub fn load(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_hf_json(path)
        } else {
            Self::from_tiktoken_file(path)
        }
    }

    /// Loads Meta's `tokenizer.model`: one `base64(token) rank` pair per line.
    pub fn from_tiktoken_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| tokenizer_error(path, e))?;
        let mut ranks: rustc_hash::FxHashMap<Vec<u8>, u32> = Default::default();
        ranks.reserve(NUM_BASE_TOKENS);
        for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let bad = |what: &str| tokenizer_error(path, format!("line {}: {what}", line_no + 1));
            let (token, rank) = line.split_once(' ').ok_or_else(|| bad("expected `base64 rank`"))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad("invalid base64"))?;
            let rank: u32 = rank.trim().parse().map_err(|_| bad("invalid rank"))?;
            ranks.insert(bytes, rank);
        }
        let base = ranks.len();
        let names = special_token_names();
        let special: HashMap<String, u32> =
            names.iter().enumerate().map(|(i, n)| (n.clone(), (base + i) as u32)).collect();
        let bpe = CoreBPE::new(ranks, special.iter().map(|(k, v)| (k.clone(), *v)).collect(), PATTERN)
            .map_err(|e| tokenizer_error(path, e))?;
        Self::with_backend(Backend::Tiktoken(Box::new(bpe)), special, base + names.len())
    }

    /// Loads a Hugging Face `tokenizer.json` (the layout of the `meta-llama/*` repositories).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let special_tok = tokenizers::Tokenizer::from_file(path).map_err(|e| tokenizer_error(path, e))?;
        let mut ordinary = special_tok.clone();
        ordinary.set_encode_special_tokens(true);
        let special: HashMap<String, u32> = special_tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        let n_words = special_tok.get_vocab_size(true);
        let backend = Backend::HuggingFace { special: Box::new(special_tok), ordinary: Box::new(ordinary) };
        Self::with_backend(backend, special, n_words)
    }

    fn with_backend(backend: Backend, special: HashMap<String, u32>, n_words: usize) -> Result<Self> {
        let id = |name: &str| {
            special.get(name).copied().ok_or_else(|| LanguageError::Tokenizer(format!("special token {name} missing")))
        };
        let (bos_id, eos_id, eot_id, eom_id) =
            (id("<|begin_of_text|>")?, id("<|end_of_text|>")?, id("<|eot_id|>")?, id("<|eom_id|>")?);
        let (python_tag_id, pad_id) = (id("<|python_tag|>")?, id("<|finetune_right_pad_id|>")?);
        let special_names = special.iter().map(|(k, v)| (*v, k.clone())).collect();
        Ok(Self { backend, special, special_names, n_words, bos_id, eos_id, eot_id, eom_id, python_tag_id, pad_id })
    }

    /// The id of a special token by name (`"<|eot_id|>"`).
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.special.get(name).copied()
    }

    /// The name of a special token id.
    pub fn special_name(&self, id: u32) -> Option<&str> {
        self.special_names.get(&id).map(String::as_str)
    }

    /// Whether `id` is one of the 256 special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_names.contains_key(&id)
    }

    /// The tokens that end generation: `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`.
    pub fn stop_tokens(&self) -> [u32; 3] {
        [self.eos_id, self.eom_id, self.eot_id]
    }

    /// Encodes `text`, special-token strings as plain text (the reference's default).
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        self.encode_impl(text, bos, eos, false)
    }

    /// Encodes `text`, turning special-token strings (`<|eot_id|>`) into their ids
    /// (`allowed_special="all"`).
    pub fn encode_with_special(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        self.encode_impl(text, bos, eos, true)
    }

    fn encode_impl(&self, text: &str, bos: bool, eos: bool, allow_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if bos {
            out.push(self.bos_id);
        }
        for chunk in char_chunks(text, MAX_ENCODE_CHARS) {
            for piece in split_runs(chunk, MAX_NO_WHITESPACE_CHARS) {
                self.encode_piece(piece, allow_special, &mut out)?;
            }
        }
        if eos {
            out.push(self.eos_id);
        }
        Ok(out)
    }

    fn encode_piece(&self, piece: &str, allow_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.backend {
            Backend::Tiktoken(bpe) if allow_special => out.extend(bpe.encode_with_special_tokens(piece)),
            Backend::Tiktoken(bpe) => out.extend(bpe.encode_ordinary(piece)),
            Backend::HuggingFace { special, ordinary } => {
                let tok = if allow_special { special } else { ordinary };
                let enc = tok.encode(piece, false).map_err(|e| LanguageError::Tokenizer(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }

    /// The bytes of `ids` (special tokens as their names); errors on an id out of the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match &self.backend {
            Backend::Tiktoken(bpe) => {
                bpe.decode_bytes(ids).map_err(|e| LanguageError::Tokenizer(format!("unknown token id {}", e.token)))
            }
            Backend::HuggingFace { special, .. } => {
                let mut bytes = Vec::new();
                for &id in ids {
                    let token = special
                        .id_to_token(id)
                        .ok_or_else(|| LanguageError::Tokenizer(format!("unknown token id {id}")))?;
                    if self.special_names.contains_key(&id) {
                        bytes.extend_from_slice(token.as_bytes());
                    } else {
                        bytes.extend(byte_level_decode(&token));
                    }
                }
                Ok(bytes)
            }
        }
    }

    /// Decodes `ids` to text; invalid UTF-8 becomes U+FFFD, as tiktoken's `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}

/// Splits `text` into chunks of at most `max` characters.
fn char_chunks(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// `_split_whitespaces_or_nonwhitespaces`: cuts `s` so that no piece holds more than `max`
/// consecutive whitespace or non-whitespace characters (Python's `str.isspace`).
fn split_runs(s: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut run_len = 0usize;
    let mut run_is_space = s.chars().next().is_some_and(py_isspace);
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        let space = py_isspace(c);
        if run_is_space ^ space {
            run_len = 1;
            run_is_space = space;
        } else {
            run_len += 1;
            if run_len > max {
                pieces.push(&s[start..i]);
                start = i;
                run_len = 1;
            }
        }
    }
    pieces.push(&s[start..]);
    pieces
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the ASCII separators
/// U+001C–U+001F that Python also counts.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// GPT-2 byte-level alphabet, inverted: the byte that a `tokenizer.json` character stands for.
/// Printable bytes stand for themselves; the others were mapped, in order, to U+0100, U+0101, ...
fn byte_level_decode(token: &str) -> Vec<u8> {
    static SHIFTED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let shifted = SHIFTED.get_or_init(|| (0u8..=255).filter(|b| !printable(u32::from(*b))).collect());
    token
        .chars()
        .map(|c| {
            let cp = c as u32;
            if printable(cp) {
                cp as u8
            } else {
                cp.checked_sub(256).and_then(|i| shifted.get(i as usize)).copied().unwrap_or(0)
            }
        })
        .collect()
}

/// Decodes a token stream into text piece by piece, holding back bytes of an incomplete
/// UTF-8 sequence until the next token completes it.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.pending.extend(tokenizer.decode_bytes(&[id])?);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete sequence at the end waits; an invalid one is replaced now.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        Ok(text)
    }

    /// The text still held back (replacement characters for a truncated sequence).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_cut_like_the_reference() {
        assert_eq!(split_runs("aaaa  bb", 3), vec!["aaa", "a  bb"]);
        assert_eq!(split_runs("", 3), vec![""]);
        assert_eq!(split_runs("     ", 2), vec!["  ", "  ", " "]);
        assert_eq!(char_chunks("abcdé", 2).collect::<Vec<_>>(), vec!["ab", "cd", "é"]);
    }

    #[test]
    fn byte_level_alphabet_round_trips() {
        assert_eq!(byte_level_decode("Ġhello"), b" hello");
        assert_eq!(byte_level_decode("Ċ"), b"\n");
        assert_eq!(byte_level_decode("Ã©"), "é".as_bytes());
    }

    #[test]
    fn special_names_cover_256_ids() {
        let names = special_token_names();
        assert_eq!(names.len(), NUM_SPECIAL_TOKENS);
        assert_eq!(names[9], "<|eot_id|>");
        assert_eq!(names[255], "<|reserved_special_token_245|>");
    }
}
