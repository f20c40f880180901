"""Math problem sources: a procedural generator (offline) and datasets (GSM8K, MATH-500, local files).

Every source exposes its items by integer index per split. Train and eval
never overlap: the procedural generator assigns each distinct question to a
split by a hash of its text; datasets use their own splits where they have
them and the same hash rule where they do not.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from onelayer.errors import UserError

LEVELS = {
    1: "two-number addition, operands 2..30",
    2: "addition or subtraction, operands 2..99",
    3: "multiplication (2..12) or three-number addition (2..99)",
    4: "two-step word problems (add then subtract)",
    5: "multi-step word problems with multiplication",
}
EVAL_POOL_MAX = 2000


@dataclass(frozen=True)
class MathProblem:
    """One problem: its question text and gold answer (a string math-verify can parse)."""

    question: str
    answer: str
    index: int
    split: str
    source: str
    level: int | None = None


def split_of(question: str) -> str:
    """Deterministic split of a question: a third of all questions are evaluation-only."""
    h = hashlib.sha256(question.encode("utf-8")).digest()
    return "eval" if h[0] % 3 == 0 else "train"


_NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia", "Omar", "Pia"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards"]


def _generate(level: int, rng: random.Random) -> tuple[str, str]:
    if level == 1:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return f"What is {a} + {b}?", str(a + b)
    if level == 2:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", str(a + b)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", str(a - b)
    if level == 3:
        if rng.random() < 0.5:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            return f"What is {a} * {b}?", str(a * b)
        a, b, c = (rng.randint(2, 99) for _ in range(3))
        return f"What is {a} + {b} + {c}?", str(a + b + c)
    if level == 4:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} does {name} have now?"
        return q, str(a + b - c)
    if level == 5:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        boxes, per, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 30)
        q = (f"{name} buys {boxes} boxes with {per} {item} in each box, and already had {extra} {item}. "
             f"How many {item} does {name} have in total?")
        return q, str(boxes * per + extra)
    raise UserError(f"unknown math level {level}: choose one of {', '.join(map(str, LEVELS))}")


def _item_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def procedural_train_problem(level: int, index: int) -> MathProblem:
    """Train item ``index`` of a level: drawn from a seeded stream until it falls in the train split."""
    rng = random.Random(_item_seed("train", level, index))
    for _ in range(10_000):
        q, a = _generate(level, rng)
        if split_of(q) == "train":
            return MathProblem(q, a, index, "train", "procedural", level)
    raise RuntimeError("procedural generator found no train problem")  # pragma: no cover


@lru_cache(maxsize=16)
def procedural_eval_pool(level: int) -> tuple[MathProblem, ...]:
    """The fixed, enumerated evaluation list of a level: distinct eval-split problems in a seeded order."""
    rng = random.Random(_item_seed("eval", level))
    seen: dict[str, str] = {}
    misses = 0
    while len(seen) < EVAL_POOL_MAX and misses < 20_000:
        q, a = _generate(level, rng)
        if split_of(q) != "eval" or q in seen:
            misses += 1
            continue
        misses = 0
        seen[q] = a
    return tuple(MathProblem(q, a, i, "eval", "procedural", level) for i, (q, a) in enumerate(seen.items()))


# ---------------------------------------------------------------- datasets
_HUB = {
    "gsm8k": ("openai/gsm8k", "main", {"train": "train", "eval": "test"}),
    "math500": ("HuggingFaceH4/MATH-500", None, {"eval": "test"}),
}


def _gsm8k_answer(text: str) -> str:
    return text.split("####")[-1].strip().replace(",", "")


def _record_to_qa(rec: dict, where: str) -> tuple[str, str]:
    q = rec.get("question", rec.get("problem", rec.get("prompt")))
    a = rec.get("answer", rec.get("solution"))
    if q is None or a is None:
        raise UserError(f"{where}: each record needs a 'question' (or 'problem') and an 'answer' field; got keys {sorted(rec)}")
    a = str(a)
    if "####" in a:
        a = _gsm8k_answer(a)
    return str(q), a


def _load_local(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"math data file {path} does not exist: pass an existing .jsonl, .json or .parquet path")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one problem object per line") from None
        if not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path}: every line must be a JSON object with 'question' and 'answer' fields")
        return records
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected a list of problem objects") from None
        data = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else None
        if data is None or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a list of objects with 'question' and 'answer' fields (or {{'data': [...]}})")
        return data
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    raise UserError(f"unsupported math data file {path}: use .jsonl, .json or .parquet")


@lru_cache(maxsize=16)
def dataset_pool(source: str, split: str, path: str | None = None) -> tuple[MathProblem, ...]:
    """Items of a dataset source for one split ("train" or "eval")."""
    if path:
        p = Path(path)
        recs = _load_local(p)
        qa = [_record_to_qa(r, str(p)) for r in recs]
        own_split = split in p.stem.lower() or (split == "eval" and "test" in p.stem.lower())
        if not own_split:
            qa = [x for x in qa if split_of(x[0]) == split]
    else:
        if source not in _HUB:
            raise UserError(f"unknown math source {source!r}: use procedural, gsm8k, math500 or a local file path")
        name, config, splits = _HUB[source]
        try:
            import datasets

            if split in splits:
                ds = datasets.load_dataset(name, config, split=splits[split])
                qa = [_record_to_qa(r, name) for r in ds]
            else:  # no own split: hash-split the one there is
                ds = datasets.load_dataset(name, config, split=next(iter(splits.values())))
                qa = [x for x in (_record_to_qa(r, name) for r in ds) if split_of(x[0]) == split]
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"cannot load {name} ({type(e).__name__}: {str(e)[:200]}): it needs the Hugging Face hub or its "
                f"cache; offline, download it elsewhere and pass a local file as the source (--env-kwargs source=FILE.jsonl)"
            ) from None
    if not qa:
        raise UserError(f"math source {source!r} ({path or 'hub'}) has no {split} items")
    return tuple(MathProblem(q, a, i, split, source) for i, (q, a) in enumerate(qa))
