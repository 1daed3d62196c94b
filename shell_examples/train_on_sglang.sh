#!/usr/bin/env bash
# needs: moe-data moe-reward moe-train-step moe-route-dump
# Train with moekit on SGLang rollouts: import the responses an SGLang server returned (with their
# log-probs and routed experts), score them, and run one RL step that replays SGLang's routing (R3).
#
#   train_on_sglang.sh MODEL_DIR RESPONSES.jsonl [TEMPERATURE=1]
#
# MODEL_DIR is the model the server ran, as a moekit/Hugging Face model dir (config.json + safetensors);
# it is updated in place. RESPONSES.jsonl holds one /generate response per line, each with the request's
# input_ids and the task payload added, as saved for instance by
#
#   python -m sglang.launch_server --model-path MODEL_DIR --enable-return-routed-experts ...
#   curl -s localhost:30000/generate -d '{"input_ids": [...], "sampling_params": {"temperature": 1,
#        "max_new_tokens": 64}, "return_logprob": true, "return_routed_experts": true}' \
#     | jq -c --argjson ids '[...]' --argjson task '{"numbers": [3, 7, 12], "target": 33}' \
#         '. + {input_ids: $ids, task: $task}' >> RESPONSES.jsonl
#
# SGLang's log-probs are taken at the sampling temperature (unless SGLANG_RETURN_ORIGINAL_LOGPROB is
# set: then give 1). Environment: ALGO (grpo), TASK (countdown), METRICS (MODEL_DIR.metrics.jsonl).
set -euo pipefail
model=${1:?usage: train_on_sglang.sh MODEL_DIR RESPONSES.jsonl [TEMPERATURE]}
responses=${2:?usage: train_on_sglang.sh MODEL_DIR RESPONSES.jsonl [TEMPERATURE]}
temperature=${3:-1}
metrics=${METRICS:-${model%/}.metrics.jsonl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# moe-data import puts routes.zst in place before its rollout stream ends, so moe-train-step (which
# opens --routing once the rollouts are read) finds it complete.
moe-data import --from sglang -m "$model" --temperature "$temperature" "$responses" \
    --routing-out "$work/routes.zst" -q \
  | moe-reward --task "${TASK:-countdown}" -q \
  | moe-train-step -m "$model" --algo "${ALGO:-grpo}" --router replay-rollout --routing "$work/routes.zst" \
      --metrics "$metrics" -q

# What the engine routed, layer by layer, and what the step measured.
moe-route-dump stats "$work/routes.zst" | head -n 2
echo "step: $(tail -n 1 "$metrics" | grep -o '"\(loss\|tokens\|routing/token_mismatch\|mismatch/k3_kl\)":[^,}]*' | paste -sd' ')"
