//! The Llama 3 chat format, token-exact with `llama_models.llama3.chat_format.ChatFormat`.
//!
//! A dialog is `<|begin_of_text|>`, then per message
//! `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` (or `<|eom_id|>` for an
//! assistant message that stopped for a tool result), then the header of the assistant's turn.
//! Roles are system, user, assistant and ipython (tool results). An assistant message that
//! calls the code interpreter starts with `<|python_tag|>`.

use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;
use crate::tools::{
    BuiltinTool, ToolCall, ToolName, ToolPromptFormat, encode_tool_call, extract_builtin_call,
    extract_custom_tool_calls,
};
use crate::{LanguageError, Result};

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user or operator.
    User,
    /// The model.
    Assistant,
    /// A tool's result (`Role.tool` in llama-models, written as `ipython`).
    #[serde(alias = "tool")]
    Ipython,
}

impl Role {
    /// The role's name in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Ipython => "ipython",
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `<|eot_id|>` (or `<|end_of_text|>`): the turn is over.
    EndOfTurn,
    /// `<|eom_id|>`: a tool call waits for its result.
    EndOfMessage,
    /// The token limit or the KV-cache budget was reached.
    OutOfTokens,
}

/// One message of a dialog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// The text.
    pub content: String,
    /// RAG context appended to a user message after a blank line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// For an assistant message: why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// For an assistant message: its tool calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A message with text only.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), context: None, stop_reason: None, tool_calls: Vec::new() }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// A tool result.
    pub fn ipython(content: impl Into<String>) -> Self {
        Self::new(Role::Ipython, content)
    }
}

/// An assistant reply read back from the model's text.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantReply {
    /// The message: its content is empty when it holds tool calls.
    pub message: Message,
    /// Why a call-looking reply could not be read as a call (it is then kept as text).
    pub tool_parse_error: Option<String>,
}

/// Encodes dialogs for a [`Tokenizer`].
#[derive(Debug, Clone, Copy)]
pub struct ChatFormat<'a> {
    tokenizer: &'a Tokenizer,
}

impl<'a> ChatFormat<'a> {
    /// The format over `tokenizer`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer }
    }

    fn special(&self, name: &str) -> Result<u32> {
        self.tokenizer.special_id(name).ok_or_else(|| LanguageError::Tokenizer(format!("special token {name} missing")))
    }

    /// `<|start_header_id|>{role}<|end_header_id|>\n\n`.
    pub fn encode_header(&self, role: Role) -> Result<Vec<u32>> {
        let mut tokens = vec![self.special("<|start_header_id|>")?];
        tokens.extend(self.tokenizer.encode(role.as_str(), false, false)?);
        tokens.push(self.special("<|end_header_id|>")?);
        tokens.extend(self.tokenizer.encode("\n\n", false, false)?);
        Ok(tokens)
    }

    /// One message with its header and end token.
    pub fn encode_message(&self, message: &Message, format: ToolPromptFormat) -> Result<Vec<u32>> {
        let mut tokens = self.encode_header(message.role)?;
        let code_call =
            message.tool_calls.first().is_some_and(|t| t.tool_name == ToolName::Builtin(BuiltinTool::CodeInterpreter));
        if message.role == Role::Assistant && code_call {
            tokens.push(self.tokenizer.python_tag_id);
        }
        tokens.extend(self.tokenizer.encode(&message.content, false, false)?);
        if let (Role::User, Some(context)) = (message.role, &message.context) {
            tokens.extend(self.tokenizer.encode("\n\n", false, false)?);
            tokens.extend(self.tokenizer.encode(context, false, false)?);
        }
        if message.role == Role::Assistant {
            for call in &message.tool_calls {
                tokens.extend(self.tokenizer.encode(&encode_tool_call(call, format), false, false)?);
            }
        }
        let eom = message.role == Role::Assistant && message.stop_reason == Some(StopReason::EndOfMessage);
        tokens.push(if eom { self.tokenizer.eom_id } else { self.tokenizer.eot_id });
        Ok(tokens)
    }

    /// A whole dialog, ending with the assistant's header for the model to complete.
    pub fn encode_dialog_prompt(&self, messages: &[Message], format: ToolPromptFormat) -> Result<Vec<u32>> {
        let mut tokens = vec![self.tokenizer.bos_id];
        for message in messages {
            tokens.extend(self.encode_message(message, format)?);
        }
        tokens.extend(self.encode_header(Role::Assistant)?);
        Ok(tokens)
    }

    /// `decode_assistant_message`: the generated tokens (without the stop token, or with it)
    /// read back as a message with its tool calls.
    pub fn decode_assistant_message(&self, tokens: &[u32], stop_reason: StopReason) -> Result<AssistantReply> {
        let text = self.tokenizer.decode(tokens)?;
        Ok(decode_assistant_text(&text, stop_reason))
    }
}

/// `decode_assistant_message_from_content`, returning every call of a pythonic list.
pub fn decode_assistant_text(text: &str, stop_reason: StopReason) -> AssistantReply {
    let mut content = text.trim_matches(' ');
    let header = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    content = content.strip_prefix(header).unwrap_or(content);
    let ipython = content.starts_with("<|python_tag|>");
    content = content.strip_prefix("<|python_tag|>").unwrap_or(content);
    let mut stop_reason = stop_reason;
    if let Some(c) = content.strip_suffix("<|eot_id|>") {
        content = c;
        stop_reason = StopReason::EndOfTurn;
    } else if let Some(c) = content.strip_suffix("<|eom_id|>") {
        content = c;
        stop_reason = StopReason::EndOfMessage;
    }

    let mut calls: Vec<(ToolName, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    let mut tool_parse_error = None;
    match extract_custom_tool_calls(content) {
        Ok(found) if !found.is_empty() => {
            for call in found {
                match BuiltinTool::from_name(&call.name) {
                    // A built-in called in the custom format: its first argument is the query.
                    Some(builtin) => {
                        let mut args = serde_json::Map::new();
                        if let Some(first) = call.arguments.values().next() {
                            args.insert("query".into(), first.clone());
                        }
                        calls.push((ToolName::Builtin(builtin), args));
                    }
                    None => calls.push((ToolName::Custom(call.name), call.arguments)),
                }
            }
        }
        Ok(_) => {
            if let Some((name, query)) = extract_builtin_call(content) {
                let mut args = serde_json::Map::new();
                args.insert("query".into(), serde_json::Value::String(query));
                let tool = BuiltinTool::from_name(&name).map_or(ToolName::Custom(name), ToolName::Builtin);
                calls.push((tool, args));
            } else if ipython {
                let mut args = serde_json::Map::new();
                args.insert("code".into(), serde_json::Value::String(content.to_owned()));
                calls.push((ToolName::Builtin(BuiltinTool::CodeInterpreter), args));
            }
        }
        Err(e) => tool_parse_error = Some(e.to_string()),
    }
    let tool_calls: Vec<ToolCall> = calls
        .into_iter()
        .enumerate()
        .map(|(i, (tool_name, arguments))| ToolCall { call_id: format!("call_{i}"), tool_name, arguments })
        .collect();
    let content = if tool_calls.is_empty() { content.to_owned() } else { String::new() };
    let message = Message { role: Role::Assistant, content, context: None, stop_reason: Some(stop_reason), tool_calls };
    AssistantReply { message, tool_parse_error }
}
