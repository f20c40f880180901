"""The two stored runs of results/vllm-cpu/ (``--engine vllm`` and ``--engine hf``) side by side, as markdown.

    python results/vllm-cpu/compare.py results/vllm-cpu > results/vllm-cpu/comparison.md
"""

import json
import sys
from pathlib import Path

ENGINES = ("vllm", "hf")
PER_STEP = [("reward", "{:.3f}"), ("success_rate", "{:.3f}"), ("response_length", "{:.1f}"),
            ("time/sampling_s", "{:.1f}"), ("time/training_s", "{:.1f}"), ("sync/bytes", "{:,.0f}"),
            ("time/sync_s", "{:.3f}"), ("logprob_mismatch_mean", "{:.2e}"), ("logprob_mismatch_max", "{:.2e}"),
            ("logprob_mismatch_tokens", "{:.0f}")]


def _read(run: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "reward" in r], json.loads((run / "eval.json").read_text())


def main(root: str) -> None:
    runs = {e: _read(Path(root) / e) for e in ENGINES}
    print("| metric | step | " + " | ".join(f"--engine {e}" for e in ENGINES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in ENGINES) + " |")
    for key, fmt in PER_STEP:
        for i in range(max(len(runs[e][0]) for e in ENGINES)):
            cells = []
            for e in ENGINES:
                rows = runs[e][0]
                value = rows[i].get(key) if i < len(rows) else None
                cells.append("—" if value is None else fmt.format(value))
            print(f"| {key} | {runs[ENGINES[0]][0][i]['step']} | " + " | ".join(cells) + " |")
    final = {e: runs[e][1] for e in ENGINES}
    for key in sorted({k for ev in final.values() for k, v in _flat(ev).items() if isinstance(v, (int, float))}):
        print(f"| final eval {key} | end | " + " | ".join(
            "—" if _flat(final[e]).get(key) is None else f"{_flat(final[e])[key]:.4g}" for e in ENGINES) + " |")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
