"""Layer selection: which parameters of a decoder-only model RL may update.

A *layer* is one decoder block (attention, MLP and norms), as in the paper.
Spec grammar for ``--layers``::

    15          one block (negative counts from the end: -1 is the last)
    12,14,16    a list
    12-16       an inclusive range
    middle      block L // 2
    mid:K       the K middle blocks, floor(L/2 - K/2) <= l < floor(L/2 + K/2)
    top:K@DIR   the K blocks with the highest mean contribution in the sweep DIR, or
                the highest scores of a probe DIR (``onelayer probe``)
    bottom:K@DIR  the K blocks with the lowest (the control for top:K)
    top:K@DIR:METHOD  rank by that method of DIR's ranking.json (default: the first
                listed: a probe's recommended method, a sweep's ``contribution``)
    all         every block
    none        nothing (a no-training control)
    15.mlp      a sub-module of a block (``attn`` / ``mlp`` / ``norm`` or the
                model's own child name, e.g. ``15.self_attn.q_proj``)
    re:REGEX    every parameter whose name matches REGEX (``re.search``)

Embeddings, the final norm and the LM head stay frozen unless named in
``also_train`` (``embeddings``, ``final_norm``, ``lm_head``).

``top:K@DIR`` / ``bottom:K@DIR`` depend on a sweep's results (or a probe's
scores) and a domain, so they are resolved once (:func:`resolve_ranked_spec`)
into an explicit list before a spec reaches :func:`parse_layer_spec`; a run
stores that list and a resumed run reuses it without reading DIR again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from onelayer.agents.models import find_decoder_blocks  # noqa: F401  (re-exported: selections name blocks)
from onelayer.errors import UserError

# Common names for a block's sub-modules, so `15.attn` works across families.
_SUBMODULE_ALIASES = {
    "attn": ("self_attn", "attn", "attention", "self_attention"),
    "mlp": ("mlp", "feed_forward", "ffn"),
    "norm": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
             "post_feedforward_layernorm", "ln_1", "ln_2", "norm"),
}
_EXTRA_TARGETS = EXTRA_TARGETS = ("embeddings", "final_norm", "lm_head")


@dataclass
class LayerSelection:
    """The resolved selection: which blocks and exactly which parameter names train."""

    spec: str
    num_layers: int
    blocks_path: str
    layer_indices: list[int]
    param_names: list[str]
    num_trainable: int
    num_total: int
    also_train: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Trainable parameters as a fraction of all parameters."""
        return self.num_trainable / max(self.num_total, 1)

    @property
    def lowest_layer(self) -> int | None:
        """Index of the lowest trained block (None when only non-block params train)."""
        return min(self.layer_indices) if self.layer_indices else None

    def describe(self) -> str:
        """One line for the console: what trains and how much of the model that is."""
        if self.layer_indices:
            what = f"layers {_compact(self.layer_indices)} of {self.num_layers}"
        else:
            what = "no decoder layers" if not self.param_names else "selected parameters"
        extra = f" + {', '.join(self.also_train)}" if self.also_train else ""
        return (f"training {what}{extra} ({self.spec!r}): {self.num_trainable:,} of "
                f"{self.num_total:,} parameters ({100 * self.fraction:.2f}%)")

    def to_dict(self) -> dict:
        """JSON-serialisable summary stored in a run's config."""
        return {
            "spec": self.spec, "num_layers": self.num_layers, "blocks_path": self.blocks_path,
            "layer_indices": self.layer_indices, "num_trainable": self.num_trainable,
            "num_total": self.num_total, "fraction": self.fraction, "also_train": self.also_train,
            "num_param_tensors": len(self.param_names),
        }


def _compact(indices: list[int]) -> str:
    if len(indices) > 2 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(map(str, indices))


def _resolve_index(token: str, num_layers: int, spec: str) -> int:
    try:
        idx = int(token)
    except ValueError:
        raise UserError(
            f"bad layer spec {spec!r}: {token!r} is not a layer index; use e.g. 15, -1, 12,14,16, "
            "12-16, middle, mid:4, all, none, 15.mlp or re:PATTERN"
        ) from None
    if not -num_layers <= idx < num_layers:
        raise UserError(
            f"layer {idx} is out of range in {spec!r}: the model has {num_layers} layers, valid "
            f"indices are 0..{num_layers - 1} (or -{num_layers}..-1 from the end)"
        )
    return idx % num_layers


_RANKED = re.compile(r"(top|bottom):(\d+)@(.+)", re.IGNORECASE)
# ``DIR:METHOD``: a method name after the last colon (no slash in it, so a path never reads as one).
_METHOD_SUFFIX = re.compile(r"(.+):([A-Za-z][\w-]*)")


def is_ranked_spec(spec: str) -> bool:
    """True for ``top:K@DIR`` / ``bottom:K@DIR`` specs (they need a sweep's or a probe's ranking to resolve)."""
    return bool(re.match(r"\s*(top|bottom):", str(spec), re.IGNORECASE))


def _parse_ranked(spec: str) -> tuple[str, int, str, str | None]:
    """``(which, K, DIR, METHOD or None)`` of ``top:K@DIR[:METHOD]`` / ``bottom:K@DIR[:METHOD]``.

    A DIR whose own name ends in ``:word`` and exists as a directory is read as DIR (no method).
    """
    m = _RANKED.fullmatch(str(spec).strip())
    if not m or int(m.group(2)) < 1 or not m.group(3).strip():
        raise UserError(f"bad layer spec {spec!r}: use top:K@SWEEP_DIR or bottom:K@SWEEP_DIR with an integer K >= 1, "
                        "e.g. top:5@sweeps/qwen3-1.7b (or top:K@PROBE_DIR[:METHOD] for a probe's ranking)")
    where, method = m.group(3).strip(), None
    suffix = _METHOD_SUFFIX.fullmatch(where)
    if suffix and not Path(where).is_dir():
        where, method = suffix.group(1), suffix.group(2)
    return m.group(1).lower(), int(m.group(2)), where, method


def check_layer_spec(spec: str) -> None:
    """Check a spec's syntax without a model or a sweep (raises UserError)."""
    if is_ranked_spec(spec):
        _parse_ranked(spec)
    else:
        parse_layer_spec(spec, 10**6)  # the range is checked once the model is loaded


def rank_layers(ranking: dict[int, float], k: int, which: str = "top") -> list[int]:
    """The ``k`` layers with the highest (``top``) or lowest (``bottom``) value, sorted by index.

    Ties go to the lower layer index in both directions, so the result never
    depends on the order of the sweep's rows.
    """
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be top or bottom, got {which!r}")
    sign = -1.0 if which == "top" else 1.0
    order = sorted(ranking, key=lambda layer: (sign * ranking[layer], layer))
    return sorted(order[:k])


@dataclass
class RankedLayers:
    """A ``top:K@DIR`` / ``bottom:K@DIR`` spec resolved against a sweep's or a probe's ranking."""

    spec: str
    which: str
    k: int
    sweep_dir: str
    """The directory ranked from: a sweep's or a probe's (the name is kept for stored runs)."""
    domain: str
    layers: list[int]
    ranking: dict[int, float]
    """Score of every ranked layer (a sweep: mean contribution; a probe: its method's score) when the run started."""
    method: str = "contribution"
    """The ranking.json method the layers were ranked by (``contribution``: a sweep's measured C_l)."""

    @property
    def explicit(self) -> str:
        """The equivalent explicit spec, e.g. ``9,10,12``."""
        return ",".join(map(str, self.layers))

    def describe(self) -> str:
        """One line for the console."""
        fmt = ".2f" if self.method == "contribution" else ".3g"  # a probe's scores have no common scale
        scores = ", ".join(f"{i}: {self.ranking[i]:{fmt}}" for i in self.layers)
        what = "contribution" if self.method == "contribution" else f"probe score {self.method}"
        return (f"{self.spec} -> layers {self.explicit} ({self.which} {self.k} of {len(self.ranking)} ranked for "
                f"{self.domain!r} in {self.sweep_dir}; {what} {scores})")

    def to_dict(self) -> dict:
        """JSON form stored in a run's config (ranking keys become strings)."""
        return {"spec": self.spec, "which": self.which, "k": self.k, "sweep_dir": self.sweep_dir,
                "domain": self.domain, "layers": self.layers, "method": self.method,
                "ranking": {str(i): c for i, c in sorted(self.ranking.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> RankedLayers:
        """Inverse of :meth:`to_dict` (runs stored before probes have no ``method``: a sweep's contribution)."""
        return cls(d["spec"], d["which"], int(d["k"]), d["sweep_dir"], d["domain"], [int(i) for i in d["layers"]],
                   {int(i): float(c) for i, c in d["ranking"].items()}, d.get("method", "contribution"))


RANKING_FILE = "ranking.json"


def _method_scores(methods, method: str | None, where: str, spec: str) -> tuple[str, dict[int, float]]:
    """``(name, {layer: score})`` of ``method`` (None: the first listed) in a ranking.json ``methods`` map."""
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"{where} lists no ranking method: rewrite it (`onelayer report` for a sweep, "
                        "`onelayer probe` for a probe)")
    name = next(iter(methods)) if method is None else method
    if name not in methods:
        raise UserError(f"layer spec {spec!r}: {where} has no method {name!r}; it has: {', '.join(methods)}")
    try:
        scores = {int(k): float(v) for k, v in methods[name]["scores"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where} is damaged (method {name!r}: {type(e).__name__}): rewrite it") from None
    bad = [k for k, v in scores.items() if not math.isfinite(v)]
    if bad or not scores:
        raise UserError(f"{where}: method {name!r} has {'no scores' if not scores else f'non-finite scores for layers {bad}'}: "
                        "rewrite it")
    return name, scores


def read_ranking(sweep_dir: str, domain: str, spec: str = "", method: str | None = None) -> dict[int, float]:
    """A domain's layer scores from ``DIR/ranking.json``: a sweep's (sweeps and ``onelayer report`` write it) or a
    probe's (``onelayer probe`` writes it). ``method``: the ranking.json method to read (default: the first listed).

    Sweep layout: ``{"model", "num_layers", "results_sha256", "domains": {DOMAIN: {"env", "methods": {METHOD:
    {"scores": {layer: value}, "ranking": [...], "seconds"}}} or {"error": why}}}``; the sweep's method is
    ``contribution``, and a ranking older than the sweep's results.jsonl (by its sha256) is refused.
    Probe layout: ``{"model", "num_layers", "domain", "env", "methods": {METHOD: {...}}}``, one domain; a probe of
    another domain is refused (it ranked another env's layers).
    """
    return _read_ranking(sweep_dir, domain, spec, method)[1]


def _read_ranking(sweep_dir: str, domain: str, spec: str = "", method: str | None = None) -> tuple[str, dict[int, float]]:
    import hashlib
    import json

    path = Path(sweep_dir) / RANKING_FILE
    if not path.is_file():
        if (Path(sweep_dir) / "results.jsonl").is_file() or (Path(sweep_dir) / "sweep.json").is_file():
            raise UserError(f"layer spec {spec!r}: sweep {sweep_dir} has no {RANKING_FILE}: run `onelayer report "
                            f"{sweep_dir}` (sweeps write it as jobs finish)")
        raise UserError(f"layer spec {spec!r}: {sweep_dir} has no {RANKING_FILE}: it is neither a finished probe "
                        f"(`onelayer probe --out {sweep_dir}` writes one) nor a sweep (`onelayer report {sweep_dir}`)")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not ("domains" in data or "methods" in data):
            raise KeyError("domains or methods")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}): rewrite it (`onelayer report {sweep_dir}` for a "
                        "sweep, `onelayer probe` for a probe)") from None
    if "methods" in data and "domains" not in data:  # a probe: one domain, several methods
        ranked = data.get("domain")
        if not ranked:
            raise UserError(f"{path} does not say which domain its probe ranked (no 'domain' key): rerun "
                            "`onelayer probe` to rewrite it")
        if ranked != domain:
            raise UserError(f"layer spec {spec!r}: probe {sweep_dir} ranked the layers of domain {ranked!r} "
                            f"(env {data.get('env')}), not {domain!r}; probe this domain's env, or pass "
                            f"--rank-domain {ranked} to use that ranking anyway")
        return _method_scores(data["methods"], method, str(path), spec)
    domains = data["domains"]
    results = Path(sweep_dir) / "results.jsonl"
    if results.is_file() and data.get("results_sha256") != hashlib.sha256(results.read_bytes()).hexdigest():
        raise UserError(f"layer spec {spec!r}: {path} is older than the sweep's results: run `onelayer report "
                        f"{sweep_dir}` to bring it up to date")
    entry = domains.get(domain) if isinstance(domains, dict) else None
    if entry is None:
        raise UserError(f"sweep {sweep_dir} has no single-layer results for domain {domain!r} (it has: "
                        f"{', '.join(domains) or 'none'}); use --rank-domain or sweep that domain")
    if entry.get("error"):
        raise UserError(entry["error"])
    return _method_scores(entry.get("methods"), method, f"{path} (domain {domain!r})", spec)


def resolve_ranked_spec(spec: str, domain: str) -> RankedLayers:
    """Resolve ``top:K@DIR[:METHOD]`` / ``bottom:K@DIR[:METHOD]`` with DIR's layer ranking for ``domain``.

    DIR is a sweep directory (its measured contribution per layer) or a probe directory (``onelayer probe``:
    METHOD's score per layer, default the method its ranking.json lists first, the recommended one).
    """
    which, k, sweep_dir, method = _parse_ranked(spec)
    if not Path(sweep_dir).is_dir():
        raise UserError(f"layer spec {spec!r}: sweep directory {sweep_dir} does not exist, nor does a probe directory "
                        f"there (run `onelayer sweep --out {sweep_dir}` or `onelayer probe --out {sweep_dir}` first, "
                        "or fix the path)")
    name, ranking = _read_ranking(sweep_dir, domain, spec, method)
    if k > len(ranking):
        raise UserError(f"layer spec {spec!r}: {sweep_dir} ranks only {len(ranking)} layers for domain "
                        f"{domain!r}; ask for at most {len(ranking)}")
    return RankedLayers(str(spec).strip(), which, k, sweep_dir, domain, rank_layers(ranking, k, which), ranking, name)


def explicit_spec(spec: str, resolved: dict[str, RankedLayers]) -> str:
    """``spec`` itself, or the explicit layer list a ranked spec resolved to (from ``resolved``)."""
    if not is_ranked_spec(spec):
        return spec
    if spec.strip() not in resolved:
        raise UserError(f"layer spec {spec!r} has not been resolved against its sweep (resolve_ranked_spec)")
    return resolved[spec.strip()].explicit


def parse_layer_spec(spec: str, num_layers: int) -> tuple[list[int], dict[int, list[str]] | None, str | None]:
    """Parse a spec into (block indices, sub-module filters per index or None, regex or None).

    Pure function of the spec and the number of layers, so it can be validated
    before a model is loaded.
    """
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty layer spec: use e.g. --layers 15, middle, all or none")
    if spec.startswith("re:"):
        pattern = spec[3:]
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"bad regular expression in --layers {spec!r}: {e}") from None
        return [], None, pattern
    low = spec.lower()
    if low == "none":
        return [], None, None
    if low == "all":
        return list(range(num_layers)), None, None
    if low == "middle":
        return [num_layers // 2], None, None
    if is_ranked_spec(spec):
        _parse_ranked(spec)
        raise UserError(f"layer spec {spec!r} needs a sweep's ranking: resolve it first with "
                        "resolve_ranked_spec(spec, domain) (the trainer does this)")
    if low.startswith("mid:"):
        try:
            k = int(low[4:])
        except ValueError:
            raise UserError(f"bad layer spec {spec!r}: mid:K needs an integer K, e.g. mid:4") from None
        if not 1 <= k <= num_layers:
            raise UserError(f"bad layer spec {spec!r}: K must be in 1..{num_layers}")
        start = (num_layers - k) // 2  # floor(L/2 - K/2) for integers
        return list(range(start, start + k)), None, None

    indices: list[int] = []
    subs: dict[int, list[str]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise UserError(f"bad layer spec {spec!r}: empty item between commas")
        sub = None
        if "." in part:
            part, sub = part.split(".", 1)
            if not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", sub):
                raise UserError(f"bad layer spec {spec!r}: {sub!r} after {part!r}. is not a sub-module name; "
                                "use e.g. 15.mlp, 15.attn or 15.self_attn.q_proj")
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            a, b = (_resolve_index(x, num_layers, spec) for x in m.groups())
            if a > b:
                raise UserError(f"bad layer range {part!r} in {spec!r}: start must be <= end")
            new = list(range(a, b + 1))
        else:
            new = [_resolve_index(part, num_layers, spec)]
        for i in new:
            if i not in indices:
                indices.append(i)
            if sub is not None:
                subs.setdefault(i, []).append(sub)
            else:
                subs.setdefault(i, []).append("")
    any_sub = any(s for v in subs.values() for s in v)
    return sorted(indices), (subs if any_sub else None), None


def _submodule_prefixes(block: nn.Module, sub: str, spec: str) -> list[str]:
    children = dict(block.named_children())
    head, _, rest = sub.partition(".")
    names = [head] if head in children else [n for n in _SUBMODULE_ALIASES.get(head, ()) if n in children]
    if not names:
        raise UserError(
            f"bad layer spec {spec!r}: block {type(block).__name__} has no sub-module {head!r}; "
            f"its sub-modules are {', '.join(children)} (aliases: attn, mlp, norm)"
        )
    return [f"{n}.{rest}" if rest else n for n in names]


def select_parameters(model: nn.Module, spec: str, also_train: list[str] | tuple[str, ...] = ()) -> LayerSelection:
    """Resolve ``spec`` on ``model`` (without changing it) into a LayerSelection."""
    also_train = [a.strip() for a in also_train if a.strip()]
    for a in also_train:
        if a not in _EXTRA_TARGETS:
            raise UserError(f"unknown --also-train target {a!r}: choose from {', '.join(_EXTRA_TARGETS)}")
    named = list(model.named_parameters())  # tied weights appear once
    blocks_path, blocks = "", None
    num_layers = 0
    if not str(spec).startswith("re:"):
        blocks_path, blocks = find_decoder_blocks(model)
        num_layers = len(blocks)
    else:
        try:
            blocks_path, blocks = find_decoder_blocks(model)
            num_layers = len(blocks)
        except UserError:
            pass
    indices, subs, pattern = parse_layer_spec(spec, num_layers)

    selected: list[str] = []
    if pattern is not None:
        rx = re.compile(pattern)
        selected = [n for n, _ in named if rx.search(n)]
        if not selected:
            raise UserError(f"--layers {spec!r} matches no parameter name of {type(model).__name__}")
        if blocks is not None:
            for n in selected:
                m = re.match(re.escape(blocks_path) + r"\.(\d+)\.", n)
                if m and int(m.group(1)) not in indices:
                    indices.append(int(m.group(1)))
            indices.sort()
    else:
        prefixes: list[str] = []
        for i in indices:
            wanted = (subs or {}).get(i, [""])
            if "" in wanted:
                prefixes.append(f"{blocks_path}.{i}.")
                continue
            for s in wanted:
                for p in _submodule_prefixes(blocks[i], s, spec):
                    prefixes.append(f"{blocks_path}.{i}.{p}")
        selected = [n for n, _ in named if any(n.startswith(p) if p.endswith(".") else (n == p or n.startswith(p + ".")) for p in prefixes)]
        if indices and not selected:
            raise UserError(f"--layers {spec!r} selects no parameters of {type(model).__name__}")

    extra = _extra_param_names(model, named, blocks_path, also_train)
    for n in extra:
        if n not in selected:
            selected.append(n)
    sizes = {n: p.numel() for n, p in named}
    return LayerSelection(
        spec=str(spec), num_layers=num_layers, blocks_path=blocks_path, layer_indices=indices,
        param_names=selected, num_trainable=sum(sizes[n] for n in selected),
        num_total=sum(sizes.values()), also_train=also_train,
    )


def _extra_param_names(model: nn.Module, named, blocks_path: str, also_train: list[str]) -> list[str]:
    if not also_train:
        return []
    ids = {}
    if "embeddings" in also_train:
        emb = model.get_input_embeddings()
        ids.update({id(p): "embeddings" for p in emb.parameters()})
    if "lm_head" in also_train:
        head = model.get_output_embeddings()
        if head is None:
            raise UserError(f"{type(model).__name__} has no LM head to train")
        ids.update({id(p): "lm_head" for p in head.parameters()})
    out = [n for n, p in named if id(p) in ids]
    if "final_norm" in also_train:
        body_prefix = blocks_path.rsplit(".", 1)[0] + "." if "." in blocks_path else ""
        norms = [n for n, _ in named if n.startswith(body_prefix) and not n.startswith(blocks_path + ".")
                 and re.search(r"(^|\.)(norm|final_layernorm|ln_f)\.", n)]
        if not norms:
            raise UserError(f"cannot find the final norm of {type(model).__name__}")
        out += norms
    return out


def apply_selection(model: nn.Module, selection: LayerSelection) -> list[nn.Parameter]:
    """Freeze everything except the selection; return the trainable parameters in name order."""
    chosen = set(selection.param_names)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
        if name in chosen:
            params.append(p)
    return params
