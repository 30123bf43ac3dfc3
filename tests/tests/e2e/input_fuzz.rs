#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included
//! Fuzzing everything that reads outside input (proptest; transport frames are in
//! `transport_fuzz`): configuration files, ROS 2 and text payloads, tracker prompts, tool-call
//! text in Llama's four formats, OpenAI-protocol answers, safetensors files and PyTorch
//! checkpoints. Each target gets arbitrary input and valid input with bytes flipped, cut,
//! duplicated or spliced with tokens of its grammar, and must give a value or a typed error,
//! never a panic.
//!
//! `make test` runs a short campaign; `OCELLUS_FUZZ_CASES=1000000 cargo test --release -p
//! ocellus-tests --test e2e input_fuzz` runs a long one (each target prints its executions).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ocellus_language::chat::{StopReason, decode_assistant_text};
use ocellus_language::openai::parse_chat;
use ocellus_model_actors::tracker::parse_prompt_message;
use ocellus_perception::weights::{self, Scope};
use ocellus_pipelines::PipelineConfig;
use ocellus_wire::ros2::{self, Attachment};
use ocellus_wire::{FrameLimits, compressed};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tch::Tensor;

/// Cases per target: `OCELLUS_FUZZ_CASES`, else `default`.
fn config(default: u32) -> Config {
    let cases = std::env::var("OCELLUS_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    Config { cases, failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

/// One operation on a byte string.
#[derive(Debug, Clone)]
enum Op {
    Flip(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
    Duplicate(usize, usize),
}

fn op(tokens: &'static [&'static str]) -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Op::Flip(at, v)),
        (any::<usize>(), 0usize..64).prop_map(|(at, n)| Op::Cut(at, n)),
        (any::<usize>(), prop::sample::select(tokens)).prop_map(|(at, t)| Op::Insert(at, t.as_bytes().to_vec())),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Op::Insert(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Op::Duplicate(at, n)),
    ]
}

/// `bytes` after `ops`.
fn mutate(mut bytes: Vec<u8>, ops: &[Op]) -> Vec<u8> {
    for op in ops {
        let len = bytes.len().max(1);
        match op {
            Op::Flip(at, v) => {
                if !bytes.is_empty() {
                    bytes[at % len] ^= v | 1;
                }
            }
            Op::Cut(at, n) => {
                let at = at % len.min(bytes.len() + 1);
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Op::Insert(at, b) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Op::Duplicate(at, n) => {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    let end = (at + n).min(bytes.len());
                    let piece = bytes[at..end].to_vec();
                    bytes.splice(end..end, piece);
                }
            }
        }
    }
    bytes
}

fn ops(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(tokens), 1..6)
}

/// Counts executions per target and prints them when the campaign ends.
struct Executions {
    name: &'static str,
    count: AtomicU64,
    started: std::time::Instant,
}

impl Executions {
    fn new(name: &'static str) -> Self {
        Self { name, count: AtomicU64::new(0), started: std::time::Instant::now() }
    }
    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Executions {
    fn drop(&mut self) {
        let n = self.count.load(Ordering::Relaxed);
        let s = self.started.elapsed().as_secs_f64();
        println!("fuzz {}: {n} executions in {s:.1} s ({:.0}/s), 0 crashes", self.name, n as f64 / s.max(1e-9));
    }
}

// --- Configuration files ----------------------------------------------------------------

const TOML_TOKENS: &[&str] = &[
    "\n[[source]]\n",
    "\n[[actor]]\n",
    "\n[[sink]]\n",
    "\n[runtime]\n",
    "\n[zenoh.x]\n",
    " = ",
    "\"",
    "'''",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\n",
    "#",
    "-1",
    "0",
    "1e309",
    "nan",
    "inf",
    "18446744073709551616",
    "true",
    "\"\\u0000\"",
    "inputs = [\"front\"]",
    "kind = \"sam2\"",
    "kind = \"agent\"",
    "edge = { policy = \"queue\", depth = 0 }",
    "session = \"x\"",
    "limits = { max_message_mb = 0 }",
    "max_tracks = 0",
    "image_size = -32",
];

fn shipped_configs() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn configurations_parse_or_fail_with_a_located_message() {
    let configs = shipped_configs();
    assert!(configs.len() >= 10);
    let runs = Executions::new("configurations");
    proptest!(config(3_000), |(which in any::<usize>(), ops in ops(TOML_TOKENS))| {
        let (path, text) = &configs[which % configs.len()];
        let bytes = mutate(text.clone().into_bytes(), &ops);
        let text = String::from_utf8_lossy(&bytes);
        runs.one();
        if let Err(e) = PipelineConfig::parse(path, &text) {
            prop_assert!(!e.to_string().is_empty());
        }
    });
}

// --- Payloads from zenoh and ROS 2 -------------------------------------------------------

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "1e400",
    "0.5",
    "\"id\"",
    "\"box\"",
    "\"points\"",
    "\"labels\"",
    "\"remove\"",
    "\"camera\"",
    "\\u0000",
    "\\ud800",
    "4294967296",
    "[[1,2]]",
    "NaN",
];

#[test]
fn ros2_and_text_payloads_decode_or_fail() {
    let valid = [
        ros2::encode_string("track the red cup").unwrap(),
        ros2::encode_string(r#"{"id": 3, "box": [1, 2, 30, 40]}"#).unwrap(),
        b"turn left".to_vec(),
    ];
    let runs = Executions::new("ros2_text_payloads");
    proptest!(config(20_000), |(which in any::<usize>(), ops in ops(JSON_TOKENS), raw in proptest::collection::vec(any::<u8>(), 0..128), use_raw in any::<bool>())| {
        let bytes = if use_raw { raw } else { mutate(valid[which % valid.len()].clone(), &ops) };
        runs.one();
        let _ = ros2::decode_string(&bytes);
        let _ = ros2::text_payload(&bytes);
        let _ = Attachment::decode(&bytes);
        if let Ok(image) = ros2::decode_image(&Bytes::copy_from_slice(&bytes)) {
            prop_assert!(image.layout.validate(image.pixels.len()).is_ok());
        }
        let _ = ros2::decode_compressed_image_within(&bytes, &FrameLimits::DEFAULT);
        for kind in [compressed::Kind::Jpeg, compressed::Kind::Png] {
            let _ = compressed::decode_rgb_within(kind, &bytes, &FrameLimits::DEFAULT);
        }
    });
}

#[test]
fn tracker_prompts_parse_or_fail() {
    let valid = [
        r#"{"id": 4, "box": [1, 2, 30, 40]}"#,
        r#"{"id": 2, "points": [[5, 5], [9, 9]], "labels": [1, 0], "camera": "front"}"#,
        r#"{"remove": 4}"#,
    ];
    let runs = Executions::new("tracker_prompts");
    proptest!(config(20_000), |(which in any::<usize>(), ops in ops(JSON_TOKENS))| {
        let bytes = mutate(valid[which % valid.len()].as_bytes().to_vec(), &ops);
        runs.one();
        let _ = parse_prompt_message(&bytes);
    });
}

// --- What language models answer ----------------------------------------------------------

const CALL_TOKENS: &[&str] = &[
    "<|python_tag|>",
    "<function=",
    "</function>",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "=",
    ",",
    "\"",
    "'",
    "\\",
    "\"name\"",
    "\"parameters\"",
    "\"type\": \"function\"",
    "alert",
    "track",
    ".call(",
    "None",
    "True",
    "1e999",
    "<|eom_id|>",
    "\u{202E}",
    "\u{200B}",
    "ａ",
];

#[test]
fn tool_call_text_in_every_format_reads_or_is_refused() {
    let valid = [
        r#"{"type": "function", "name": "alert", "parameters": {"text": "door", "level": 2}}"#,
        r#"{"name": "track", "parameters": {"box": [1, 2, 30, 40]}}"#,
        r#"<function=alert>{"text": "door"}</function>"#,
        r#"[alert(text="door", level=2), track(query='red cup', box=[1, 2.5, -3, 4e2])]"#,
        r#"<|python_tag|>brave_search.call(query="weather")"#,
        "<|python_tag|>import math\nprint(math.pi)",
    ];
    let runs = Executions::new("tool_call_text");
    proptest!(config(20_000), |(which in any::<usize>(), ops in ops(CALL_TOKENS), stop in 0u8..3)| {
        let bytes = mutate(valid[which % valid.len()].as_bytes().to_vec(), &ops);
        let text = String::from_utf8_lossy(&bytes);
        let stop = [StopReason::EndOfTurn, StopReason::EndOfMessage, StopReason::OutOfTokens][stop as usize];
        runs.one();
        let reply = decode_assistant_text(&text, stop);
        for call in &reply.message.tool_calls {
            prop_assert!(!call.tool_name.as_str().is_empty() || reply.tool_parse_error.is_none());
        }
    });
}

#[test]
fn openai_answers_read_or_fail() {
    let valid = [
        r#"{"choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}"#,
        r#"{"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "alert", "arguments": "{\"text\": \"x\"}"}}]}, "finish_reason": "tool_calls"}]}"#,
        r#"{"choices": [{"message": {"content": "[alert(text='x')]"}, "finish_reason": "length"}]}"#,
    ];
    let runs = Executions::new("openai_answers");
    proptest!(config(20_000), |(which in any::<usize>(), ops in ops(JSON_TOKENS))| {
        let bytes = mutate(valid[which % valid.len()].as_bytes().to_vec(), &ops);
        runs.one();
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let _ = parse_chat(&value);
        }
    });
}

// --- Weights files ----------------------------------------------------------------------------

const BINARY_TOKENS: &[&str] = &[
    "{",
    "}",
    "\"dtype\":\"F32\"",
    "\"shape\":[",
    "\"data_offsets\":[",
    "]",
    "18446744073709551615",
    "-1",
    "\"__metadata__\"",
    "PK\u{3}\u{4}",
    "\u{80}\u{2}",
    "storage",
    "FloatStorage",
];

#[test]
fn safetensors_files_load_or_fail_naming_the_file() {
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "fuzz_safetensors");
    let valid_path = dir.join("valid.safetensors");
    let a = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([2, 3]);
    let b = Tensor::from_slice(&[7i64, 8]);
    Tensor::write_safetensors(&[("layer.weight", &a), ("layer.steps", &b)], &valid_path).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let path = dir.join("case.safetensors");
    let runs = Executions::new("safetensors_files");
    proptest!(config(3_000), |(ops in ops(BINARY_TOKENS))| {
        std::fs::write(&path, mutate(valid.clone(), &ops)).unwrap();
        runs.one();
        let _ = weights::keys(&path);
        let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _w = vs.root().sub("layer").zeros("weight", &[2, 3]);
        if let Err(e) = weights::load(&mut vs, &path, Scope::Prefix("layer.weight")) {
            prop_assert!(e.to_string().contains("case.safetensors"), "{e}");
        }
    });
}

#[test]
fn pytorch_checkpoints_import_or_fail_naming_the_file() {
    // A small checkpoint as `torch.save` writes one (a zip of a pickle and storages).
    let dir = ocellus_tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "fuzz_checkpoints");
    let fixture = dir.join("valid.pt");
    let python = weights::venv_python().expect("the bootstrap venv's Python");
    let saved = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, torch; torch.save({'model': {'a.weight': torch.arange(6.).reshape(2, 3), \
'a.steps': torch.tensor([1, 2]), 'b.bias': torch.zeros(2, dtype=torch.bfloat16)}, 'epoch': 0}, sys.argv[1])",
        ])
        .arg(&fixture)
        .status()
        .unwrap();
    assert!(saved.success());
    let valid = std::fs::read(&fixture).unwrap();
    assert!(weights::convert_checkpoint(&fixture, &dir.join("valid.safetensors")).is_ok());
    let (path, out) = (dir.join("case.pt"), dir.join("case.safetensors"));
    let runs = Executions::new("pytorch_checkpoints");
    proptest!(config(3_000), |(ops in ops(BINARY_TOKENS))| {
        std::fs::write(&path, mutate(valid.clone(), &ops)).unwrap();
        runs.one();
        if let Err(e) = weights::convert_checkpoint(&path, &out) {
            prop_assert!(e.to_string().contains("case."), "{e}");
        }
    });
}
