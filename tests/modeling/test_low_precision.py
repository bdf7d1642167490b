"""bf16 copies of the mask decoder for inference: used only without autograd under CPU bf16 autocast,
renewed when the weights change, and as close to fp32 as bf16 autocast."""

from __future__ import annotations

import copy

import torch

from autoprompt.devices import Precision, autocast
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.low_precision import _COPIES, inference_dtype, low_precision_copy

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


def test_only_inference_under_cpu_bf16_autocast_asks_for_bf16():
    with torch.inference_mode():
        assert inference_dtype(CPU) is None  # fp32 prediction
        with autocast(CPU, Precision.BF16):
            assert inference_dtype(CPU) is torch.bfloat16
            assert inference_dtype(torch.device("cuda")) is None
    with autocast(CPU, Precision.BF16):
        assert inference_dtype(CPU) is None  # autograd on: training


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
