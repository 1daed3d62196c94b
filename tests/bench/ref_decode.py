#!/usr/bin/env python3
"""The Python eager reference of tests/bench/decode_vs_python.sh: a hand-written KV-cache generator for a
moekit (= Hugging Face qwen3_moe) model dir, written as transformers' eager code path is (a cache grown by
torch.cat per step, repeat_kv, eager softmax attention, a loop over the experts that got tokens with
index_add_), sampling with torch.multinomial. Same work as `bench_decode gen`: prompt token
(7 b + 3 t) % (V - 3) + 3, NEW tokens per row, no eos. One warm-up, then RUNS timed runs (default 5); prints
the median run's "python <mode> batch B: X tok/s (S s wall), Y tok/s per CPU second (C s)".
Run with /work/.venv-ref's torch (PyPI wheel), never in CI:
  /work/.venv-ref/bin/python tests/bench/ref_decode.py MODEL_DIR BATCH PROMPT NEW greedy|sampled THREADS [RUNS]
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class Model:
    def __init__(self, d):
        self.c = json.load(open(d + "/config.json"))
        self.w = load_file(d + "/model.safetensors")
        c = self.c
        self.L, self.H, self.kvH, self.D = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.E, self.K, self.eps = c["num_experts"], c["num_experts_per_tok"], c["rms_norm_eps"]
        theta = c.get("rope_theta") or c["rope_parameters"]["rope_theta"]
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.int64).float() / self.D))

    def rms(self, x, w):
        xf = x.float()
        return self.w[w] * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def lin(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def attn(self, i, x, cos, sin, cache, mask):
        B, T, _ = x.shape
        p = f"model.layers.{i}.self_attn."
        q = self.rms(self.lin(x, p + "q_proj").view(B, T, self.H, self.D), p + "q_norm.weight").transpose(1, 2)
        k = self.rms(self.lin(x, p + "k_proj").view(B, T, self.kvH, self.D), p + "k_norm.weight").transpose(1, 2)
        v = self.lin(x, p + "v_proj").view(B, T, self.kvH, self.D).transpose(1, 2)

        def rot(t):
            h = t.shape[-1] // 2
            return torch.cat((-t[..., h:], t[..., :h]), -1)

        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        if i in cache:
            k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
        cache[i] = (k, v)
        rep = self.H // self.kvH
        S = k.shape[2]
        k = k[:, :, None].expand(B, self.kvH, rep, S, self.D).reshape(B, self.H, S, self.D)
        v = v[:, :, None].expand(B, self.kvH, rep, S, self.D).reshape(B, self.H, S, self.D)
        s = q @ k.transpose(2, 3) / math.sqrt(self.D)
        if mask is not None:
            s = s + mask
        a = torch.softmax(s, -1, dtype=torch.float32).to(q.dtype)
        return self.lin((a @ v).transpose(1, 2).reshape(B, T, -1), p + "o_proj")

    def moe(self, i, x):
        B, T, Hd = x.shape
        p = f"model.layers.{i}.mlp."
        x = x.view(-1, Hd)
        probs = torch.softmax(self.lin(x, p + "gate"), -1, dtype=torch.float32)
        w, sel = torch.topk(probs, self.K, -1)
        if self.c.get("norm_topk_prob", False):
            w = w / w.sum(-1, keepdim=True)
        w = w.to(x.dtype)
        out = torch.zeros_like(x)
        mask = F.one_hot(sel, self.E).permute(2, 1, 0)
        for e in (mask.sum((-1, -2)) > 0).nonzero():
            e = int(e)
            slot, tok = torch.where(mask[e])
            cur = x[tok]
            q = p + f"experts.{e}."
            y = self.lin(F.silu(self.lin(cur, q + "gate_proj")) * self.lin(cur, q + "up_proj"), q + "down_proj")
            out.index_add_(0, tok, y * w[tok, slot, None])
        return out.view(B, T, Hd)

    def forward(self, ids, pos, cache):
        B, T = ids.shape
        h = F.embedding(ids, self.w["model.embed_tokens.weight"])
        f = pos[..., None].float() * self.inv_freq
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        mask = None
        if T > 1:
            mask = torch.full((T, T), float("-inf")).triu(1)
        for i in range(self.L):
            h = h + self.attn(i, self.rms(h, f"model.layers.{i}.input_layernorm.weight"), cos, sin, cache, mask)
            h = h + self.moe(i, self.rms(h, f"model.layers.{i}.post_attention_layernorm.weight"))
        h = self.rms(h[:, -1:], "model.norm.weight")
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return F.linear(h, head)[:, -1]


def generate(m, prompts, new, greedy, gen):
    cache = {}
    B, P = prompts.shape
    logits = m.forward(prompts, torch.arange(P).expand(B, P), cache)
    out = []
    for s in range(new):
        logp = torch.log_softmax(logits.float(), -1)
        tok = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=gen)[:, 0]
        lp = logp.gather(1, tok[:, None])
        out.append((tok, lp))
        if s + 1 == new:
            break
        logits = m.forward(tok[:, None], torch.full((B, 1), P + s), cache)
    return torch.stack([t for t, _ in out], 1)


def main():
    d, B, P, N, mode, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    runs = max(1, int(sys.argv[7])) if len(sys.argv) > 7 else 5
    torch.set_num_threads(threads)
    blas = [l.strip() for l in torch.__config__.show().splitlines() if "BLAS_INFO" in l or "LAPACK_INFO" in l]
    print(f"ref_decode.py: torch {torch.__version__}, {threads} thread(s), {'; '.join(blas)[:200]}", file=sys.stderr)
    m = Model(d)
    V = m.c["vocab_size"]
    b = torch.arange(B)[:, None]
    t = torch.arange(P)[None, :]
    prompts = (7 * b + 3 * t) % (V - 3) + 3
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        generate(m, prompts, 4, mode == "greedy", gen)
        walls, cpus = [], []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            toks = generate(m, prompts, N, mode == "greedy", gen)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        dt, dc = sorted(walls)[runs // 2], sorted(cpus)[runs // 2]
    print(f"python {mode} batch {B}: {toks.numel() / dt:.0f} tok/s ({dt:.3f} s wall), "
          f"{toks.numel() / dc:.0f} tok/s per CPU second ({dc:.3f} s)")


if __name__ == "__main__":
    main()
