"""Learning rates per layer: the optimizer's parameter groups.

By default every trained parameter shares ``--lr`` (the paper's rule). Two
explicit, recorded options change that:

``--layer-lr 'SPEC=LR;SPEC=LR'``
    Parameters of the blocks a SPEC names train at LR: an absolute rate
    (``1e-5``) or a multiple of the base rate (``2x``). SPEC is any layer spec
    (``12-16``, ``15.mlp``, ``top:5@SWEEP_DIR``); a later entry wins where two
    overlap. Everything else the selection trains stays at the base rate.
    Boost-Bk is ``--layers all --layer-lr top:5@SWEEP_DIR=2x``.

``--single-layer-lr-scale S``
    When the selection is one block, the base rate is ``S x --lr`` (the paper
    notes ~3x leaves the layer ranking unchanged). 1.0 keeps the same-lr rule.

Each rule becomes one AdamW parameter group, so the run records the rate of
every group, and frozen parameters are in no group (they hold no optimizer
state).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from onelayer.errors import UserError
from onelayer.training.layers import LayerSelection, check_layer_spec, select_parameters


@dataclass
class LrRule:
    """One ``SPEC=LR`` entry of ``--layer-lr``."""

    spec: str
    value: float
    relative: bool
    """True for ``2x`` (a multiple of the base lr), False for an absolute lr."""

    def lr(self, base_lr: float) -> float:
        """The learning rate this rule gives when the base rate is ``base_lr``."""
        return self.value * base_lr if self.relative else self.value

    def describe(self) -> str:
        """The rule as written on the command line."""
        return f"{self.spec}={self.value:g}x" if self.relative else f"{self.spec}={self.value:g}"


def _parse_value(text: str, entry: str) -> tuple[float, bool]:
    t = str(text).strip().lower()
    relative = t.endswith("x")
    try:
        value = float(t[:-1] if relative else t)
    except ValueError:
        raise UserError(f"bad --layer-lr entry {entry!r}: the rate must be a number (1e-5) or a multiple "
                        "of --lr (2x)") from None
    if not value > 0:
        raise UserError(f"bad --layer-lr entry {entry!r}: the rate must be positive")
    return value, relative


def parse_layer_lr(value: str | dict | None) -> list[LrRule]:
    """Parse ``--layer-lr``: ``'SPEC=LR;SPEC=LR'`` (or a mapping from a config file) into rules, in order."""
    if not value:
        return []
    if isinstance(value, dict):
        pairs = [(str(k), str(v), f"{k}={v}") for k, v in value.items()]
    else:
        pairs = []
        for entry in filter(None, (e.strip() for e in str(value).split(";"))):
            if "=" not in entry:
                raise UserError(f"bad --layer-lr entry {entry!r}: write SPEC=LR, e.g. 12-16=1e-5 or top:5@SWEEP_DIR=2x; "
                                "separate entries with ';'")
            spec, lr = entry.rsplit("=", 1)
            pairs.append((spec, lr, entry))
    rules = []
    for spec, lr, entry in pairs:
        spec = spec.strip()
        if not spec:
            raise UserError(f"bad --layer-lr entry {entry!r}: the layer spec before '=' is empty")
        check_layer_spec(spec)
        rules.append(LrRule(spec, *_parse_value(lr, entry)))
    return rules


@dataclass
class ParamGroup:
    """One optimizer parameter group: a name, its learning rate and its parameters."""

    name: str
    """``base`` or ``rule1``, ``rule2``, ... (flat metric keys: ``lr/<name>``)."""
    lr: float
    param_names: list[str]
    layers: list[int]
    num_params: int
    rule: str | None = None
    """The ``--layer-lr`` entry that made the group (None for the base group)."""

    def to_dict(self) -> dict:
        """JSON summary stored in a run's config."""
        return {"name": self.name, "lr": self.lr, "rule": self.rule, "layers": self.layers,
                "num_params": self.num_params, "num_param_tensors": len(self.param_names)}


def single_layer_scale(selection: LayerSelection, scale: float) -> float:
    """The lr multiplier in effect: ``scale`` when the selection is exactly one block, else 1."""
    return scale if len(selection.layer_indices) == 1 else 1.0


def _block_index(name: str, blocks_path: str) -> int | None:
    m = re.match(re.escape(blocks_path) + r"\.(\d+)\.", name) if blocks_path else None
    return int(m.group(1)) if m else None


def build_param_groups(model: nn.Module, selection: LayerSelection, base_lr: float, rules: list[LrRule],
                       explicit: dict[str, str] | None = None) -> list[ParamGroup]:
    """Split the selected parameters into groups: the base rate, then one group per rule.

    ``explicit`` maps a rule's spec to the layer list it resolved to (for
    ``top:K@DIR`` specs). A rule naming parameters the selection does not
    train is a UserError: per-layer rates never unfreeze anything.
    """
    explicit = explicit or {}
    chosen = list(selection.param_names)
    chosen_set = set(chosen)
    owner: dict[str, int] = {}  # parameter name -> index of the last rule naming it
    for r, rule in enumerate(rules):
        names = select_parameters(model, explicit.get(rule.spec, rule.spec)).param_names
        outside = [n for n in names if n not in chosen_set]
        if outside:
            layers = sorted({i for i in (_block_index(n, selection.blocks_path) for n in outside) if i is not None})
            where = f"layers {','.join(map(str, layers))}" if layers else ", ".join(outside[:3])
            raise UserError(f"--layer-lr {rule.describe()!r} names {where}, which --layers {selection.spec!r} does not "
                            "train; add them to --layers (Boost-Bk trains every layer: --layers all)")
        for n in names:
            owner[n] = r
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    groups = []
    for r in [None, *range(len(rules))]:
        names = [n for n in chosen if owner.get(n) == r]
        if not names:
            continue
        layers = sorted({i for i in (_block_index(n, selection.blocks_path) for n in names) if i is not None})
        groups.append(ParamGroup("base" if r is None else f"rule{r + 1}", base_lr if r is None else rules[r].lr(base_lr),
                                 names, layers, sum(sizes[n] for n in names),
                                 None if r is None else rules[r].describe()))
    return groups


def make_optimizer(model: nn.Module, groups: list[ParamGroup], weight_decay: float = 0.0) -> torch.optim.AdamW | None:
    """AdamW with one parameter group per :class:`ParamGroup` (None when nothing trains).

    Each torch group also carries ``name`` and ``base_lr`` (the rate before warm-up).
    """
    if not groups:
        return None
    params = dict(model.named_parameters())
    return torch.optim.AdamW(
        [{"params": [params[n] for n in g.param_names], "lr": g.lr, "base_lr": g.lr, "name": g.name} for g in groups],
        lr=groups[0].lr, weight_decay=weight_decay)


def describe_groups(groups: list[ParamGroup]) -> str:
    """One line for the console: every group's rate and size."""
    parts = []
    for g in groups:
        what = f"layers {','.join(map(str, g.layers))}" if g.layers else f"{len(g.param_names)} tensors"
        parts.append(f"{g.name}{f' ({g.rule})' if g.rule else ''}: lr {g.lr:g} on {what} ({g.num_params:,} params)")
    return "learning rates: " + "; ".join(parts)
