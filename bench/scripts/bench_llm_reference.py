"""transformers' LlamaForCausalLM timing for `ocellus-bench llm` (run by the venv's Python).

usage: bench_llm_reference.py CONFIG_JSON THREADS PROMPT_TOKENS DECODE_TOKENS RUNS [f32|bf16]
prints: prompt_tokens_per_s decode_tokens_per_s (medians)
"""
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

config_path, threads, prompt_len, decode_len, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dtype = torch.bfloat16 if len(sys.argv) > 6 and sys.argv[6] == "bf16" else torch.float32
torch.set_num_threads(threads)
torch.manual_seed(0)
with open(config_path) as f:
    cfg = json.load(f)
config = LlamaConfig(**cfg, attn_implementation="sdpa", dtype=dtype)
model = LlamaForCausalLM(config).to(dtype).eval()
ids = torch.randint(0, 128000, (1, prompt_len))
mask = torch.ones_like(ids)


def gen(n):
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start


gen(2)  # warm-up
prompt_rates, decode_rates = [], []
for _ in range(runs):
    t1 = gen(1)
    tn = gen(decode_len)
    prompt_rates.append(prompt_len / t1)
    decode_rates.append((decode_len - 1) / (tn - t1))
print(statistics.median(prompt_rates), statistics.median(decode_rates))
