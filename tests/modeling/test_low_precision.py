"""The mask decoder in bf16 under CPU bf16 autocast: a copy for inference, renewed when the weights change;
the weights cast in the graph for training, gradients reaching the fp32 weights; both as close to fp32 as
bf16 autocast."""

from __future__ import annotations

import copy

import torch

from autoprompt.devices import Precision, autocast
from autoprompt.modeling import class_decoder
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.low_precision import _COPIES, low_precision_copy, low_precision_dtype

CPU = torch.device("cpu")


def _prompts(n: int = 2, k: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embeddings": torch.randn(n, 256, 64, 64, generator=generator),
        "boxes": torch.tensor([0.1, 0.2, 0.6, 0.7]).repeat(n, k, 1),
        "coarse_logits": torch.randn(n, k, 256, 256, generator=generator),
        "class_tokens": torch.randn(n, k, 256, generator=generator),
    }


def _decode(backbone, prompts: dict[str, torch.Tensor]) -> torch.Tensor:
    embeddings = prompts["embeddings"]
    rest = {key: value for key, value in prompts.items() if key != "embeddings"}
    return decode_classes(
        backbone.prompt_encoder, backbone.mask_decoder, embeddings, output_size=256, **rest
    ).float()


def test_only_cpu_bf16_autocast_asks_for_bf16():
    assert low_precision_dtype(CPU) is None  # fp32
    with autocast(CPU, Precision.BF16):
        assert low_precision_dtype(CPU) is torch.bfloat16  # training
        assert low_precision_dtype(torch.device("cuda")) is None
        with torch.inference_mode():
            assert low_precision_dtype(CPU) is torch.bfloat16  # prediction


def test_the_copy_is_made_once_per_state_of_the_weights():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    first = low_precision_copy(module, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in first.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in module.parameters())
    assert low_precision_copy(module, torch.bfloat16) is first
    with torch.no_grad():
        module[0].weight.add_(1.0)  # an optimiser step, or load_state_dict
    second = low_precision_copy(module, torch.bfloat16)
    assert second is not first
    torch.testing.assert_close(second[0].weight.float(), module[0].weight.detach(), rtol=1e-2, atol=1e-2)


def test_bf16_inference_decodes_like_bf16_autocast(tiny_backbone):
    backbone = copy.deepcopy(tiny_backbone)
    prompts = _prompts()
    with torch.inference_mode():
        reference = _decode(backbone, prompts)
        with autocast(CPU, Precision.BF16):
            copied = _decode(backbone, prompts)
    assert backbone.mask_decoder in _COPIES
    with autocast(CPU, Precision.BF16):  # autograd on: the decoder itself, under autocast
        autocast_logits = _decode(backbone, prompts).detach()

    def relative_error(logits: torch.Tensor) -> float:
        return float((logits - reference).norm() / reference.norm())

    assert relative_error(copied) > 0  # it did run in bf16
    assert relative_error(copied) < 2 * relative_error(autocast_logits) + 1e-3
    assert float(((copied > 0) == (reference > 0)).float().mean()) > 0.99


def test_bf16_training_gives_the_fp32_weights_gradients_as_close_as_autocast(tiny_backbone, monkeypatch):
    backbone = copy.deepcopy(tiny_backbone).train().requires_grad_(True)  # a fixture other tests may freeze
    decoder = backbone.mask_decoder
    prompts = _prompts()

    def gradients() -> dict[str, torch.Tensor]:
        _decode(backbone, prompts).sum().backward()
        grads = {name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None}
        decoder.zero_grad()
        return grads

    reference = gradients()
    with autocast(CPU, Precision.BF16):
        cast = gradients()
        monkeypatch.setattr(class_decoder, "low_precision_dtype", lambda device: None)
        autocast_grads = gradients()
    assert decoder not in _COPIES  # training never uses the inference copy
    assert all(p.dtype == torch.float32 for p in decoder.parameters())
    assert all(grad.dtype == torch.float32 for grad in cast.values())

    def relative_error(grads: dict[str, torch.Tensor], name: str) -> float:
        return float((grads[name] - reference[name]).norm() / reference[name].norm().clamp(min=1e-12))

    names = [name for name, grad in reference.items() if grad.norm() > 1e-6 and "k_proj.bias" not in name]
    assert any(".norm" in name for name in names)  # layer norms are among the compared weights
    cast_errors = sorted(relative_error(cast, name) for name in names)
    autocast_errors = sorted(relative_error(autocast_grads, name) for name in names)
    assert cast_errors[-1] > 0  # it did run in bf16
    assert cast_errors[len(names) // 2] < 2 * autocast_errors[len(names) // 2] + 1e-3
    assert cast_errors[-1] < 2 * autocast_errors[-1] + 0.05
