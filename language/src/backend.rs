//! One trait for every language model the agent can use: the native Llama 3 over tch, or an
//! OpenAI-compatible server (llama.cpp server, vLLM, Ollama) reached over HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ocellus_kernels::sampling::Sampling;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::{AssistantReply, ChatFormat, Message, Role, StopReason};
use crate::generate::{Finish, GenerateOptions, generate};
use crate::guard::{Assessment, GuardPrompt, Turn, UNSAFE_TOKEN, parse_verdict};
use crate::llama::{KvCache, Llama};
use crate::tokenizer::Tokenizer;
use crate::tools::{ToolPromptFormat, python_json_dumps_indent};
use crate::{LanguageError, Result};

/// A tool the model may call, described by a JSON schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

/// A chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The dialog so far.
    pub messages: Vec<Message>,
    /// Tools offered.
    pub tools: Vec<ToolSpec>,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: Sampling,
    /// Seed.
    pub seed: u64,
}

impl ChatRequest {
    /// A greedy request.
    pub fn new(messages: Vec<Message>, max_tokens: usize) -> Self {
        Self { messages, tools: Vec::new(), max_tokens, sampling: Sampling::Greedy, seed: 0 }
    }
}

/// A chat answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant's message and its parsed tool calls.
    pub reply: AssistantReply,
    /// Raw text of the reply.
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Wall time of the call.
    pub latency: Duration,
}

/// A raw completion (no chat template), for Llama Guard.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCompletion {
    /// Generated text.
    pub text: String,
    /// Probability of `unsafe` as the first token, when the backend exposes it.
    pub unsafe_prob: Option<f32>,
}

/// A language model backend.
pub trait LanguageModel: Send {
    /// A name for logs and metrics.
    fn name(&self) -> &str;
    /// Answers a dialog.
    fn chat(&mut self, request: &ChatRequest) -> Result<ChatResponse>;
    /// Completes a prompt given as text with special tokens written out.
    fn complete_raw(&mut self, prompt: &str, max_tokens: usize) -> Result<RawCompletion>;
}

/// Llama Guard 3 over any backend.
pub struct Guard {
    backend: Box<dyn LanguageModel>,
    prompt: GuardPrompt,
    /// Blocks at or above this P(`unsafe`) (0.5 by default), or on an `unsafe` verdict.
    pub threshold: f32,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("backend", &self.backend.name()).field("prompt", &self.prompt).finish()
    }
}

/// Tokens the Guard may generate: `unsafe\nS1,S2,...` fits comfortably.
const GUARD_MAX_TOKENS: usize = 20;

impl Guard {
    /// A guard with `prompt` over `backend`.
    pub fn new(backend: Box<dyn LanguageModel>, prompt: GuardPrompt) -> Self {
        Self { backend, prompt, threshold: 0.5 }
    }

    /// Assesses the last turn of `conversation`.
    pub fn assess(&mut self, conversation: &[Turn]) -> Result<Assessment> {
        let text = self.prompt.render(conversation).map_err(|e| LanguageError::Guard(e.to_string()))?;
        let raw = self.backend.complete_raw(&text, GUARD_MAX_TOKENS)?;
        Ok(Assessment { verdict: parse_verdict(&raw.text), unsafe_score: raw.unsafe_prob })
    }
}

/// System prompt offering `tools` in Llama 3.2's pythonic format
/// (`llama_models/llama3_2/text_prompt_format.md`).
pub fn pythonic_tool_prompt(tools: &[ToolSpec]) -> String {
    let list: Vec<Value> = tools
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
        .collect();
    format!(
        "You are an expert in composing functions. You are given a question and a set of possible functions.\nBased on the question, you will need to make one or more function/tool calls to achieve the purpose.\nIf none of the function can be used, point it out. If the given question lacks the parameters required by the function,\nalso point it out. You should only return the function call in tools call sections.\n\nIf you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\nYou SHOULD NOT include any other text in the response.\n\nHere is a list of functions in JSON format that you can invoke.\n\n{}",
        python_json_dumps_indent(&Value::Array(list), 4)
    )
}

/// User-message preamble offering `tools` as JSON custom tools (Llama 3.1's format).
pub fn json_tool_prompt(tools: &[ToolSpec]) -> String {
    let defs: Vec<String> = tools
        .iter()
        .map(|t| {
            let v = serde_json::json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}});
            python_json_dumps_indent(&v, 4)
        })
        .collect();
    format!(
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {{\"name\": function name, \"parameters\": dictionary of argument name and its value}}.Do not use variables.\n\n{}\n\n",
        defs.join("\n\n")
    )
}

/// The native Llama 3: its weights and one KV cache (tch tensors are not `Sync`, so the
/// backend owns its weights and lives on one inference thread).
pub struct NativeModel {
    name: String,
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    cache: KvCache,
    /// How tools are offered and parsed (pythonic for 3.2 1B/3B, JSON for 3.1).
    pub tool_format: ToolPromptFormat,
}

impl std::fmt::Debug for NativeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeModel").field("name", &self.name).field("cache", &self.cache).finish()
    }
}

impl NativeModel {
    /// A backend over `model` with a KV budget of `context` positions.
    pub fn new(name: &str, model: Llama, tokenizer: Arc<Tokenizer>, context: i64) -> Result<Self> {
        let cache = model.new_cache(1, context)?;
        Ok(Self { name: name.to_owned(), model, tokenizer, cache, tool_format: ToolPromptFormat::PythonList })
    }

    /// The dialog with the tools offered in the format's place.
    fn with_tools(&self, request: &ChatRequest) -> Vec<Message> {
        let mut messages = request.messages.clone();
        if request.tools.is_empty() {
            return messages;
        }
        match self.tool_format {
            ToolPromptFormat::PythonList => {
                let prompt = pythonic_tool_prompt(&request.tools);
                match messages.iter_mut().find(|m| m.role == Role::System) {
                    Some(system) => system.content = format!("{prompt}\n\n{}", system.content),
                    None => messages.insert(0, Message::system(prompt)),
                }
            }
            ToolPromptFormat::Json | ToolPromptFormat::FunctionTag => {
                let prompt = json_tool_prompt(&request.tools);
                if let Some(user) = messages.iter_mut().find(|m| m.role == Role::User) {
                    user.content = format!("{prompt}{}", user.content);
                }
            }
        }
        messages
    }

    /// Generates after `prompt`; a prompt that leaves the KV cache no room for an answer is
    /// refused ([`LanguageError::CacheFull`]) rather than answered with nothing.
    fn run(&mut self, prompt: &[u32], options: &GenerateOptions) -> Result<crate::generate::Generation> {
        let capacity = self.cache.capacity();
        let needed = prompt.len() as i64 + 1;
        if needed > capacity {
            return Err(LanguageError::CacheFull { needed, capacity });
        }
        self.cache.clear()?;
        generate(&self.model, Some(&self.tokenizer), &mut self.cache, prompt, options, |_| {
            std::ops::ControlFlow::Continue(())
        })
    }
}

impl LanguageModel for NativeModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat(&mut self, request: &ChatRequest) -> Result<ChatResponse> {
        let started = Instant::now();
        let messages = self.with_tools(request);
        let format = ChatFormat::new(&self.tokenizer);
        let prompt = format.encode_dialog_prompt(&messages, self.tool_format)?;
        let budget = (self.cache.capacity() as usize).saturating_sub(prompt.len());
        let options = GenerateOptions {
            max_new_tokens: request.max_tokens.min(budget),
            sampling: request.sampling,
            seed: request.seed,
            stop_tokens: self.tokenizer.stop_tokens().to_vec(),
            score_first: Vec::new(),
        };
        let generation = self.run(&prompt, &options)?;
        let stop = match generation.finish {
            Finish::Stop(t) if t == self.tokenizer.eom_id => StopReason::EndOfMessage,
            Finish::Stop(_) => StopReason::EndOfTurn,
            _ => StopReason::OutOfTokens,
        };
        let text = self.tokenizer.decode(&generation.tokens)?;
        let reply = crate::chat::decode_assistant_text(&text, stop);
        Ok(ChatResponse {
            reply,
            text,
            prompt_tokens: prompt.len(),
            completion_tokens: generation.tokens.len(),
            latency: started.elapsed(),
        })
    }

    fn complete_raw(&mut self, prompt: &str, max_tokens: usize) -> Result<RawCompletion> {
        let ids = self.tokenizer.encode_with_special(prompt, false, false)?;
        let options = GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            stop_tokens: self.tokenizer.stop_tokens().to_vec(),
            score_first: vec![UNSAFE_TOKEN],
        };
        let generation = self.run(&ids, &options)?;
        Ok(RawCompletion {
            text: self.tokenizer.decode(&generation.tokens)?,
            unsafe_prob: generation.first_token_probs.first().copied(),
        })
    }
}
