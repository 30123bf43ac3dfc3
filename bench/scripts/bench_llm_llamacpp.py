"""llama.cpp timing for `ocellus-bench llm` (run by a Python with `llama-cpp-python` and `gguf`).

usage: bench_llm_llamacpp.py WEIGHTS CONFIG_JSON THREADS PROMPT_TOKENS DECODE_TOKENS RUNS SCRATCH TOKENS
  WEIGHTS   the seeded weights Ocellus timed (safetensors, transformers' key names, fp32)
  SCRATCH   folder for the GGUF files
  TOKENS    comma-separated: Ocellus's prompt, then its fp32 greedy continuation
prints one line per GGUF type: gguf TYPE prompt_tokens_per_s decode_tokens_per_s file_bytes greedy_agreement
(agreement: the share of Ocellus's fp32 greedy tokens that llama.cpp's own greedy decoding of the
same prompt reproduces, position by position; shows the conversion kept the model)

The weights become an F32 GGUF (llama.cpp's `llama` architecture: its tensor names, the query and
key rows in its rotary layout, Llama 3's RoPE scaling as `rope_freqs`, a placeholder vocabulary of
the right size: the bench feeds token ids), then Q8_0 and Q4_0 files by llama.cpp's own quantizer
(`llama_model_quantize`, the library behind `llama-quantize`).
"""
import ctypes
import json
import math
import os
import statistics
import sys
import time

import numpy as np
from safetensors.numpy import load_file

import gguf
import llama_cpp

weights_path, config_path = sys.argv[1], sys.argv[2]
threads, prompt_len, decode_len, runs = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
scratch = sys.argv[7]
reference_tokens = [int(t) for t in sys.argv[8].split(",")]
prompt, reference_continuation = reference_tokens[:prompt_len], reference_tokens[prompt_len:]
with open(config_path) as f:
    cfg = json.load(f)

d, n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
head_dim = cfg.get("head_dim") or d // n_head
vocab = cfg["vocab_size"]
# llama.cpp's file types (llama.h): all F32, mostly Q8_0, mostly Q4_0.
FTYPE_F32, FTYPE_Q8_0, FTYPE_Q4_0 = 0, 7, 2


def rotary_rows(w, heads):
    """transformers keeps each head's rotary pairs as halves; llama.cpp interleaves them."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_divisors():
    """Llama 3's frequency scaling (its published `apply_scaling`) as per-pair divisors."""
    s = cfg.get("rope_scaling")
    if not s:
        return None
    base = cfg["rope_theta"]
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (base ** (-i / head_dim))
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1.0 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_f32_gguf(path):
    t = load_file(weights_path)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(vocab)
    w.add_file_type(FTYPE_F32)
    # A placeholder SentencePiece vocabulary: two specials, the 256 byte tokens, then names.
    tokens = ["<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"<t{i}>" for i in range(len(tokens), vocab)]
    types = [3, 3] + [6] * 256 + [1] * (vocab - 258)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    if "lm_head.weight" in t:
        w.add_tensor("output.weight", t["lm_head.weight"])
    divisors = rope_divisors()
    if divisors is not None:
        w.add_tensor("rope_freqs.weight", divisors)
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(n_layers):
        for hf, ours in names.items():
            x = t[f"model.layers.{i}.{hf}"]
            if hf == "self_attn.q_proj.weight":
                x = rotary_rows(x, n_head)
            elif hf == "self_attn.k_proj.weight":
                x = rotary_rows(x, n_kv)
            w.add_tensor(f"blk.{i}.{ours}", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def time_model(path):
    llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_len + decode_len + 8, n_batch=max(prompt_len, 8),
                          n_threads=threads, n_threads_batch=threads, verbose=False)

    n_vocab = llm.n_vocab()

    def next_token():
        # The last position's logits (the only ones llama.cpp computes without `logits_all`).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def greedy(n):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        out = [next_token()]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(next_token())
        return out, prefill, time.perf_counter() - start

    greedy(2)  # warm-up
    prompt_rates, decode_rates, tokens = [], [], []
    for _ in range(runs):
        tokens, prefill, decode = greedy(decode_len)
        prompt_rates.append(prompt_len / prefill)
        decode_rates.append((decode_len - 1) / decode)
    agree = sum(a == b for a, b in zip(tokens, reference_continuation)) / max(len(reference_continuation), 1)
    del llm
    return statistics.median(prompt_rates), statistics.median(decode_rates), agree


os.makedirs(scratch, exist_ok=True)
f32 = os.path.join(scratch, "model-f32.gguf")
write_f32_gguf(f32)
files = [("F32", f32)]
for name, ftype in (("Q8_0", FTYPE_Q8_0), ("Q4_0", FTYPE_Q4_0)):
    path = os.path.join(scratch, f"model-{name.lower()}.gguf")
    quantize(f32, path, ftype)
    files.append((name, path))
for name, path in files:
    p, dtps, agree = time_model(path)
    print(f"gguf {name} {p} {dtps} {os.path.getsize(path)} {agree}", flush=True)
