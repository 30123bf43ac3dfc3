//! # ocellus-language
//!
//! The language side of Ocellus, exact to Meta's reference code:
//!
//! - [`tokenizer`]: the Llama 3 BPE from `tokenizer.model` (tiktoken) or `tokenizer.json`,
//!   with the 256 special tokens, and a streaming decoder.
//! - [`config`]: architectures under transformers' names, by model name, from `config.json`
//!   or Meta's `params.json`.
//! - [`llama`]: the decoder (GQA, Llama 3 scaled RoPE, tied embeddings) loading both the
//!   transformers and Meta weight layouts, and the per-stream [`llama::KvCache`].
//! - [`generate`]: greedy and seeded top-p generation with stop tokens, a token limit and
//!   streaming, for one row or a left-padded batch.
//! - [`chat`]: the chat format (system, user, assistant, ipython) and reply decoding.
//! - [`tools`]: tool calls (JSON, `<function=…>`, pythonic lists, `<|python_tag|>` built-ins).
//! - [`guard`]: Llama Guard 3 prompts, verdicts and scores.
//! - [`backend`]: the [`backend::LanguageModel`] trait, the native backend and the Guard.
//! - [`openai`]: an OpenAI-compatible HTTP client behind the same trait.
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod config;
pub mod generate;
pub mod guard;
pub mod llama;
pub mod openai;
pub mod quant;
pub mod tokenizer;
pub mod tools;

/// Errors of the language crate.
#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    /// The tokenizer file is unreadable or a token id is unknown.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A weights file does not fit its model (every offending key is listed).
    #[error("weights {0}")]
    Weights(String),
    /// An input tensor has the wrong shape or values.
    #[error("shape: {0}")]
    Shape(String),
    /// The KV cache's budget is exhausted.
    #[error("KV cache full: {needed} positions needed, capacity {capacity}")]
    CacheFull {
        /// Positions the call needs.
        needed: i64,
        /// The budget.
        capacity: i64,
    },
    /// Llama Guard could not run.
    #[error("guard: {0}")]
    Guard(String),
    /// An OpenAI-compatible server failed or answered nonsense.
    #[error("remote model: {0}")]
    Remote(String),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] ocellus_kernels::KernelError),
}

/// Result alias of the language crate.
pub type Result<T, E = LanguageError> = std::result::Result<T, E>;
