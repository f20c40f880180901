"""Math problem sources: a procedural generator (offline) and datasets (GSM8K, MATH, MATH-500, local files).

Every source exposes its items by integer index per split, and the train and
eval items of one source are disjoint by construction:

- the procedural generator assigns each problem to a split by a hash of its
  *canonical key*, the content that defines its answer (sorted operands for
  ``+`` and ``*``, ordered ones for ``-``; names and objects in word problems
  are not part of it), so ``7 + 12`` and ``12 + 7`` are always in one split;
- a dataset with its own train and test splits uses them;
- a dataset with one split (MATH-500) or a local file whose name says neither
  train nor test is hash-split by normalised question text: two thirds train,
  one third eval, and the eval split (suites included) reads only that third;
- a local file whose name says ``train`` is a train split as a whole and is
  never read for evaluation; one whose name says ``test``/``eval`` is an eval
  split as a whole and is never trained on (pass the other file of the pair
  as the env's ``eval_source``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from onelayer.envs.grading import last_boxed
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


def split_of(key: str) -> str:
    """Deterministic split of a problem's key (canonical key or normalised question): a third is evaluation-only."""
    h = hashlib.sha256(key.encode("utf-8")).digest()
    return "eval" if h[0] % 3 == 0 else "train"


def question_key(question: str) -> str:
    """A dataset question's split key: its text with whitespace and case normalised, so copies that differ only
    in those fall in one split."""
    return " ".join(question.split()).casefold()


_NAMES = ["Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia", "Omar", "Pia"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards"]


def _sum_key(*operands: int) -> str:
    return "+".join(map(str, sorted(operands)))  # addition commutes: the operand multiset defines the answer


def _generate(level: int, rng: random.Random) -> tuple[str, str, str]:
    """One problem of ``level``: (question, answer, canonical key). The key is what the answer depends on, in a
    canonical order; every question with the same key lands in the same split."""
    if level == 1:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return f"What is {a} + {b}?", str(a + b), _sum_key(a, b)
    if level == 2:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", str(a + b), _sum_key(a, b)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", str(a - b), f"{a}-{b}"  # subtraction does not commute: ordered
    if level == 3:
        if rng.random() < 0.5:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            return f"What is {a} * {b}?", str(a * b), "*".join(map(str, sorted((a, b))))
        a, b, c = (rng.randint(2, 99) for _ in range(3))
        return f"What is {a} + {b} + {c}?", str(a + b + c), _sum_key(a, b, c)
    if level == 4:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} does {name} have now?"
        return q, str(a + b - c), f"({_sum_key(a, b)})-{c}"  # the name and the objects do not change the answer
    if level == 5:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        boxes, per, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 30)
        q = (f"{name} buys {boxes} boxes with {per} {item} in each box, and already had {extra} {item}. "
             f"How many {item} does {name} have in total?")
        return q, str(boxes * per + extra), f"{'*'.join(map(str, sorted((boxes, per))))}+{extra}"
    raise UserError(f"unknown math level {level}: choose one of {', '.join(map(str, LEVELS))}")


def _item_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def procedural_train_problem(level: int, index: int) -> MathProblem:
    """Train item ``index`` of a level: drawn from a seeded stream until its canonical key falls in the train split."""
    rng = random.Random(_item_seed("train", level, index))
    for _ in range(10_000):
        q, a, key = _generate(level, rng)
        if split_of(key) == "train":
            return MathProblem(q, a, index, "train", "procedural", level)
    raise RuntimeError("procedural generator found no train problem")  # pragma: no cover


@lru_cache(maxsize=16)
def procedural_eval_pool(level: int) -> tuple[MathProblem, ...]:
    """The fixed, enumerated evaluation list of a level: distinct questions whose canonical key is in the eval
    split, in a seeded order."""
    rng = random.Random(_item_seed("eval", level))
    seen: dict[str, str] = {}
    misses = 0
    while len(seen) < EVAL_POOL_MAX and misses < 20_000:
        q, a, key = _generate(level, rng)
        if split_of(key) != "eval" or q in seen:
            misses += 1
            continue
        misses = 0
        seen[q] = a
    return tuple(MathProblem(q, a, i, "eval", "procedural", level) for i, (q, a) in enumerate(seen.items()))


# ---------------------------------------------------------------- datasets
@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub, loaded with ``datasets``."""

    name: str
    config: str | None
    eval: str
    """The hub split the eval items come from."""
    train: str | None
    """The hub split the train items come from; None: the source has one split, hash-split into train and eval."""


HUB_SOURCES = {
    "gsm8k": HubSource("openai/gsm8k", "main", eval="test", train="train"),
    # MATH (Hendrycks et al.): 7,500 train and 5,000 test problems; the gold answer is the solution's last \boxed{}.
    # MATH-500 is a subset of its test split, so training on MATH's train split never sees a MATH-500 problem.
    "math": HubSource("DigitalLearningGmbH/MATH-lighteval", "default", eval="test", train="train"),
    "math500": HubSource("HuggingFaceH4/MATH-500", None, eval="test", train=None),
}

_TRAIN_WORDS = {"train", "training"}
_EVAL_WORDS = {"test", "eval", "evaluation", "val", "valid", "validation", "dev", "heldout"}


def file_role(path: str | Path) -> str | None:
    """What a local file's name says it is: ``"train"``, ``"eval"`` (test/eval/validation/dev) or None (neither).

    Words are the name's parts between non-alphanumeric characters (``gsm8k_train.jsonl``: train;
    ``test-00000-of-00001.parquet``: eval; ``latest.jsonl``: neither). A name that says both is a UserError.
    """
    words = set(re.split(r"[^a-z0-9]+", Path(path).stem.lower()))
    train, evals = bool(words & _TRAIN_WORDS), bool(words & _EVAL_WORDS)
    if train and evals:
        raise UserError(f"math data file {path}: its name says both train and test/eval, so it is unclear which split "
                        "it is; rename it (e.g. NAME_train.jsonl or NAME_test.jsonl), or to a name with neither word "
                        "to hash-split it into train and eval")
    return "train" if train else "eval" if evals else None


def _gsm8k_answer(text: str) -> str:
    return text.split("####")[-1].strip().replace(",", "")


def _record_to_qa(rec: dict, where: str) -> tuple[str, str] | None:
    """(question, gold answer) of a record; None for a record whose solution states no final answer."""
    q = rec.get("question", rec.get("problem", rec.get("prompt")))
    a = rec.get("answer")
    if a is None and rec.get("solution") is not None:  # MATH: the final answer is the solution's last \boxed{}
        a = last_boxed(str(rec["solution"]))
        if a is None:
            return None
    if q is None or a is None:
        raise UserError(f"{where}: each record needs a 'question' (or 'problem') and an 'answer' (or a 'solution' "
                        f"with a \\boxed{{}} answer) field; got keys {sorted(rec)}")
    a = str(a)
    if "####" in a:
        a = _gsm8k_answer(a)
    return str(q), a


def _records_to_qa(records, where: str) -> list[tuple[str, str]]:
    qa = [_record_to_qa(r, where) for r in records]
    skipped = sum(x is None for x in qa)
    if skipped:  # said, not silent: the items that remain are still the same on every run
        warnings.warn(f"{where}: {skipped} of {len(qa)} records have a solution without a \\boxed{{}} final answer "
                      "and are left out", stacklevel=3)
    return [x for x in qa if x is not None]


def _hash_part(qa: list[tuple[str, str]], split: str) -> list[tuple[str, str]]:
    return [x for x in qa if split_of(question_key(x[0])) == split]


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
    """Items of a dataset source for one split ("train" or "eval"); the two splits never share a question.

    ``source`` names a hub dataset (see ``HUB_SOURCES``) or, with ``path``, a local file: a file named as a train
    split is train items only, one named as a test/eval split is eval items only, any other is hash-split.
    """
    if split not in ("train", "eval"):
        raise UserError(f"unknown split {split!r}: use 'train' or 'eval'")
    if path:
        p = Path(path)
        role = file_role(p)
        if role == "train" and split == "eval":
            raise UserError(
                f"math data file {p} is a train file (its name says train): it is never used for evaluation, or the "
                "score would count problems trained on; pass the matching test file as eval_source=FILE (e.g. "
                "--env-kwargs source=TRAIN.jsonl eval_source=TEST.jsonl), or a file whose name says neither train "
                "nor test to hash-split it into train and eval")
        if role == "eval" and split == "train":
            raise UserError(
                f"math data file {p} is an evaluation file (its name says test/eval): it is never trained on; train "
                "on a train file and pass this one as eval_source=FILE, or rename it to say neither to hash-split it")
        qa = _records_to_qa(_load_local(p), str(p))
        if role is None:  # one file for both splits: each question's hash decides which one it is in
            qa = _hash_part(qa, split)
    else:
        if source not in HUB_SOURCES:
            raise UserError(f"unknown math source {source!r}: use procedural, {', '.join(HUB_SOURCES)} or a local "
                            "file path")
        hub = HUB_SOURCES[source]
        try:
            import datasets

            if hub.train is not None:
                qa = _records_to_qa(datasets.load_dataset(hub.name, hub.config, split=getattr(hub, split)), hub.name)
                if split == "train":  # a question the test split also holds (a duplicate) is eval-only
                    test = _records_to_qa(datasets.load_dataset(hub.name, hub.config, split=hub.eval), hub.name)
                    held_out = {question_key(q) for q, _ in test}
                    qa = [x for x in qa if question_key(x[0]) not in held_out]
            else:  # one split only: hash-split it, so the eval part (suites included) was never trained on
                qa = _hash_part(_records_to_qa(datasets.load_dataset(hub.name, hub.config, split=hub.eval), hub.name),
                                split)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"cannot load {hub.name} ({type(e).__name__}: {str(e)[:200]}): it needs the Hugging Face hub or its "
                "cache; offline, download it elsewhere and pass local files (--env-kwargs source=NAME_train.jsonl "
                "eval_source=NAME_test.jsonl)"
            ) from None
    if not qa:
        raise UserError(f"math source {source!r} ({path or 'hub'}) has no {split} items")
    return tuple(MathProblem(q, a, i, split, source) for i, (q, a) in enumerate(qa))
