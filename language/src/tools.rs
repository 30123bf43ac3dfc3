//! Tool calls in Llama 3's formats: encoding an assistant's call into the prompt, and parsing
//! the model's reply, exactly as `llama_models.llama3.tool_utils.ToolUtils` does.
//!
//! Formats:
//! - JSON custom tools (3.1): `{"type": "function", "name": ..., "parameters": {...}}` or
//!   `{"name": ..., "parameters": ...}`;
//! - the tag form (3.1): `<function=NAME>{json}</function>`;
//! - pythonic lists (3.2 1B/3B): `[f(a=1, b="x"), g(c=[1, 2])]`, keyword arguments only,
//!   literal values; several calls are allowed;
//! - built-in tools after `<|python_tag|>`: `brave_search.call(query="...")`, and plain code
//!   for the code interpreter.
//!
//! Arguments are kept as [`serde_json::Value`] objects with insertion order, so that an
//! encoded call prints its keys in the order they were given, as Python's `json.dumps` does.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The tools Llama 3.1 was trained to call by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinTool {
    /// `brave_search.call(query="...")`.
    BraveSearch,
    /// `wolfram_alpha.call(query="...")`.
    WolframAlpha,
    /// `photogen.call(query="...")`.
    Photogen,
    /// Python code after `<|python_tag|>`.
    CodeInterpreter,
}

impl BuiltinTool {
    /// Every built-in tool.
    pub const ALL: [BuiltinTool; 4] = [Self::BraveSearch, Self::WolframAlpha, Self::Photogen, Self::CodeInterpreter];

    /// The tool's name in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Self::BraveSearch => "brave_search",
            Self::WolframAlpha => "wolfram_alpha",
            Self::Photogen => "photogen",
            Self::CodeInterpreter => "code_interpreter",
        }
    }

    /// The built-in tool called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Which tool a call is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolName {
    /// A built-in tool.
    Builtin(BuiltinTool),
    /// A custom (JSON-described) tool.
    Custom(String),
}

impl ToolName {
    /// The name as it appears in prompts.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Builtin(b) => b.name(),
            Self::Custom(s) => s,
        }
    }
}

/// One call of a tool by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// An id to match the result to the call.
    pub call_id: String,
    /// The tool.
    pub tool_name: ToolName,
    /// The arguments, by name.
    pub arguments: Map<String, Value>,
}

/// How custom tool calls are written in the prompt (`ToolPromptFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolPromptFormat {
    /// `{"type": "function", "name": ..., "parameters": ...}` (3.1).
    #[default]
    Json,
    /// `<function=NAME>{...}</function>` (3.1).
    FunctionTag,
    /// `[name(a=1)]` (3.2 1B/3B).
    PythonList,
}

/// Why a reply's tool call could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolParseError {
    /// The text is not valid in the format it looks like.
    #[error("malformed tool call: {0}")]
    Malformed(String),
}

/// `ToolUtils.encode_tool_call`: the text of an assistant's call in the prompt.
pub fn encode_tool_call(call: &ToolCall, format: ToolPromptFormat) -> String {
    let query = || call.arguments.get("query").map(python_str).unwrap_or_default();
    match &call.tool_name {
        ToolName::Builtin(BuiltinTool::CodeInterpreter) => {
            call.arguments.get("code").map(python_str).unwrap_or_default()
        }
        ToolName::Builtin(b) => format!("{}.call(query=\"{}\")", b.name(), query()),
        ToolName::Custom(name) => match format {
            ToolPromptFormat::Json => {
                let mut obj = Map::new();
                obj.insert("type".into(), Value::String("function".into()));
                obj.insert("name".into(), Value::String(name.clone()));
                obj.insert("parameters".into(), Value::Object(call.arguments.clone()));
                python_json_dumps(&Value::Object(obj))
            }
            ToolPromptFormat::FunctionTag => {
                format!("<function={name}>{}</function>", python_json_dumps(&Value::Object(call.arguments.clone())))
            }
            ToolPromptFormat::PythonList => {
                let args: Vec<String> =
                    call.arguments.iter().map(|(k, v)| format!("{k}={}", python_list_value(v))).collect();
                format!("[{name}({})]", args.join(", "))
            }
        },
    }
}

/// Python's `str(value)` for a string argument, `json.dumps` for anything else.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_json_dumps(other),
    }
}

/// `format_value` of the pythonic encoder (strings are quoted, not escaped, as in the reference).
fn python_list_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => python_number(n),
        Value::Array(items) => format!("[{}]", items.iter().map(python_list_value).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            format!(
                "{{{}}}",
                map.iter().map(|(k, v)| format!("{k}={}", python_list_value(v))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// Python's `repr` of a JSON number (`1.0`, `1e-05`, `1e+16`).
fn python_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    python_float_repr(f)
}

/// Python's `float.__repr__`: the shortest round-trip digits, scientific below 1e-4 and from
/// 1e16.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') { plain } else { format!("{plain}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `json.dumps(value)` with its defaults: `", "` and `": "` separators,
/// `ensure_ascii=True`, keys in insertion order.
pub fn python_json_dumps(value: &Value) -> String {
    let mut out = String::new();
    dump(value, &mut out);
    out
}

fn dump(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&python_number(n)),
        Value::String(s) => dump_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump(v, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump(v, out);
            }
            out.push('}');
        }
    }
}

/// Python's `json.dumps(value, indent=indent)`: one item per line, `","` and `": "`
/// separators, `ensure_ascii=True`.
pub fn python_json_dumps_indent(value: &Value, indent: usize) -> String {
    let mut out = String::new();
    dump_indent(value, indent, 0, &mut out);
    out
}

fn dump_indent(value: &Value, indent: usize, level: usize, out: &mut String) {
    let pad = |n: usize, out: &mut String| {
        out.push('\n');
        out.push_str(&" ".repeat(indent * n));
    };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(level + 1, out);
                dump_indent(v, indent, level + 1, out);
            }
            pad(level, out);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(level + 1, out);
                dump_str(k, out);
                out.push_str(": ");
                dump_indent(v, indent, level + 1, out);
            }
            pad(level, out);
            out.push('}');
        }
        other => dump(other, out),
    }
}

fn dump_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A call found in a reply, before it gets an id.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    /// The tool's name as written.
    pub name: String,
    /// Its arguments.
    pub arguments: Map<String, Value>,
}

/// `ToolUtils.maybe_extract_custom_tool_call`, returning every call of a pythonic list
/// (the reference keeps only the first). `Ok(empty)` when the text is not a custom call.
pub fn extract_custom_tool_calls(text: &str) -> Result<Vec<ParsedCall>, ToolParseError> {
    if let Some(call) = function_tag_call(text)? {
        return Ok(vec![call]);
    }
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
        let is_call = obj.get("type").and_then(Value::as_str) == Some("function") || obj.contains_key("name");
        if !is_call {
            return Ok(Vec::new());
        }
        let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| malformed("JSON call without a \"name\""))?;
        let arguments = match obj.get("parameters") {
            Some(Value::Object(p)) => p.clone(),
            Some(_) => return Err(malformed("\"parameters\" is not an object")),
            None => return Err(malformed("JSON call without \"parameters\"")),
        };
        return Ok(vec![ParsedCall { name: name.to_owned(), arguments }]);
    }
    Ok(python_list_calls(text).unwrap_or_default())
}

fn malformed(message: &str) -> ToolParseError {
    ToolParseError::Malformed(message.to_owned())
}

/// `<function=(?P<function_name>[^}]+)>(?P<args>{.*?})`, arguments read as JSON after
/// replacing `'` with `"` (as the reference does).
fn function_tag_call(text: &str) -> Result<Option<ParsedCall>, ToolParseError> {
    const OPEN: &str = "<function=";
    let mut search = 0;
    while let Some(found) = text[search..].find(OPEN) {
        let start = search + found + OPEN.len();
        search = start;
        let rest = &text[start..];
        // `[^}]+>`: the name runs to the last `>` before any `}` that is followed by `{`.
        let limit = rest.find('}').unwrap_or(rest.len());
        let Some((gt, open_brace)) = rest[..limit]
            .char_indices()
            .filter(|(_, c)| *c == '>')
            .map(|(i, _)| i)
            .filter(|&i| i > 0 && rest[i + 1..].starts_with('{'))
            .map(|i| (i, i + 1))
            .next_back()
        else {
            continue;
        };
        // `{.*?}`: the shortest argument text ending in `}` (`.` does not match newlines).
        let args_start = open_brace;
        let Some(close) = rest[args_start..].char_indices().take_while(|(_, c)| *c != '\n').find(|(_, c)| *c == '}')
        else {
            continue;
        };
        let name = &rest[..gt];
        let args = &rest[args_start..=args_start + close.0];
        return match serde_json::from_str::<Value>(&args.replace('\'', "\"")) {
            Ok(Value::Object(arguments)) => Ok(Some(ParsedCall { name: name.to_owned(), arguments })),
            Ok(_) | Err(_) => Err(malformed(&format!("arguments of <function={name}> are not a JSON object: {args}"))),
        };
    }
    Ok(None)
}

/// `maybe_extract_builtin_tool_call`: `\b(\w+)\.call\(query="([^"]*)"\)`.
pub fn extract_builtin_call(text: &str) -> Option<(String, String)> {
    const CALL: &str = ".call(query=\"";
    let mut search = 0;
    while let Some(found) = text[search..].find(CALL) {
        let dot = search + found;
        search = dot + 1;
        let name_start =
            text[..dot].char_indices().rev().take_while(|(_, c)| is_word(*c)).last().map_or(dot, |(i, _)| i);
        if name_start == dot {
            continue;
        }
        let rest = &text[dot + CALL.len()..];
        let Some(end) = rest.find('"') else { continue };
        if !rest[end..].starts_with("\")") {
            continue;
        }
        return Some((text[name_start..dot].to_owned(), rest[..end].to_owned()));
    }
    None
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses a pythonic list of calls: `[f(a=1), g(b="x")]`. `None` when the text is not such a
/// list (keyword arguments only, at least one call, literal values).
pub fn python_list_calls(text: &str) -> Option<Vec<ParsedCall>> {
    let mut p = PyParser { s: text.as_bytes(), i: 0 };
    p.ws();
    p.expect(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.peek() == Some(b']') && !calls.is_empty() {
            p.i += 1;
            break;
        }
        let name = p.ident()?;
        p.ws();
        p.expect(b'(')?;
        let mut arguments = Map::new();
        loop {
            p.ws();
            if p.peek() == Some(b')') {
                p.i += 1;
                break;
            }
            let key = p.ident()?;
            p.ws();
            p.expect(b'=')?;
            let value = p.literal()?;
            arguments.insert(key, value);
            p.ws();
            match p.next()? {
                b',' => continue,
                b')' => break,
                _ => return None,
            }
        }
        calls.push(ParsedCall { name, arguments });
        p.ws();
        match p.next()? {
            b',' => continue,
            b']' => break,
            _ => return None,
        }
    }
    p.ws();
    (p.i == p.s.len()).then_some(calls)
}

/// A small reader of Python literals (`ast.literal_eval` for str, int, float, bool, None,
/// lists, tuples, dicts and unary minus).
struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        let text = std::str::from_utf8(&self.s[start..]).ok()?;
        let len: usize = text.chars().take_while(|c| is_word(*c)).map(char::len_utf8).sum();
        if len == 0 || text.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        self.i += len;
        Some(text[..len].to_owned())
    }

    fn literal(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'"' | b'\'' => self.string().map(Value::String),
            b'[' | b'(' => {
                let close = if self.next()? == b'[' { b']' } else { b')' };
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(close) {
                        self.i += 1;
                        return Some(Value::Array(items));
                    }
                    items.push(self.literal()?);
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Some(Value::Array(items)),
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut map = Map::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Some(Value::Object(map));
                    }
                    let key = match self.literal()? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    self.ws();
                    self.expect(b':')?;
                    let value = self.literal()?;
                    map.insert(key, value);
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        b'}' => return Some(Value::Object(map)),
                        _ => return None,
                    }
                }
            }
            b'-' | b'+' | b'0'..=b'9' | b'.' => self.number(),
            _ => match self.ident()?.as_str() {
                "True" => Some(Value::Bool(true)),
                "False" => Some(Value::Bool(false)),
                "None" => Some(Value::Null),
                _ => None,
            },
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        let mut negative = false;
        while let Some(c @ (b'-' | b'+')) = self.peek() {
            negative ^= c == b'-';
            self.i += 1;
            self.ws();
        }
        let digits_start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-')) {
            // Only take `+`/`-` right after an exponent marker.
            if matches!(self.peek(), Some(b'+' | b'-')) && !matches!(self.s.get(self.i - 1), Some(b'e' | b'E')) {
                break;
            }
            self.i += 1;
        }
        let text: String = std::str::from_utf8(&self.s[digits_start..self.i]).ok()?.replace('_', "");
        if text.is_empty() || self.i == start {
            return None;
        }
        let sign = if negative { -1 } else { 1 };
        if let Ok(v) = text.parse::<i64>() {
            return Some(Value::from(sign * v));
        }
        let f: f64 = text.parse().ok()?;
        serde_json::Number::from_f64(if negative { -f } else { f }).map(Value::Number)
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.next()?;
        let mut bytes = Vec::new();
        loop {
            let c = self.next()?;
            if c == quote {
                break;
            }
            if c != b'\\' {
                bytes.push(c);
                continue;
            }
            let e = self.next()?;
            let simple = match e {
                b'n' => Some(b'\n'),
                b't' => Some(b'\t'),
                b'r' => Some(b'\r'),
                b'0' => Some(0),
                b'\\' | b'\'' | b'"' => Some(e),
                b'\n' => continue,
                _ => None,
            };
            if let Some(b) = simple {
                bytes.push(b);
                continue;
            }
            let width = match e {
                b'x' => 2,
                b'u' => 4,
                b'U' => 8,
                _ => {
                    bytes.extend([b'\\', e]);
                    continue;
                }
            };
            let hex = std::str::from_utf8(self.s.get(self.i..self.i + width)?).ok()?;
            self.i += width;
            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
        String::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs() {
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(0.1), "0.1");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(123456.5), "123456.5");
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.5, "é\n"], "a": null}"#).unwrap();
        assert_eq!(python_json_dumps(&v), r#"{"b": [1, 2.5, "\u00e9\n"], "a": null}"#);
    }

    #[test]
    fn pythonic_lists() {
        let calls = python_list_calls(
            r#"[get_weather(city='San Francisco', metric="celsius"), f(n=-3, x=[1, 2.5], d={'k': True}, z=None)]"#,
        )
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments["city"], "San Francisco");
        assert_eq!(calls[1].arguments["n"], -3);
        assert_eq!(calls[1].arguments["x"], serde_json::json!([1, 2.5]));
        assert_eq!(calls[1].arguments["d"], serde_json::json!({"k": true}));
        assert!(python_list_calls("[f(1)]").is_none(), "positional arguments are refused");
        assert!(python_list_calls("[]").is_none());
        assert!(python_list_calls("[f(a=b)]").is_none(), "names are not literals");
        assert!(python_list_calls("[f(a=1)] trailing").is_none());
    }

    #[test]
    fn tags_json_and_builtins() {
        let c = extract_custom_tool_calls(r#"<function=track>{"box": [1, 2, 3, 4]}</function>"#).unwrap();
        assert_eq!(c[0].name, "track");
        let c = extract_custom_tool_calls(r#"{"type": "function", "name": "alert", "parameters": {"text": "hi"}}"#)
            .unwrap();
        assert_eq!(c[0].arguments["text"], "hi");
        assert!(extract_custom_tool_calls(r#"{"name": "alert"}"#).is_err());
        assert!(extract_custom_tool_calls("just words").unwrap().is_empty());
        assert_eq!(
            extract_builtin_call(r#"brave_search.call(query="weather in Menlo Park")"#),
            Some(("brave_search".into(), "weather in Menlo Park".into()))
        );
    }
}
