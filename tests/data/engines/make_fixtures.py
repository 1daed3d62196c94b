"""Writes the engine fixtures of tests/data/engines (see README.md there): four countdown problems x two
samples, answered in each engine's own output format, for the model of config.json (4 layers, layer 0
dense, layers 1-3 MoE with 8 experts, top-2; moekit's character vocabulary).

Run from the repository root with the reference venv (numpy, safetensors, torch):
    /work/.venv-ref/bin/python tests/data/engines/make_fixtures.py
Deterministic: the same files every run. Nothing here runs in CI; the outputs are committed.
"""
import base64
import io
import json
import os
import random

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = json.load(open(os.path.join(HERE, "config.json")))
H = CFG["num_hidden_layers"]
E = CFG["num_experts"]
K = CFG["num_experts_per_tok"]
MOE = [l for l in range(H) if l not in CFG["mlp_only_layers"]]
EOS = 1


def tok(text):
    # moekit's default character vocabulary: <pad> 0, <eos> 1, "\n" 2, printable ASCII 32..126 from 3.
    return [2 if c == "\n" else 3 + ord(c) - 32 for c in text]


# (numbers, target, [response text of sample 0, sample 1], finish reasons)
PROBLEMS = [
    ([3, 7, 12], 33, ["(3 * 7) + 12", "3 + 7 + 12"]),
    ([4, 5, 6], 26, ["4 * 5 + 6", "(6 - 4) * 5"]),
    ([2, 9, 10], 28, ["2 * 9 + 10", "10 * 2 + 9 + 9"]),
    ([8, 3, 1], 25, ["8 * 3 + 1", "8 + 3 + 1 +"]),
]
rng = random.Random(20261201)
records = []
for g, (nums, target, answers) in enumerate(PROBLEMS):
    prompt_text = " ".join(map(str, nums)) + "=" + str(target) + "|"
    for s, ans in enumerate(answers):
        prompt = tok(prompt_text)
        # The second sample of the last problem ran out of tokens: no EOS, finish "length".
        stopped = not (g == 3 and s == 1)
        response = tok(ans) + ([EOS] if stopped else [])
        T = len(prompt) + len(response)
        # Routing of every forwarded position (0 .. T-2) and MoE layer: two distinct experts, descending
        # probability order as a router's top-k gives them.
        moe_rows = [[rng.sample(range(E), K) for _ in MOE] for _ in range(T - 1)]
        logprobs = [round(-rng.uniform(0.01, 3.0), 6) for _ in response]
        records.append(dict(group=g, sample=s, prompt=prompt, response=response, prompt_text=prompt_text,
                            response_text=ans, task={"numbers": nums, "target": target}, stopped=stopped,
                            moe_rows=moe_rows, logprobs=logprobs))


def all_layer_rows(r, dtype):
    # SGLang and vLLM size the layer axis by num_hidden_layers and write only MoE layers; a dense layer's
    # rows keep the buffer's zeros.
    a = np.zeros((len(r["moe_rows"]), H, K), dtype=dtype)
    for t, row in enumerate(r["moe_rows"]):
        for j, l in enumerate(MOE):
            a[t, l] = row[j]
    return a


def npy_b64(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


os.makedirs(os.path.join(HERE, "sglang"), exist_ok=True)
with open(os.path.join(HERE, "sglang", "generate.jsonl"), "w") as f:
    for i, r in enumerate(records):
        fin = {"type": "stop", "matched": EOS} if r["stopped"] else {"type": "length", "length": len(r["response"])}
        meta = {
            "id": "%032x" % rng.getrandbits(128),
            "finish_reason": fin,
            "prompt_tokens": len(r["prompt"]),
            "weight_version": "default",
            "completion_tokens": len(r["response"]),
            "cached_tokens": 0,
            "e2e_latency": 0.05,
            "output_token_logprobs": [[lp, t, None] for lp, t in zip(r["logprobs"], r["response"])],
            "routed_experts": base64.b64encode(all_layer_rows(r, np.int32).tobytes()).decode("ascii"),
        }
        line = {"text": r["response_text"], "output_ids": r["response"], "meta_info": meta,
                "input_ids": r["prompt"], "task": r["task"]}
        f.write(json.dumps(line) + "\n")

os.makedirs(os.path.join(HERE, "vllm"), exist_ok=True)
with open(os.path.join(HERE, "vllm", "request_outputs.jsonl"), "w") as f:
    for g in range(len(PROBLEMS)):
        rs = [r for r in records if r["group"] == g]
        outs = []
        for s, r in enumerate(rs):
            # SampleLogprobs with logprobs=1: the sampled token plus the top-1 token per position.
            lps = []
            for lp, t in zip(r["logprobs"], r["response"]):
                d = {str(t): {"logprob": lp, "rank": 2 if lp < -0.7 else 1, "decoded_token": "x"}}
                if lp < -0.7:
                    d[str((t + 5) % CFG["vocab_size"])] = {"logprob": -0.5, "rank": 1, "decoded_token": "y"}
                lps.append(d)
            outs.append({"index": s, "text": r["response_text"], "token_ids": r["response"],
                         "cumulative_logprob": sum(r["logprobs"]), "logprobs": lps,
                         "routed_experts": all_layer_rows(r, np.int32).tolist(),
                         "finish_reason": "stop" if r["stopped"] else "length", "stop_reason": None})
        f.write(json.dumps({"request_id": str(g), "prompt": rs[0]["prompt_text"], "prompt_token_ids": rs[0]["prompt"],
                            "prompt_logprobs": None, "outputs": outs, "finished": True, "task": rs[0]["task"]}) + "\n")

with open(os.path.join(HERE, "vllm", "completions.jsonl"), "w") as f:
    for g in range(len(PROBLEMS)):
        rs = [r for r in records if r["group"] == g]
        choices = []
        for s, r in enumerate(rs):
            choices.append({"index": s, "text": r["response_text"],
                            "logprobs": {"text_offset": list(range(len(r["response"]))),
                                         "token_logprobs": r["logprobs"],
                                         "tokens": ["token_id:%d" % t for t in r["response"]],
                                         "top_logprobs": None},
                            "finish_reason": "stop" if r["stopped"] else "length", "stop_reason": None,
                            "token_ids": r["response"], "prompt_logprobs": None, "prompt_token_ids": r["prompt"],
                            # vLLM narrows the ids to uint8 when the model has at most 256 experts.
                            "routed_experts": npy_b64(all_layer_rows(r, np.uint8))})
        f.write(json.dumps({"id": "cmpl-%d" % g, "object": "text_completion", "created": 1764547200,
                            "model": "qwen3-moe-tiny", "choices": choices,
                            "usage": {"prompt_tokens": len(rs[0]["prompt"]) * 2, "total_tokens": 0, "completion_tokens": 0},
                            "task": rs[0]["task"]}) + "\n")

# verl: DataProto.batch of the agent loop, saved with safetensors.torch.save_file; the non-tensor batch
# (task payloads, texts) beside it as JSON Lines.
B = len(records)
Pp = max(len(r["prompt"]) for r in records)
Pr = max(len(r["response"]) for r in records)
prompts = torch.zeros(B, Pp, dtype=torch.int64)
responses = torch.zeros(B, Pr, dtype=torch.int64)
mask = torch.zeros(B, Pp + Pr, dtype=torch.int64)
rlp = torch.zeros(B, Pr, dtype=torch.float32)
routed = torch.zeros(B, Pp + Pr, H, K, dtype=torch.int16)
for b, r in enumerate(records):
    P, R = len(r["prompt"]), len(r["response"])
    prompts[b, Pp - P:] = torch.tensor(r["prompt"])
    responses[b, :R] = torch.tensor(r["response"])
    mask[b, Pp - P:Pp] = 1
    mask[b, Pp:Pp + R] = 1
    rlp[b, :R] = torch.tensor(r["logprobs"])
    start = Pp - P  # verl's agent loop: start_pos = padded prompt length - prompt length
    routed[b, start:start + P + R - 1] = torch.from_numpy(all_layer_rows(r, np.int16))
input_ids = torch.cat([prompts, responses], dim=1)
position_ids = torch.clamp(torch.cumsum(mask, dim=1) - 1, min=0)
os.makedirs(os.path.join(HERE, "verl"), exist_ok=True)
save_file({"prompts": prompts, "responses": responses, "input_ids": input_ids, "attention_mask": mask,
           "position_ids": position_ids, "response_mask": mask[:, Pp:].clone(), "rollout_log_probs": rlp,
           "routed_experts": routed}, os.path.join(HERE, "verl", "batch.safetensors"))
with open(os.path.join(HERE, "verl", "batch.safetensors.jsonl"), "w") as f:
    for r in records:
        f.write(json.dumps({"uid": str(r["group"]), "group": r["group"], "prompt_text": r["prompt_text"],
                            "response_text": r["response_text"], "task": r["task"]}) + "\n")

# moekit's plain JSONL: routed_experts on the MoE-layer axis.
os.makedirs(os.path.join(HERE, "jsonl"), exist_ok=True)
with open(os.path.join(HERE, "jsonl", "rollouts.jsonl"), "w") as f:
    for r in records:
        f.write(json.dumps({"prompt_ids": r["prompt"], "response_ids": r["response"], "logprobs": r["logprobs"],
                            "routed_experts": r["moe_rows"], "group": r["group"],
                            "response_text": r["response_text"], "numbers": r["task"]["numbers"],
                            "target": r["task"]["target"]}) + "\n")

# The expected import result, engine-independent: what every fixture must turn into.
with open(os.path.join(HERE, "expected.jsonl"), "w") as f:
    for i, r in enumerate(records):
        f.write(json.dumps({"id": i, "group": r["group"], "sample": r["sample"], "prompt_tokens": r["prompt"],
                            "response_tokens": r["response"], "logprobs": r["logprobs"],
                            "finish_reason": "eos" if r["stopped"] else "length", "task": r["task"],
                            "experts": r["moe_rows"]}) + "\n")
print("wrote fixtures for", B, "records")

# .npy files written by numpy itself, for the strict reader's unit tests (tests/unit/engine_test.cpp).
npy = os.path.join(HERE, "npy")
os.makedirs(npy, exist_ok=True)
arrays = {
    "int32_3d": np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5,
    "uint8_2d": np.array([[0, 255], [7, 8]], dtype=np.uint8),
    "int16_1d": np.array([-32768, 0, 32767], dtype=np.int16),
    "int64_0d": np.array(42, dtype=np.int64),
    "float32_2d": np.array([[0.5, -1.25], [3.0, -0.0]], dtype=np.float32),
    "float16_1d": np.array([1.0, -2.5, 65504.0, 6e-8], dtype=np.float16),
    "bool_1d": np.array([True, False, True]),
}
expect = {}
for name, a in arrays.items():
    np.save(os.path.join(npy, name + ".npy"), a, allow_pickle=False)
    expect[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.astype(np.float64).ravel().tolist()}
np.lib.format.write_array(open(os.path.join(npy, "v2_int32.npy"), "wb"), np.arange(6, dtype=np.int32).reshape(3, 2), version=(2, 0))
expect["v2_int32"] = {"dtype": "int32", "shape": [3, 2], "values": list(map(float, range(6)))}
json.dump(expect, open(os.path.join(npy, "expected.json"), "w"), indent=1)
# Files the reader must reject.
np.save(os.path.join(npy, "bad_fortran.npy"), np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)))
np.save(os.path.join(npy, "bad_bigendian.npy"), np.arange(3, dtype=">i4"))
np.save(os.path.join(npy, "bad_object.npy"), np.array([1, "a"], dtype=object), allow_pickle=True)
with open(os.path.join(npy, "int32_3d.npy"), "rb") as src:
    good = src.read()
open(os.path.join(npy, "bad_truncated.npy"), "wb").write(good[:-4])
open(os.path.join(npy, "bad_trailing.npy"), "wb").write(good + b"\0\0\0\0")
