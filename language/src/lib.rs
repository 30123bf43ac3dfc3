//! # ocellus-language
//!
//! The language side of Ocellus: Llama 3 tokenizer, model with KV cache, generation, the chat
//! and tool-call formats, Llama Guard 3, caption re-alignment prompts and an OpenAI-compatible
//! client. The crate is part of the workspace from the start so that the dependency graph of
//! the design holds; its models land with the Llama 3 issue.
#![warn(missing_docs)]
