"""GPU memory and precision for layer-targeted training.

- ``keep_fp32_master``: in a bf16 (or fp16) model, the trained tensors are
  upcast to fp32 in place, so AdamW's moments are fp32 too and small updates are
  not rounded away; the modules that own them compute in fp32 between a cast of
  their inputs up and of their outputs back to the model's dtype. The frozen
  rest of the model stays 16-bit.
- ``checkpoint_blocks``: the blocks a backward pass runs through (the lowest
  trained block and everything above it) recompute their activations during
  backward instead of keeping them (``torch.utils.checkpoint``). The blocks
  below need nothing kept: no tensor there requires grad.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, another OS)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); whether it could.

    The sampler's KV cache is freed when sampling ends, but glibc keeps most of it in the process's heap, so the
    update's allocations land on top of it and the step's peak resident memory is the sum of both phases'. After
    the trim the update starts from the weights and what is live. No computation changes; later allocations land
    elsewhere, which (as with any change in what a process allocated before) can move float rounding in the
    matmul kernels (results/RESULTS.md: the main job's full job under rounding).
    """
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def _cast_floats(x, dtype: torch.dtype):
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, tuple):
        return tuple(_cast_floats(v, dtype) for v in x)
    if isinstance(x, list):
        return [_cast_floats(v, dtype) for v in x]
    return x


def keep_fp32_master(model: nn.Module, params: list[nn.Parameter]) -> list:
    """Upcast ``params`` (16-bit) to fp32 in place and make their modules compute in fp32.

    The Parameter objects stay the same (an optimizer built on them before or
    after sees fp32 tensors). Returns the hook handles; nothing happens for
    parameters that are already fp32.
    """
    low = [p for p in params if p.dtype in (torch.bfloat16, torch.float16)]
    if not low:
        return []
    model_dtype = low[0].dtype
    ids = {id(p) for p in low}
    with torch.no_grad():
        for p in low:
            p.data = p.data.float()

    def pre(module, args, kwargs):
        return _cast_floats(args, torch.float32), {k: _cast_floats(v, torch.float32) for k, v in kwargs.items()}

    def post(module, args, kwargs, output):
        return _cast_floats(output, model_dtype)

    handles = []
    for module in model.modules():
        if any(id(p) in ids for p in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
    return handles


def checkpoint_blocks(blocks: nn.ModuleList, first: int) -> None:
    """Recompute blocks ``first..`` during backward instead of storing their activations.

    Wraps each block's ``forward``; passes without grad (sampling, reference
    log-probs) run it unchanged.
    """
    for block in list(blocks)[first:]:
        if getattr(block, "_onelayer_checkpointed", False):
            continue
        original = block.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        block.forward = forward
        block._onelayer_checkpointed = True
