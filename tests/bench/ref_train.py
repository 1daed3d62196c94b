#!/usr/bin/env python3
"""The Python eager reference of tests/bench/train_vs_python.sh: one train step of transformers'
Qwen3MoeForCausalLM (eager attention, float32, CPU) on a moekit model dir, the same work as the `tiny` (or
`small/8L`) line of `bench_train_step`: SEQS sequences of PROMPT + RESPONSE random tokens (response tokens train), two
mini-batches, each a forward, a backward, global-norm clipping at 1.0 and an AdamW step (lr 1e-4, betas
0.9/0.999, eps 1e-8, no weight decay, moekit's defaults).
  sft:  loss = mean over response tokens of -log p(token)
  grpo: an old pass first (no gradient: log-probs of every sequence), then per mini-batch the clipped
        PPO loss (eps 0.2, dual clip 3) with advantages +1/-1 alternating, token-mean over response tokens.
One warm-up step, then STEPS timed (default 5); prints the median step's "python <algo>: step S s, X tok/s
(all positions), C s CPU".
Run with /work/.venv-ref's torch and transformers (PyPI), never in CI:
  /work/.venv-ref/bin/python tests/bench/ref_train.py MODEL_DIR ALGO SEQS PROMPT RESPONSE THREADS [STEPS]
"""
import sys
import time

import torch
import torch.nn.functional as F
from transformers import Qwen3MoeForCausalLM


def main():
    d, algo, seqs, P, R, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    steps = max(1, int(sys.argv[7])) if len(sys.argv) > 7 else 5
    torch.set_num_threads(threads)
    model = Qwen3MoeForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    model.config.output_router_logits = False
    model.train()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (seqs, P + R), generator=g)
    adv = torch.tensor([1.0 if i % 2 else -1.0 for i in range(seqs)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    K = 2

    def logp_of(x):
        logits = model(input_ids=x).logits[:, P - 1:-1].float()  # predictions of the response tokens
        return torch.log_softmax(logits, -1).gather(-1, x[:, P:].unsqueeze(-1)).squeeze(-1)

    def step():
        old = None
        if algo == "grpo":
            with torch.no_grad():
                old = logp_of(ids)
        for k in range(K):
            mb = slice(k * seqs // K, (k + 1) * seqs // K)
            lp = logp_of(ids[mb])
            if algo == "sft":
                loss = -lp.mean()
            else:
                a = adv[mb].unsqueeze(1)
                ratio = torch.exp(lp - old[mb])
                pg = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
                pg = torch.where(a < 0, torch.minimum(pg, -a * 3.0), pg)  # dual clip
                loss = pg.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    step()  # warm-up
    ts, cs = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    t, c = sorted(ts)[steps // 2], sorted(cs)[steps // 2]
    print(f"python {algo}: step {t:.3f} s, {seqs * (P + R) / t:.0f} tok/s (all positions), {c:.3f} s CPU")
    print(f"python: torch {torch.__version__}, {torch.get_num_threads()} thread(s), BLAS {'MKL' if torch.backends.mkl.is_available() else 'other'}", file=sys.stderr)


if __name__ == "__main__":
    main()
