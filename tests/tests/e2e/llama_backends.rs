#![allow(clippy::unwrap_used)]
//! The language backends behind one trait: the native Llama 3 (seeded random weights, the
//! real tokenizer) and the OpenAI-compatible client against a real HTTP server started here
//! (scripted completions are acceptable only at this protocol boundary). Llama Guard runs
//! over both.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ocellus_language::backend::{ChatRequest, Guard, LanguageModel, NativeModel, ToolSpec};
use ocellus_language::chat::{Message, StopReason};
use ocellus_language::config::LlamaConfig;
use ocellus_language::guard::{GuardModel, GuardPrompt, Speaker, Turn, Verdict};
use ocellus_language::llama::Llama;
use ocellus_language::openai::{OpenAiClient, OpenAiConfig};
use ocellus_language::tokenizer::Tokenizer;
use ocellus_tests::fixtures_dir;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// A small model with the real vocabulary, so the real tokenizer and chat format apply.
fn small_config() -> LlamaConfig {
    let mut c = LlamaConfig::by_name("llama-3.2-1b").unwrap().with_layers(2);
    c.hidden_size = 128;
    c.intermediate_size = 256;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = Some(32);
    c
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::load(&fixtures_dir().join("llama3_tokenizer.model")).unwrap())
}

#[test]
fn native_backend_chats_and_guards_with_random_weights() {
    let model = Llama::random(small_config(), 3, Device::Cpu, Kind::Float).unwrap();
    let mut native = NativeModel::new("llama-small", model, tokenizer(), 512).unwrap();
    let tools = vec![ToolSpec {
        name: "alert".into(),
        description: "Raise an alert".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    }];
    let request = ChatRequest { tools, ..ChatRequest::new(vec![Message::user("What do you see?")], 12) };
    let first = native.chat(&request).unwrap();
    let again = native.chat(&request).unwrap();
    assert_eq!(first.text, again.text, "greedy chat is deterministic");
    assert!(first.completion_tokens <= 12 && first.prompt_tokens > 100, "tools are in the prompt");
    assert!(matches!(
        first.reply.message.stop_reason,
        Some(StopReason::OutOfTokens | StopReason::EndOfTurn | StopReason::EndOfMessage)
    ));

    let guard_model = Llama::random(small_config(), 4, Device::Cpu, Kind::Float).unwrap();
    let backend = NativeModel::new("guard-small", guard_model, tokenizer(), 1024).unwrap();
    let mut guard = Guard::new(Box::new(backend), GuardPrompt::new(GuardModel::Guard3_1B));
    let assessment = guard.assess(&[Turn { speaker: Speaker::User, text: "Open the door.".into() }]).unwrap();
    let score = assessment.unsafe_score.unwrap();
    assert!((0.0..=1.0).contains(&score), "P(unsafe) = {score}");
    // Random weights do not answer `safe`: the guard fails closed.
    assert!(!assessment.verdict.is_safe() || score < guard.threshold);
}

#[test]
fn bf16_runs_the_same_model_closely() {
    let config = small_config();
    // Weights rounded to bf16 for both, so only the compute precision differs.
    let tensors = || {
        let mut t = Llama::random_tensors(&config, 5).unwrap();
        t.iter_mut().for_each(|(_, w)| *w = w.to_kind(Kind::BFloat16).to_kind(Kind::Float));
        t
    };
    let f32_model = Llama::from_tensors(config.clone(), tensors(), Device::Cpu, Kind::Float, "r".as_ref()).unwrap();
    let bf16_model = Llama::from_tensors(config.clone(), tensors(), Device::Cpu, Kind::BFloat16, "r".as_ref()).unwrap();
    let ids = Tensor::from_slice(&[128_000i64, 791, 3446, 374, 264, 1296]).unsqueeze(0);
    let a = f32_model.forward(&ids, None, &mut f32_model.new_cache(1, 8).unwrap(), false).unwrap();
    let b = bf16_model.forward(&ids, None, &mut bf16_model.new_cache(1, 8).unwrap(), false).unwrap();
    assert_eq!(b.kind(), Kind::Float, "logits come back in fp32");
    let a_max = a.abs().max().double_value(&[]);
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = a_max;
    println!("bf16 vs fp32 logits: max abs difference {diff:.3e} (max |logit| {scale:.3e})");
    assert!(diff < 0.05 * scale, "bf16 drifted by {diff}");
}

/// A real HTTP server on loopback answering with `respond(request_index, path, body)`.
fn serve(
    respond: impl Fn(usize, &str, &Value) -> (u16, Value, Duration) + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            std::io::Read::read_to_string(request.as_reader(), &mut body).unwrap();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let index = seen.fetch_add(1, Ordering::SeqCst);
            let (status, answer, delay) = respond(index, request.url(), &body);
            std::thread::sleep(delay);
            let response = tiny_http::Response::from_string(answer.to_string()).with_status_code(status);
            request.respond(response).ok();
        }
    });
    (format!("http://{addr}/v1"), count)
}

fn completion(message: Value) -> Value {
    json!({"choices": [{"message": message, "finish_reason": "stop"}], "usage": {"prompt_tokens": 11, "completion_tokens": 5}})
}

#[test]
fn openai_client_speaks_the_protocol_retries_and_times_out() {
    let (url, count) = serve(|i, path, body| {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["model"], "llama3.2");
        assert_eq!(body["tools"][0]["function"]["name"], "track");
        match i {
            0 => (503, json!({"error": "loading"}), Duration::ZERO),
            1 => (
                200,
                completion(json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "x1", "type": "function", "function": {"name": "track", "arguments": "{\"box\": [1, 2, 3, 4]}"}}
                ]})),
                Duration::ZERO,
            ),
            // A server without a tool parser returns Llama's own pythonic text.
            2 => (200, completion(json!({"role": "assistant", "content": "[untrack(track_id=3)]"})), Duration::ZERO),
            3 => (400, json!({"error": "bad request"}), Duration::ZERO),
            _ => (200, completion(json!({"role": "assistant", "content": "late"})), Duration::from_millis(1500)),
        }
    });
    let mut config = OpenAiConfig::new(&url, "llama3.2");
    config.backoff = Duration::from_millis(10);
    config.timeout = Duration::from_millis(500);
    config.attempts = 2;
    let mut client = OpenAiClient::new(config);
    let tools =
        vec![ToolSpec { name: "track".into(), description: "Track".into(), parameters: json!({"type": "object"}) }];
    let request = ChatRequest { tools, ..ChatRequest::new(vec![Message::system("s"), Message::user("track it")], 32) };

    let r = client.chat(&request).unwrap();
    assert_eq!(r.reply.message.tool_calls[0].tool_name.as_str(), "track");
    assert_eq!(r.reply.message.tool_calls[0].arguments["box"], json!([1, 2, 3, 4]));
    assert_eq!((r.prompt_tokens, r.completion_tokens), (11, 5));
    assert_eq!(client.stats().retries, 1, "the 503 was retried");

    let r = client.chat(&request).unwrap();
    assert_eq!(r.reply.message.tool_calls[0].tool_name.as_str(), "untrack");

    let err = client.chat(&request).unwrap_err().to_string();
    assert!(err.contains("HTTP 400"), "4xx is not retried: {err}");
    let err = client.chat(&request).unwrap_err().to_string();
    assert!(err.contains("imeout") || err.contains("timed out"), "{err}");
    // The server answers one request at a time: wait for it to see the retried one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count.load(Ordering::SeqCst) < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count.load(Ordering::SeqCst), 6, "503 + ok + ok + 400 + two timed-out attempts");
    assert_eq!(client.stats().failures, 2);
}

#[test]
fn guard_over_an_openai_server_reads_verdict_and_score() {
    let (url, _) = serve(|_, path, body| {
        assert_eq!(path, "/v1/completions");
        let prompt = body["prompt"].as_str().unwrap();
        assert!(prompt.contains("<BEGIN UNSAFE CONTENT CATEGORIES>") && prompt.contains("S13: Elections."));
        let unsafe_text = prompt.contains("weapon");
        let text = if unsafe_text { "unsafe\nS9" } else { "safe" };
        let lp = if unsafe_text { -0.05f64 } else { -4.0 };
        (
            200,
            json!({"choices": [{"text": text, "logprobs": {"top_logprobs": [{"unsafe": lp, "safe": -0.1}]}}]}),
            Duration::ZERO,
        )
    });
    let client = OpenAiClient::new(OpenAiConfig::new(&url, "llama-guard3:1b"));
    let mut guard = Guard::new(Box::new(client), GuardPrompt::new(GuardModel::Guard3_1B));
    let ok = guard.assess(&[Turn { speaker: Speaker::User, text: "Describe the scene.".into() }]).unwrap();
    assert_eq!(ok.verdict, Verdict::Safe);
    assert!(!ok.blocked(guard.threshold));
    let bad = guard.assess(&[Turn { speaker: Speaker::User, text: "Build a weapon.".into() }]).unwrap();
    assert_eq!(bad.categories(), ["S9"]);
    assert!(bad.blocked(guard.threshold) && bad.unsafe_score.unwrap() > 0.9);
}

#[test]
fn sampling_is_seeded_and_stop_tokens_end_generation() {
    use ocellus_kernels::sampling::Sampling;
    use ocellus_language::generate::{Finish, GenerateOptions, generate};
    use std::ops::ControlFlow;
    let model = Llama::random(small_config(), 6, Device::Cpu, Kind::Float).unwrap();
    let prompt = [128_000u32, 791, 3446, 374];
    let run = |options: &GenerateOptions| {
        let mut cache = model.new_cache(1, 64).unwrap();
        generate(&model, None, &mut cache, &prompt, options, |_| ControlFlow::Continue(())).unwrap()
    };
    let sampled = |seed| GenerateOptions {
        sampling: Sampling::TopP { temperature: 1.0, top_p: 0.95 },
        seed,
        stop_tokens: vec![],
        ..GenerateOptions::greedy(16)
    };
    assert_eq!(run(&sampled(1)).tokens, run(&sampled(1)).tokens, "same seed, same tokens");
    assert_ne!(run(&sampled(1)).tokens, run(&sampled(2)).tokens, "another seed, other tokens");
    let greedy = run(&GenerateOptions { stop_tokens: vec![], ..GenerateOptions::greedy(8) });
    assert_eq!(greedy.tokens.len(), 8);
    let stop_at = greedy.tokens[3];
    let stopped = run(&GenerateOptions { stop_tokens: vec![stop_at], ..GenerateOptions::greedy(8) });
    let first = greedy.tokens.iter().position(|&t| t == stop_at).unwrap();
    assert_eq!(stopped.finish, Finish::Stop(stop_at));
    assert_eq!(stopped.tokens, greedy.tokens[..first].to_vec(), "the stop token ends generation and is not kept");
}

/// The KV cache is the `context` the configuration gives, allocated once: a prompt that does
/// not fit is refused with both sizes named (the agent then refuses the instruction, or the
/// Guard blocks: it fails closed), nothing grows, and the next request that fits runs.
#[test]
fn a_prompt_beyond_the_kv_cache_is_refused_and_the_next_one_runs() {
    const CONTEXT: i64 = 96;
    let model = Llama::random(small_config(), 3, Device::Cpu, Kind::Float).unwrap();
    let mut native = NativeModel::new("llama-small", model, tokenizer(), CONTEXT).unwrap();
    let long = "Describe every object in the hallway in great detail, please. ".repeat(12);
    let error = native.chat(&ChatRequest::new(vec![Message::user(long)], 8)).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, ocellus_language::LanguageError::CacheFull { capacity: CONTEXT, needed } if needed > CONTEXT),
        "{text}"
    );
    let short = native.chat(&ChatRequest::new(vec![Message::user("Hi")], 200)).unwrap();
    assert!(short.prompt_tokens + short.completion_tokens <= CONTEXT as usize, "answers stop at the cache's end");
}

/// A server that resets the connection, answers garbage or speaks no HTTP at all: each is
/// retried, a call fails with a clear error once its attempts are spent (never a panic, never
/// a hang), and the next good answer is read as usual.
#[test]
fn openai_client_survives_resets_and_garbage() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let reply: &[u8] = match i {
                0 => continue, // dropped without an answer: the connection is reset
                1 => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!",
                2 => {
                    let body = completion(json!({"role": "assistant", "content": "fine"})).to_string();
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).ok();
                    stream.write_all(body.as_bytes()).ok();
                    continue;
                }
                _ => b"\x00\xff\xfe garbage that is not HTTP\r\n\r\n",
            };
            stream.write_all(reply).ok();
        }
    });
    let mut config = OpenAiConfig::new(&url, "m");
    config.backoff = Duration::from_millis(10);
    config.timeout = Duration::from_secs(2);
    config.attempts = 2;
    let mut client = OpenAiClient::new(config);
    let request = ChatRequest::new(vec![Message::user("hello")], 8);
    let err = client.chat(&request).unwrap_err().to_string();
    assert!(err.contains("invalid JSON answer"), "reset, retried, then garbage JSON: {err}");
    assert_eq!(client.stats().retries, 1);
    assert_eq!(client.chat(&request).unwrap().text, "fine");
    let err = client.chat(&request).unwrap_err().to_string();
    assert!(!err.is_empty(), "not HTTP: {err}");
    assert_eq!((client.stats().retries, client.stats().failures), (2, 2));
}
