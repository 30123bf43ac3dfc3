#![allow(clippy::unwrap_used)]
//! The Llama 3 tokenizer, chat format, tool-call parsing and Llama Guard 3 prompt, token by
//! token against Meta's reference (`llama-models` 0.3.0, `llama-cookbook`) on the fixtures of
//! `tests/fixtures/generate_language.py`.

use ocellus_language::chat::{ChatFormat, Message, Role, StopReason, decode_assistant_text};
use ocellus_language::guard::{GuardModel, GuardPrompt, GuardTemplate, Speaker, Turn};
use ocellus_language::tokenizer::{StreamDecoder, Tokenizer};
use ocellus_language::tools::{BuiltinTool, ToolCall, ToolName, ToolPromptFormat};
use ocellus_tests::fixtures_dir;
use serde_json::Value;

fn json(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn tokenizers() -> [(&'static str, Tokenizer); 2] {
    let dir = fixtures_dir();
    [
        ("tokenizer.model", Tokenizer::load(&dir.join("llama3_tokenizer.model")).unwrap()),
        ("tokenizer.json", Tokenizer::load(&dir.join("llama3_tokenizer.json")).unwrap()),
    ]
}

#[test]
fn corpus_is_token_exact_with_meta_for_both_files() {
    let corpus = json("tokenizer_corpus.json");
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "corpus has {} strings", cases.len());
    for (file, tok) in tokenizers() {
        assert_eq!(tok.n_words, 128_256, "{file}");
        assert_eq!(tok.stop_tokens().to_vec(), ids(&corpus["stop_tokens"]), "{file}");
        for (name, id) in corpus["special_tokens"].as_object().unwrap() {
            assert_eq!(tok.special_id(name), Some(id.as_u64().unwrap() as u32), "{file}: {name}");
        }
        let mut checked = 0;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let short: String = text.chars().take(40).collect();
            assert_eq!(tok.encode(text, false, false).unwrap(), ids(&case["ids"]), "{file}: encode {short:?}");
            assert_eq!(
                tok.encode_with_special(text, true, true).unwrap(),
                ids(&case["ids_special_bos_eos"]),
                "{file}: encode with specials {short:?}"
            );
            assert_eq!(
                tok.decode(&ids(&case["ids"])).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{file}: decode {short:?}"
            );
            if let Some(hf) = case["hf_ids"].as_array() {
                // transformers' fast tokenizer always splits special tokens out of the text.
                let hf: Vec<u32> = hf.iter().map(|x| x.as_u64().unwrap() as u32).collect();
                assert_eq!(tok.encode_with_special(text, false, false).unwrap(), hf, "{file}: HF {short:?}");
            }
            checked += 1;
        }
        assert_eq!(
            tok.decode(&ids(&corpus["decode_ids"])).unwrap(),
            corpus["decode_text"].as_str().unwrap(),
            "{file}: decode across the vocabulary"
        );
        println!("{file}: {checked} strings token-exact");
    }
}

#[test]
fn streamed_text_equals_the_whole_decode() {
    let (_, tok) = tokenizers().into_iter().next().unwrap();
    let text = "emoji 😀👍🏽 日本語 naïve — split across tokens";
    let ids = tok.encode(text, false, false).unwrap();
    let mut stream = StreamDecoder::default();
    let mut out = String::new();
    for id in &ids {
        out += &stream.push(&tok, *id).unwrap();
    }
    out += &stream.finish();
    assert_eq!(out, text);
    assert!(tok.decode(&[999_999]).is_err(), "ids outside the vocabulary are errors");
}

fn message_from_reference(v: &Value) -> Message {
    let role = match v["role"].as_str().unwrap() {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => Role::Ipython,
    };
    let tool_calls = v["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["tool_name"].as_str().unwrap();
            ToolCall {
                call_id: c["call_id"].as_str().unwrap().into(),
                tool_name: BuiltinTool::from_name(name).map_or(ToolName::Custom(name.into()), ToolName::Builtin),
                arguments: c["arguments"].as_object().unwrap().clone(),
            }
        })
        .collect();
    let stop_reason = match v["stop_reason"].as_str() {
        Some("end_of_message") => Some(StopReason::EndOfMessage),
        Some("end_of_turn") => Some(StopReason::EndOfTurn),
        _ => None,
    };
    Message {
        role,
        content: v["content"].as_str().unwrap().into(),
        context: v["context"].as_str().map(str::to_owned),
        stop_reason,
        tool_calls,
    }
}

#[test]
fn chat_format_is_token_exact_with_llama_models() {
    let cases = json("chat_cases.json");
    for (_, tok) in tokenizers() {
        let format = ChatFormat::new(&tok);
        for case in cases["dialogs"].as_array().unwrap() {
            let messages: Vec<Message> =
                case["messages"].as_array().unwrap().iter().map(message_from_reference).collect();
            let tool_format = match case["format"].as_str().unwrap() {
                "json" => ToolPromptFormat::Json,
                "function_tag" => ToolPromptFormat::FunctionTag,
                _ => ToolPromptFormat::PythonList,
            };
            let ours = format.encode_dialog_prompt(&messages, tool_format).unwrap();
            assert_eq!(ours, ids(&case["tokens"]), "dialog {} ({})", case["name"], case["format"]);
        }
    }
}

#[test]
fn replies_decode_like_llama_models() {
    let cases = json("chat_cases.json");
    for case in cases["replies"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let reply = decode_assistant_text(text, StopReason::EndOfTurn);
        let m = &reply.message;
        assert_eq!(m.content, case["content"].as_str().unwrap(), "content of {text:?}");
        let stop = if m.stop_reason == Some(StopReason::EndOfMessage) { "end_of_message" } else { "end_of_turn" };
        assert_eq!(stop, case["stop_reason"].as_str().unwrap(), "stop of {text:?}");
        let reference = case["tool_calls"].as_array().unwrap();
        // The reference keeps only the first call of a pythonic list; Ocellus keeps them all.
        assert_eq!(m.tool_calls.is_empty(), reference.is_empty(), "calls of {text:?}: {:?}", m.tool_calls);
        if let Some(expected) = reference.first() {
            assert_eq!(m.tool_calls[0].tool_name.as_str(), expected["tool_name"].as_str().unwrap(), "{text:?}");
            assert_eq!(Value::Object(m.tool_calls[0].arguments.clone()), expected["arguments"], "{text:?}");
        }
    }
    let multi =
        decode_assistant_text("[track(box=[1, 2, 3, 4], label='person'), alert(text=\"hi\")]", StopReason::EndOfTurn);
    assert_eq!(multi.message.tool_calls.len(), 2, "every call of a pythonic list is kept");
    let broken = decode_assistant_text("<function=alert>{\"text\": }</function>", StopReason::EndOfTurn);
    assert!(broken.message.tool_calls.is_empty() && broken.tool_parse_error.is_some(), "malformed calls say why");
}

#[test]
fn guard_prompt_is_token_exact_with_llama_cookbook() {
    let cases = json("guard_cases.json");
    for (_, tok) in tokenizers() {
        for case in cases["cases"].as_array().unwrap() {
            let turns: Vec<Turn> = case["conversation"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, t)| Turn {
                    speaker: if i % 2 == 0 { Speaker::User } else { Speaker::Agent },
                    text: t.as_str().unwrap().into(),
                })
                .collect();
            let prompt =
                GuardPrompt { model: GuardModel::Guard3_8B, excluded: vec![], template: GuardTemplate::Cookbook };
            let text = prompt.render(&turns).unwrap();
            assert_eq!(text, case["prompt"].as_str().unwrap());
            assert_eq!(tok.encode_with_special(&text, false, false).unwrap(), ids(&case["tokens"]));
        }
    }
}
