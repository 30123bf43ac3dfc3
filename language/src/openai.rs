//! An OpenAI-compatible chat client (llama.cpp server, vLLM, Ollama, ...) behind
//! [`LanguageModel`], with a per-request timeout and retries with exponential backoff on
//! connection errors, 429 and 5xx answers.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::backend::{ChatRequest, ChatResponse, LanguageModel, RawCompletion, ToolSpec};
use crate::chat::{AssistantReply, Message, Role, StopReason, decode_assistant_text};
use crate::tools::{ToolCall, ToolName};
use crate::{LanguageError, Result};

/// Client settings (its `Debug` never shows the API key).
#[derive(Clone, PartialEq)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Bearer token, if the server wants one.
    pub api_key: Option<String>,
    /// Limit on one HTTP request (connect, send, receive).
    pub timeout: Duration,
    /// Attempts per call (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled after each.
    pub backoff: Duration,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl OpenAiConfig {
    /// Defaults: 30 s timeout, 3 attempts, 200 ms first backoff.
    pub fn new(base_url: &str, model: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key: None,
            timeout: Duration::from_secs(30),
            attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// Counters of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent.
    pub requests: u64,
    /// Of which were retries.
    pub retries: u64,
    /// Calls that failed after every attempt.
    pub failures: u64,
}

/// The client.
#[derive(Debug)]
pub struct OpenAiClient {
    config: OpenAiConfig,
    agent: ureq::Agent,
    stats: ClientStats,
    name: String,
}

fn remote(message: impl std::fmt::Display) -> LanguageError {
    LanguageError::Remote(message.to_string())
}

impl OpenAiClient {
    /// A client for `config`.
    pub fn new(config: OpenAiConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let name = format!("openai:{}", config.model);
        Self { config, agent, stats: ClientStats::default(), name }
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// POSTs `body` to `{base_url}/{path}`, retrying transient failures.
    fn post(&mut self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/{path}", self.config.base_url);
        let mut wait = self.config.backoff;
        let mut last_error = String::new();
        for attempt in 0..self.config.attempts.max(1) {
            if attempt > 0 {
                self.stats.retries += 1;
                std::thread::sleep(wait);
                wait *= 2;
            }
            self.stats.requests += 1;
            let mut request = self.agent.post(&url);
            if let Some(key) = &self.config.api_key {
                request = request.header("Authorization", &format!("Bearer {key}"));
            }
            match request.send_json(body) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        // A garbled answer is retried like a dropped connection.
                        match serde_json::from_str(&text) {
                            Ok(answer) => return Ok(answer),
                            Err(e) => last_error = format!("{url}: invalid JSON answer: {e}"),
                        }
                        tracing::warn!(attempt, error = %last_error, "LLM request failed");
                        continue;
                    }
                    last_error = format!("{url}: HTTP {status}: {}", text.chars().take(200).collect::<String>());
                    let transient = status == 429 || status >= 500;
                    if !transient {
                        break;
                    }
                }
                Err(e) => last_error = format!("{url}: {e}"),
            }
            tracing::warn!(attempt, error = %last_error, "LLM request failed");
        }
        self.stats.failures += 1;
        Err(remote(last_error))
    }
}

fn tool_json(t: &ToolSpec) -> Value {
    json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}})
}

fn message_json(m: &Message, last_call_id: &mut Option<String>) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Ipython => "tool",
    };
    let mut obj = Map::new();
    obj.insert("role".into(), role.into());
    obj.insert("content".into(), m.content.clone().into());
    if m.role == Role::Assistant && !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.call_id, "type": "function",
                       "function": {"name": c.tool_name.as_str(), "arguments": Value::Object(c.arguments.clone()).to_string()}})
            })
            .collect();
        *last_call_id = m.tool_calls.first().map(|c| c.call_id.clone());
        obj.insert("tool_calls".into(), Value::Array(calls));
    }
    if m.role == Role::Ipython {
        obj.insert("tool_call_id".into(), last_call_id.clone().unwrap_or_default().into());
    }
    Value::Object(obj)
}

/// Reads `choices[0].message` of a chat completion (a server's answer: any JSON gives a reply
/// or a typed error).
pub fn parse_chat(answer: &Value) -> Result<(AssistantReply, String)> {
    let choice = answer.pointer("/choices/0").ok_or_else(|| remote("answer has no choices"))?;
    let message = choice.get("message").ok_or_else(|| remote("answer has no message"))?;
    let text = message.get("content").and_then(Value::as_str).unwrap_or_default().to_owned();
    let stop = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => StopReason::OutOfTokens,
        Some("tool_calls") => StopReason::EndOfMessage,
        _ => StopReason::EndOfTurn,
    };
    let calls = message.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
    if calls.is_empty() {
        // Servers without a tool parser return the model's text: read it in Llama's formats.
        return Ok((decode_assistant_text(&text, stop), text));
    }
    let mut tool_calls = Vec::new();
    let mut tool_parse_error = None;
    for (i, call) in calls.iter().enumerate() {
        let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
        let raw_args = call.pointer("/function/arguments").cloned().unwrap_or(Value::Null);
        let args = match raw_args {
            Value::String(s) => serde_json::from_str::<Value>(&s).ok(),
            other => Some(other),
        };
        match args {
            Some(Value::Object(arguments)) => tool_calls.push(ToolCall {
                call_id: call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_owned),
                tool_name: ToolName::Custom(name.to_owned()),
                arguments,
            }),
            _ => tool_parse_error = Some(format!("arguments of {name} are not a JSON object")),
        }
    }
    let message =
        Message { role: Role::Assistant, content: String::new(), context: None, stop_reason: Some(stop), tool_calls };
    Ok((AssistantReply { message, tool_parse_error }, text))
}

impl LanguageModel for OpenAiClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat(&mut self, request: &ChatRequest) -> Result<ChatResponse> {
        let started = Instant::now();
        let mut last_call = None;
        let messages: Vec<Value> = request.messages.iter().map(|m| message_json(m, &mut last_call)).collect();
        let mut body = json!({"model": self.config.model, "messages": messages, "max_tokens": request.max_tokens, "seed": request.seed});
        if let ocellus_kernels::sampling::Sampling::TopP { temperature, top_p } = request.sampling {
            body["temperature"] = json!(temperature);
            body["top_p"] = json!(top_p);
        } else {
            body["temperature"] = json!(0.0);
        }
        if !request.tools.is_empty() {
            body["tools"] = Value::Array(request.tools.iter().map(tool_json).collect());
        }
        let answer = self.post("chat/completions", &body)?;
        let (reply, text) = parse_chat(&answer)?;
        let usage = |k: &str| answer.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0) as usize;
        Ok(ChatResponse {
            reply,
            text,
            prompt_tokens: usage("prompt_tokens"),
            completion_tokens: usage("completion_tokens"),
            latency: started.elapsed(),
        })
    }

    fn complete_raw(&mut self, prompt: &str, max_tokens: usize) -> Result<RawCompletion> {
        let body = json!({"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 5});
        let answer = self.post("completions", &body)?;
        let text = answer.pointer("/choices/0/text").and_then(Value::as_str).unwrap_or_default().to_owned();
        // `top_logprobs[0]` maps the first position's candidate tokens to log-probabilities.
        let unsafe_prob = answer
            .pointer("/choices/0/logprobs/top_logprobs/0")
            .and_then(Value::as_object)
            .map(|top| top.get("unsafe").and_then(Value::as_f64).map_or(0.0, |lp| lp.exp() as f32));
        Ok(RawCompletion { text, unsafe_prob })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_reaches_debug_output() {
        let config = OpenAiConfig { api_key: Some("sk-hunter2".into()), ..OpenAiConfig::new("http://h/v1", "m") };
        let shown = format!("{config:?} {:?}", OpenAiClient::new(config.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
