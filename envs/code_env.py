"""``onelayer/Code-v0``: write a Python function; it is tested in a sandbox.

``reset(seed=...)`` returns a problem (function signature + docstring) and asks for
the complete function in a ```` ```python ```` block; ``step(reply)`` extracts the
code (:mod:`code_extract`), runs the problem's tests in a sandbox
(:mod:`code_harness`, :mod:`sandbox`) and rewards 1 when every test passes
(``reward="binary"``) or the fraction of tests passed (``reward="fraction"``).

``mode="single"`` ends the episode after one submission. ``mode="multi"`` turns a
failing submission into feedback (which test failed, the error, the candidate's
traceback) as the next observation, for up to ``max_attempts`` submissions; the
episode ends at the first pass. Each step's reward is that submission's score.

``dataset="procedural"`` plays generated functions (:mod:`code_gen`) at ``level=1..5``:
the ``eval`` split is a fixed pool per level, ``train`` an unbounded stream of items
(``num_tasks`` is None), both reproducible from the index, never sharing a function.

``info`` after a step: ``task_id`` (the dataset's own id, e.g. ``HumanEval/0``,
``procedural/L1/eval/17``),
``anchor`` (the returned observation's text), ``won``/``success``/``passed``,
``pass_fraction``, ``error`` ('' when passed), ``syntax_error``, ``timeout``,
``invalid_action`` (no code found in the reply), ``attempt`` and ``method`` (how
the code was found).
"""

from __future__ import annotations

import string

import gymnasium as gym
from gymnasium import spaces

from onelayer.envs import number_option
from onelayer.envs.code_data import NAMED_DATASETS, PROCEDURAL, SPLITS, CodeProblem, load_split
from onelayer.envs.code_extract import extract_code
from onelayer.envs.code_gen import (
    TRAIN_INDEX_SPACE,
    check_level,
    eval_pool,
    task_id_of,
    train_problem,
)
from onelayer.envs.code_harness import TestOutcome, clean_text, prompt_context, run_tests
from onelayer.envs.sandbox import resolve_isolation
from onelayer.envs.tasks import task_index
from onelayer.errors import UserError

MODES = ("single", "multi")
REWARDS = ("binary", "fraction")
_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, signature included, "
                "in a single ```python code block.")
_FEEDBACK_TAIL = "Fix the function and reply with the complete corrected function in a single ```python code block."
_NO_CODE = "no code found: reply with the complete function in a ```python code block"
_FEEDBACK_RESERVE = 2048  # room for feedback text on top of the problem in a multi-turn observation


class CodeEnv(gym.Env):
    """Python function synthesis with sandboxed tests.

    Args:
        dataset: ``humaneval`` (164 problems, offline), ``humaneval+``, ``mbpp+`` (EvalPlus
            data files, see :mod:`code_data`), a path to a HumanEval-schema ``.jsonl``, or
            ``procedural`` (generated offline, see :mod:`code_gen`).
        level: difficulty of ``procedural`` (1-5, see ``code_gen.LEVELS``; default 1); only
            for that dataset.
        split: ``train`` / ``eval`` (a fixed hash split of the task ids, ~2/3 / ~1/3; for
            ``procedural``, of the functions' canonical keys) or ``all`` (every problem; use
            it to score the full benchmark; not for ``procedural``).
        mode: ``single`` (one submission) or ``multi`` (test feedback, up to ``max_attempts``).
        max_attempts: submissions per episode in ``multi`` mode (the registered id also
            truncates at 4 steps).
        reward: ``binary`` (1 if all tests pass) or ``fraction`` (share of test units passed).
        timeout_s: wall-clock limit of one test run (default 5 s; 15 s for EvalPlus data,
            whose many inputs run through the reference solution too).
        memory_mb: address-space limit of the tested program.
        isolation: sandbox level (``namespaces``, ``userns`` or ``process``). Default: the strongest
            namespaced level that works here (or ``ONELAYER_SANDBOX_ISOLATION``); when none works the
            env refuses to be built (UserError), so no untrusted code ever runs unisolated. ``process``
            opts in to weak isolation (no filesystem or network isolation; a warning on every run);
            see docs/sandbox.md.
        max_length: longest observation/action text the spaces admit.
    """

    # several attempts with test feedback (mode="multi"), but the model answers in text, not actions
    metadata = {"render_modes": [], "onelayer": {
        "name": "code", "metric": "pass@1", "multi_turn": True, "actions": False, "answer": "code",
        "train": {"env_kwargs": {"dataset": "humaneval"}, "max_new_tokens": 192, "num_tasks": 4,
                  "num_generations": 4},
        "suite": "humaneval"}}

    def __init__(self, dataset: str = "humaneval", split: str = "train", mode: str = "single",
                 max_attempts: int = 3, reward: str = "binary", timeout_s: float | None = None,
                 memory_mb: int = 1024, isolation: str | None = None, max_length: int = 16384,
                 level: int | None = None):
        max_attempts, memory_mb, max_length = (number_option("onelayer/Code-v0", n, v) for n, v in
                                               (("max_attempts", max_attempts), ("memory_mb", memory_mb), ("max_length", max_length)))
        if timeout_s is not None:
            timeout_s = number_option("onelayer/Code-v0", "timeout_s", timeout_s, float)
        if not isinstance(dataset, str) or not dataset:
            raise UserError(f"dataset must be one of {', '.join(NAMED_DATASETS)}, {PROCEDURAL} or a .jsonl path, "
                            f"got {dataset!r}")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} for onelayer/Code-v0: use one of {', '.join(SPLITS)}")
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r} for onelayer/Code-v0: use 'single' or 'multi'")
        if reward not in REWARDS:
            raise UserError(f"unknown reward {reward!r} for onelayer/Code-v0: use 'binary' or 'fraction'")
        if int(max_attempts) < 1:
            raise UserError(f"max_attempts must be at least 1, got {max_attempts}")
        if timeout_s is not None and timeout_s <= 0:
            raise UserError(f"timeout_s must be positive, got {timeout_s}")
        self.level = None
        if dataset == PROCEDURAL:
            self.level = check_level(number_option("onelayer/Code-v0", "level", 1 if level is None else level))
            if split == "all":
                raise UserError("dataset='procedural' has no split 'all': use split='train' (a stream) or 'eval' "
                                "(the fixed pool of the level)")
        elif level is not None:
            raise UserError(f"level={level!r} applies only to dataset='procedural' (this is {dataset!r}): drop it, "
                            "or add dataset=procedural")
        # Fail closed here, at construction: `onelayer train`/`eval` stop before any model loads or step runs.
        self.isolation = resolve_isolation(isolation)
        self.dataset, self.split, self.mode, self.reward_kind = dataset, split, mode, reward
        self.max_attempts = 1 if mode == "single" else int(max_attempts)
        self.memory_mb = int(memory_mb)
        # None: the procedural train stream, whose items are generated on reset.
        self._problems: tuple[CodeProblem, ...] | None
        if self.level is None:
            self._problems = load_split(dataset, split)
        else:
            self._problems = eval_pool(self.level) if split == "eval" else None
        self.timeout_s = float(timeout_s) if timeout_s is not None else (
            15.0 if self._problems and self._problems[0].inputs is not None else 5.0)
        self._index = {p.task_id: i for i, p in enumerate(self._problems or ())}
        self._prompts = [render_problem(p) for p in self._problems or ()]
        self._max_length = max_length
        for text in self._prompts:
            self._check_fits(text)
        # Generated text is printable ASCII (tests/test_code_gen.py), so the stream needs nothing more.
        charset = set(string.printable)
        for text in self._prompts:
            charset.update(text)
        charset = "".join(sorted(charset))
        self.observation_space = spaces.Text(max_length=max_length, min_length=0, charset=charset)
        self.action_space = spaces.Text(max_length=max_length, min_length=0, charset=charset)
        self._problem: CodeProblem | None = None
        self._prompt = ""
        self._attempt = 0
        self._done = True

    @property
    def num_tasks(self) -> int | None:
        """Number of problems in this split (None for the unbounded procedural train stream)."""
        return None if self._problems is None else len(self._problems)

    def task_ids(self) -> list[str]:
        """The dataset ids of this split's problems, in order (index ``i`` is ``options={"task_id": i}``)."""
        if self._problems is None:
            raise UserError("the procedural train split is an unbounded stream: it has no list of task ids")
        return [p.task_id for p in self._problems]

    def _check_fits(self, prompt: str) -> None:
        if len(prompt) + _FEEDBACK_RESERVE > self._max_length:
            raise UserError(f"max_length={self._max_length} is too small: a problem of {self.dataset!r} needs "
                            f"{len(prompt) + _FEEDBACK_RESERVE} characters with feedback; raise max_length")

    def _resolve_stream(self, task_id) -> int:
        prefix = task_id_of(self.level, "train", 0)[:-1]
        if isinstance(task_id, str) and task_id.startswith(prefix):
            task_id = task_id[len(prefix):]
        if isinstance(task_id, str) and not task_id.strip().isdigit():
            raise UserError(f"task_id {task_id!r} is not an item of the procedural level-{self.level} train split: "
                            f"use an index or an id such as {prefix}0")
        try:
            index = int(task_id)
        except (TypeError, ValueError):
            raise UserError(f"bad task_id {task_id!r}: use an index or an id such as {prefix}0") from None
        if not 0 <= index < TRAIN_INDEX_SPACE:
            raise UserError(f"task_id index {index} out of range: the train stream has items 0..{TRAIN_INDEX_SPACE - 1}")
        return index

    def _resolve(self, task_id) -> int:
        if self._problems is None:
            return self._resolve_stream(task_id)
        if isinstance(task_id, str) and task_id in self._index:
            return self._index[task_id]
        if isinstance(task_id, str) and not task_id.strip().lstrip("-").isdigit():
            other = "an index" if self.level is not None else "split='all' or an index"
            raise UserError(f"task_id {task_id!r} is not in the {self.split!r} split of {self.dataset!r} "
                            f"({self.num_tasks} problems, e.g. {self._problems[0].task_id!r}); use {other}")
        try:
            index = int(task_id)
        except (TypeError, ValueError):
            raise UserError(f"bad task_id {task_id!r}: use a dataset id such as 'HumanEval/0' or an index") from None
        if not 0 <= index < self.num_tasks:
            raise UserError(f"task_id index {index} out of range: this split has problems 0..{self.num_tasks - 1}")
        return index

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            index = self._resolve(options["task_id"])
        else:
            index = task_index(seed, self.num_tasks or TRAIN_INDEX_SPACE, self.np_random)
        if self._problems is None:
            self._problem = train_problem(self.level, index)
            self._prompt = render_problem(self._problem)
            self._check_fits(self._prompt)
        else:
            self._problem = self._problems[index]
            self._prompt = self._prompts[index]
        self._attempt = 0
        self._done = False
        info = {"task_id": self._problem.task_id, "anchor": self._prompt, "entry_point": self._problem.entry_point,
                "attempt": 0}
        return self._prompt, info

    def step(self, action: str):
        if self._problem is None or self._done:
            raise RuntimeError("onelayer/Code-v0: call reset() before step(); the episode has ended")
        problem = self._problem
        self._attempt += 1
        extracted = extract_code(str(action), problem.prompt, problem.entry_point)
        if extracted.code is None:
            outcome = TestOutcome(False, 0.0, 0, 0, _NO_CODE, _NO_CODE)
        else:
            outcome = run_tests(problem, extracted.code, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                                isolation=self.isolation)
        reward = 1.0 if outcome.passed else 0.0
        if self.reward_kind == "fraction":
            reward = 1.0 if outcome.passed else float(outcome.pass_fraction)
        terminated = outcome.passed or self._attempt >= self.max_attempts
        self._done = terminated
        obs = "" if terminated else self._feedback(outcome)
        info = {
            "task_id": problem.task_id, "anchor": obs, "won": outcome.passed, "success": outcome.passed,
            "passed": outcome.passed, "pass_fraction": float(outcome.pass_fraction), "error": outcome.error,
            "syntax_error": outcome.syntax_error, "timeout": outcome.timeout,
            "invalid_action": extracted.code is None, "attempt": self._attempt, "method": extracted.method,
        }
        return obs, reward, terminated, False, info

    def _feedback(self, outcome: TestOutcome) -> str:
        head = (f"Your solution did not pass the tests (attempt {self._attempt} of {self.max_attempts}).\n"
                f"{outcome.details or outcome.error}\n\n{_FEEDBACK_TAIL}\n\n")
        room = self._max_length - len(self._prompt)
        return clean_text(head)[:room] + self._prompt


def render_problem(problem: CodeProblem) -> str:
    """The first observation of a problem: instructions, then its prompt."""
    prompt = problem.prompt.strip("\n")
    if f"def {problem.entry_point}" in prompt:
        return f"{_INSTRUCTION}\n\n```python\n{prompt}\n```\n"
    # MBPP+-style prompts describe the task in a docstring without a signature.
    text = prompt.strip().strip('"').strip()
    helpers = prompt_context(problem.prompt, problem.entry_point)
    extra = f"\n\nYou may use these definitions:\n```python\n{helpers.strip()}\n```" if helpers else ""
    return (f"Write a Python function named `{problem.entry_point}` for the task below. Reply with the complete "
            f"function in a single ```python code block.\n\n{text}{extra}\n")
