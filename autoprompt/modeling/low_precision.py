"""bf16 copies of modules for inference on a CPU, kept in step with the weights they copy.

Under CPU bf16 autocast PyTorch keeps a module's weights in fp32 and converts weights and activations at
every matrix product, while layer norms, GELUs and residual additions run in fp32: on SAM's mask decoder,
which works on ``P x 4096 x 256`` image tokens per prompt, those conversions and fp32 element-wise passes
cost more than the products themselves. A copy whose weights are bf16, run without autocast, keeps every
activation in bf16 (``python -m benchmarks.speed`` reports the decoder both ways).

When it applies (:func:`inference_dtype`): no autograd and bf16 autocast on the CPU, i.e. prediction at bf16
precision (``autoprompt predict``, serve, validation); training and fp32 prediction run the module itself.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.dtype, nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """``torch.bfloat16`` when code on ``device`` runs without autograd under CPU bf16 autocast, else None."""
    if device.type != "cpu" or torch.is_grad_enabled() or not torch.is_autocast_enabled("cpu"):
        return None
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of ``module`` with its floating-point weights and buffers in ``dtype``.

    Made once per state of the weights: remembered per module with each tensor's storage and in-place
    version counter, so an optimiser step, ``load_state_dict`` or a move to another device gives a new copy.
    """
    state = tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))
    known = _COPIES.get(module)
    if known is not None and known[0] == state and known[1] == dtype:
        return known[2]
    duplicate = copy.deepcopy(module).to(dtype).requires_grad_(False).eval()
    _COPIES[module] = (state, dtype, duplicate)
    return duplicate
