"""Running a module in bf16 on a CPU, for inference and for training, instead of under bf16 autocast.

Under CPU bf16 autocast PyTorch keeps a module's weights in fp32 and converts weights and activations at
every matrix product, while layer norms, GELUs and residual additions run in fp32: on SAM's mask decoder,
which works on ``P x 4096 x 256`` image tokens per prompt, those conversions and fp32 element-wise passes
cost more than the products themselves. Running the module with bf16 weights and without autocast keeps
every activation in bf16 (``python -m benchmarks.speed`` reports the decoder both ways).

When it applies (:func:`low_precision_dtype`): code on the CPU under bf16 autocast (``amp: bf16``, the
automatic precision of a CPU with AVX512-BF16 or AMX).

- **Inference** (no autograd) runs a frozen bf16 copy of the module (:func:`low_precision_copy`).
- **Training** runs the module itself with its weights cast to bf16 inside the graph
  (:func:`torch.func.functional_call`), so the gradients reach the fp32 weights that the optimiser keeps.
  ``nn.LayerNorm`` layers keep fp32 weights and run in fp32: PyTorch's bf16 layer-norm kernel on a CPU
  sums the weight and bias gradients over every image token in bf16 and loses most of their value (SAM's
  ``LayerNorm2d``, made of element-wise operations whose sums accumulate in fp32, runs in bf16).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call

_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.dtype, nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    """``torch.bfloat16`` when code on ``device`` runs under CPU bf16 autocast, else None."""
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


def run_in_low_precision(module: nn.Module, dtype: torch.dtype, **inputs: object) -> object:
    """``module(**inputs)`` with its weights and floating-point tensor inputs in ``dtype``, autocast off.

    Without autograd a cached copy runs (:func:`low_precision_copy`); with autograd the module itself runs
    with its weights cast in the graph, ``nn.LayerNorm`` in fp32 (see the module docstring).
    """
    inputs = {
        name: value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
        for name, value in inputs.items()
    }
    with torch.autocast(device_type="cpu", enabled=False):
        if not torch.is_grad_enabled():
            return low_precision_copy(module, dtype)(**inputs)
        with _layer_norms_in_fp32(module, dtype) as norm_names:
            tensors = {
                name: tensor
                if _owner(name) in norm_names or not tensor.is_floating_point()
                else tensor.to(dtype)
                for name, tensor in (*module.named_parameters(), *module.named_buffers())
            }
            return functional_call(module, tensors, args=(), kwargs=inputs)


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


def _owner(tensor_name: str) -> str:
    """The name of the submodule that holds a parameter or buffer (``""`` for the module itself)."""
    return tensor_name.rpartition(".")[0]


@contextlib.contextmanager
def _layer_norms_in_fp32(module: nn.Module, dtype: torch.dtype) -> Iterator[set[str]]:
    """Make every ``nn.LayerNorm`` in ``module`` take fp32 inputs and return ``dtype``, for the duration;
    yields their names."""
    norms = {name: sub for name, sub in module.named_modules() if isinstance(sub, nn.LayerNorm)}
    handles = []
    for sub in norms.values():
        handles.append(sub.register_forward_pre_hook(lambda _, args: tuple(a.float() for a in args)))
        handles.append(sub.register_forward_hook(lambda _, __, output: output.to(dtype)))
    try:
        yield set(norms)
    finally:
        for handle in handles:
            handle.remove()
