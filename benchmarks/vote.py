"""Ensembles of runs: majority vote over final answers, and how much the runs' solved sets overlap.

The paper's observation: the best single-layer models solve different
problems (mean pairwise Jaccard ~34%), and their majority vote beats both full
RL and self-consistency of the full model with the same number of samples.

Everything here works on per-item outcomes (:class:`ItemOutcome`, as in an
evaluation's ``items``), aligned by item index, so any evaluation (``--env``,
``--suite``, a saved result JSON) plugs in.

Per domain:

* **math**: each member's final answer (the env's ``extracted`` answer, else
  :func:`extract_answer` on the response) votes; answers equal after
  math-verify normalisation count as one. The most common answer wins
  (a plurality, as in self-consistency); a tie goes to the answer given by the
  earliest member. The vote is correct when the winning answer's first
  member was graded correct (same answer, same gold). Members without an
  answer abstain.
* **code**: programs have no comparable "answer"; members are pooled as ``n``
  samples and ``pass@k`` (k = 1..n) is reported; there is no majority vote.
* **agentic** (ALFWorld): not applicable (an episode is a sequence of actions
  in an interactive world, with no final answer to vote on); only the overlap
  and the any-member rate are reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onelayer.agents.evaluation import ItemOutcome
from onelayer.envs.domain import domain_spec
from onelayer.errors import UserError


def final_answer(item: ItemOutcome) -> str | None:
    """The item's final answer: the env's extracted answer when it recorded one, else extracted from the response."""
    from onelayer.envs.grading import extract_answer

    if "extracted" in item.details:
        ans = item.details["extracted"]
        return str(ans).strip() if ans is not None and str(ans).strip() else None
    return extract_answer(item.response)


def answer_classes(answers: list[str | None]) -> list[list[int]]:
    """Group member indices whose answers are equivalent (math-verify); ``None`` answers are left out.

    Classes are in order of their first member; members within a class are in order.
    """
    from onelayer.envs.grading import same_answer

    classes: list[list[int]] = []
    for m, a in enumerate(answers):
        if a is None:
            continue
        for c in classes:
            if same_answer(answers[c[0]], a):
                c.append(m)
                break
        else:
            classes.append([m])
    return classes


def majority_vote(answers: list[str | None]) -> tuple[int | None, int]:
    """(member whose answer wins, its number of votes); (None, 0) when every member abstains.

    The most common answer wins; ties go to the class whose first member comes first.
    """
    classes = answer_classes(answers)
    if not classes:
        return None, 0
    best = max(classes, key=lambda c: (len(c), -c[0]))
    return best[0], len(best)


def jaccard(a: set, b: set) -> float | None:
    """|a & b| / |a | b|; None when both sets are empty (undefined)."""
    union = a | b
    return len(a & b) / len(union) if union else None


def pairwise_jaccard(solved: list[set]) -> list[list[float | None]]:
    """The Jaccard index of every pair of members' solved-item sets (a symmetric matrix, 1.0 on the diagonal)."""
    n = len(solved)
    return [[1.0 if i == j else jaccard(solved[i], solved[j]) for j in range(n)] for i in range(n)]


def mean_pairwise(matrix: list[list[float | None]]) -> float | None:
    """Mean over the pairs i < j with a defined value; None when there is none."""
    vals = [matrix[i][j] for i in range(len(matrix)) for j in range(i + 1, len(matrix)) if matrix[i][j] is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class VotedItem:
    """One item of an ensemble: every member's answer and outcome, and the vote."""

    index: int
    task_id: str
    answers: list[str | None]
    solved_by: list[int]
    winner: int | None = None
    """Member whose answer won the vote (math); None when all abstained or no vote applies."""
    votes: int = 0
    success: bool | None = None
    """Whether the voted answer is correct; None where no vote applies."""


@dataclass
class VoteResult:
    """An ensemble's scores: each member's, the vote's, pass@k across members, and the pairwise overlap."""

    domain: str
    members: list[str]
    member_scores: list[float]
    method: str
    """``majority`` (math), ``pass@k`` (code) or ``none`` (agentic)."""
    vote_score: float | None
    any_score: float
    """Fraction of items solved by at least one member (pass@n, an upper bound for any vote)."""
    pass_at_k: dict[str, float]
    jaccard: list[list[float | None]]
    mean_jaccard: float | None
    num_items: int
    note: str
    items: list[VotedItem] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the console."""
        lines = [f"{len(self.members)} members on {self.num_items} {self.domain} items: "
                 + ", ".join(f"{n} {s:.4f}" for n, s in zip(self.members, self.member_scores))]
        if self.vote_score is not None:
            lines.append(f"majority vote {self.vote_score:.4f}")
        lines.append(f"solved by any member {self.any_score:.4f}; "
                     + ", ".join(f"{k} {v:.4f}" for k, v in self.pass_at_k.items()))
        mj = "n/a" if self.mean_jaccard is None else f"{self.mean_jaccard:.3f}"
        lines.append(f"mean pairwise Jaccard of solved items {mj}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _pass_at_k(n: int, c: int, k: int) -> float:
    from math import comb

    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def vote(outcomes: list[list[ItemOutcome]], domain: str, names: list[str] | None = None) -> VoteResult:
    """Ensemble the members' per-item outcomes (one list per member, the same items in each).

    ``domain`` (a domain name or env id) picks the rule by its DomainSpec's ``answer``:
    ``final_answer`` envs (math) vote on final answers, ``code`` envs pool members for
    pass@k, the others (agents: no final answer to vote on) report overlap only.
    """
    if len(outcomes) < 2:
        raise UserError(f"a vote needs at least 2 members, got {len(outcomes)}")
    names = names or [f"member{i}" for i in range(len(outcomes))]
    if len(names) != len(outcomes):
        raise ValueError("one name per member")
    indices = [it.index for it in outcomes[0]]
    for name, items in zip(names, outcomes):
        if [it.index for it in items] != indices:
            raise UserError(f"{name} was evaluated on other items than {names[0]} ({len(items)} vs {len(indices)} "
                            "items): evaluate every member on the same env, options and --num-items")
    spec = domain_spec(domain)  # how its answers compare: the env's DomainSpec.answer
    kind, domain = spec.answer, spec.name
    n, n_items = len(outcomes), len(indices)
    solved = [{it.index for it in items if it.success} for items in outcomes]
    matrix = pairwise_jaccard(solved)
    voted: list[VotedItem] = []
    for pos, idx in enumerate(indices):
        row = [items[pos] for items in outcomes]
        answers = [final_answer(it) for it in row] if kind == "final_answer" else [None] * n
        item = VotedItem(idx, row[0].task_id, answers, [m for m in range(n) if row[m].success])
        if kind == "final_answer":
            item.winner, item.votes = majority_vote(answers)
            item.success = item.winner is not None and bool(row[item.winner].success)
        voted.append(item)
    counts = [len(v.solved_by) for v in voted]
    pass_k = {f"pass@{k}": sum(_pass_at_k(n, c, k) for c in counts) / max(n_items, 1) for k in range(1, n + 1)}
    if kind == "final_answer":
        method, score = "majority", sum(bool(v.success) for v in voted) / max(n_items, 1)
        note = ""
    elif kind == "code":
        method, score = "pass@k", None
        note = (f"code: no majority vote; the {n} members are pooled as {n} samples per problem and pass@k "
                "is reported")
    else:
        method, score = "none", None
        note = (f"{domain}: majority vote is not applicable (an episode is a sequence of actions, with no final "
                "answer to vote on); only the overlap and the any-member rate are reported")
    return VoteResult(domain, list(names), [len(s) / max(n_items, 1) for s in solved], method, score,
                      sum(1 for c in counts if c) / max(n_items, 1), pass_k, matrix, mean_pairwise(matrix),
                      n_items, note, voted)


def outcomes_of(result: dict) -> list[ItemOutcome]:
    """The per-item outcomes of an evaluation result (``onelayer eval`` JSON)."""
    if "items" not in result:
        raise UserError("an evaluation result without per-item outcomes cannot be voted on: evaluate one suite or env")
    names = ItemOutcome.__dataclass_fields__
    return [ItemOutcome(**{k: v for k, v in it.items() if k in names}) for it in result["items"]]


def _evaluate_member(member: str, suite: str | None, eval_kw: dict) -> dict:
    from onelayer.benchmarks.evaluate import evaluate, evaluate_suites

    p = Path(member)
    if p.is_file() and p.suffix == ".json":  # a saved `onelayer eval --out` result
        return json.loads(p.read_text(encoding="utf-8"))
    if not p.is_dir():
        raise UserError(f"vote member {member} is neither a run directory nor an evaluation result (.json)")
    if suite is not None:
        res = evaluate_suites(suite, run=member, batch_size=eval_kw.get("batch_size"), device=eval_kw["device"],
                              dtype=eval_kw["dtype"], num_items=eval_kw.get("num_items"))
        if "suites" in res:
            raise UserError("--vote takes one suite at a time")
        return res
    return evaluate(run=member, **eval_kw)


def run_vote(members: list[str], *, suite: str | None = None, env: str | None = None, env_kwargs: dict | None = None,
             num_items: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
             self_consistency: str | None = None, sc_temperature: float = 0.7, device: str = "auto",
             dtype: str = "auto", out: str | None = None) -> dict:
    """Evaluate every member (a run directory or a saved result JSON) greedily, vote, and compare.

    ``self_consistency`` (a run directory or a model) is sampled ``len(members)``
    times at ``sc_temperature`` (seeds 0..n-1) on the same items, and its samples
    are voted the same way: the baseline at an equal sample budget.
    """
    from onelayer.benchmarks.evaluate import evaluate

    if len(members) < 2:
        raise UserError(f"--vote needs at least 2 runs separated by commas, got {len(members)}")
    eval_kw = dict(env=env, env_kwargs=env_kwargs, num_items=num_items, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, device=device, dtype=dtype)
    results = [_evaluate_member(m, suite, eval_kw) for m in members]
    first = results[0]
    for m, r in zip(members[1:], results[1:]):
        if (r.get("env"), r.get("env_kwargs") or {}) != (first.get("env"), first.get("env_kwargs") or {}):
            raise UserError(f"{m} was evaluated on {r.get('env')} {r.get('env_kwargs')}, {members[0]} on "
                            f"{first.get('env')} {first.get('env_kwargs')}: vote members must share the env")
    domain = first.get("env") or first.get("domain") or "onelayer/Math-v0"
    ensemble = vote([outcomes_of(r) for r in results], domain, members)
    out_dict = {"vote": ensemble.to_dict(), "env": first.get("env"), "env_kwargs": first.get("env_kwargs") or {},
                "suite": suite, "domain": domain, "members": members, "self_consistency": None}
    if self_consistency is not None:
        from onelayer.training import checkpoint as ckpt

        src = Path(self_consistency)  # a run directory holds trained.safetensors; a model directory does not
        is_run = (src / ckpt.CONFIG_FILE).is_file() and (src / ckpt.TRAINED_FILE).is_file()
        settings = first.get("settings", {})
        samples = []
        for seed in range(len(members)):
            samples.append(evaluate(
                run=self_consistency if is_run else None, model=None if is_run else self_consistency,
                env=first["env"], env_kwargs=first.get("env_kwargs") or {}, num_items=first["num_items"],
                max_new_tokens=settings.get("max_new_tokens"), temperature=sc_temperature, seed=seed,
                batch_size=batch_size, device=device, dtype=dtype))
        sc = vote([outcomes_of(r) for r in samples], domain, [f"sample{s}" for s in range(len(members))])
        out_dict["self_consistency"] = {"source": self_consistency, "temperature": sc_temperature,
                                        "num_samples": len(members), **sc.to_dict()}
    if out:
        from onelayer.io import atomic_write_json

        atomic_write_json(out, out_dict)
    return out_dict
