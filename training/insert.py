"""Insert a new decoder block into a model, to benchmark layers that do not exist yet.

``--insert-layer module:factory --insert-at 15`` calls ``factory(model, 15)``,
which returns a new block (an ``nn.Module`` with the same forward signature as
the model's own blocks); onelayer puts it at index 15 of the block list (the
old block 15 becomes 16), renumbers the attention caches, and updates the
model config so the model runs as usual. The new block is then trained like
any other (``--layers 15``).

The built-in factory ``onelayer.training.insert:identity_copy`` copies the
block just below the insertion point and zeroes its two output projections
(attention ``o_proj`` and MLP ``down_proj``), so the residual block adds
nothing and the model computes exactly what it did before insertion.
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from onelayer.errors import UserError
from onelayer.training.layers import find_decoder_blocks


def load_factory(spec: str):
    """``'module:function'`` to the callable, or a UserError saying what is wrong."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"--insert-layer must be 'module:factory' (e.g. onelayer.training.insert:identity_copy), got {spec!r}")
    module, name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot load block factory {spec!r}: {e}") from None
    if not callable(fn):
        raise UserError(f"block factory {spec!r} is not callable")
    return fn


def identity_copy(model: nn.Module, at: int) -> nn.Module:
    """A copy of the block below ``at`` (block 0 when ``at == 0``) whose output projections are zero."""
    _, blocks = find_decoder_blocks(model)
    block = copy.deepcopy(blocks[max(at - 1, 0)])
    zeroed = 0
    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear) and name.split(".")[-1] in ("o_proj", "down_proj", "out_proj", "c_proj", "dense_4h_to_h"):
            with torch.no_grad():
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
            zeroed += 1
    if zeroed < 2:
        raise UserError(f"identity_copy: cannot find the attention and MLP output projections of {type(block).__name__}; "
                        "write a factory for this architecture")
    return block


def insert_block(model: nn.Module, factory: str, at: int) -> int:
    """Insert ``factory(model, at)`` as block ``at``; returns the new number of blocks.

    The config's ``num_hidden_layers`` (and ``layer_types`` where present) and
    every attention module's ``layer_idx`` are updated so KV caches stay one
    slot per block.
    """
    path, blocks = find_decoder_blocks(model)
    n = len(blocks)
    if not isinstance(at, int) or not 0 <= at <= n:
        raise UserError(f"--insert-at {at} is out of range: the model has {n} blocks, insert at 0..{n}")
    new = load_factory(factory)(model, at)
    if not isinstance(new, nn.Module):
        raise UserError(f"block factory {factory!r} returned {type(new).__name__}, not an nn.Module")
    ref = next(blocks[0].parameters())
    new = new.to(device=ref.device, dtype=ref.dtype)
    items = list(blocks)
    items.insert(at, new)
    parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    setattr(parent, path.rsplit(".", 1)[-1], nn.ModuleList(items))
    for i, block in enumerate(items):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.num_hidden_layers = n + 1
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            cfg.layer_types = types[:at] + [types[max(at - 1, 0)]] + types[at:]
    model._onelayer_inserted = (factory, at)
    return n + 1
