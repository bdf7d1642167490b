"""Fixtures for the network tests: the tiny random backbone and small model configs."""

from __future__ import annotations

import pytest
import torch

from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.config import ModelConfig


@pytest.fixture(scope="session")
def tiny_backbone() -> SamBackbone:
    """The seeded tiny backbone; build_autoprompt_sam never changes it (it copies what it adapts).

    Its encoder runs in PyTorch, as in every model of :func:`tiny_config`: these tests compare adapted and
    frozen encoders exactly; ``test_encoder_runtime.py`` covers the OpenVINO runtime.
    """
    backbone = load_backbone("tiny")
    backbone.encoder_runtime = "eager"
    return backbone


def tiny_config(**changes: object) -> ModelConfig:
    """A small, fast ModelConfig on the tiny backbone (narrow heads, 3-stage U-Net, PyTorch encoder)."""
    settings = {"backbone": "tiny", "head_channels": 16, "unet_features": (8, 16, 32), "adapter_dim": 8}
    settings["encoder_runtime"] = "eager"
    settings.update(changes)
    return ModelConfig(**settings)


@pytest.fixture(scope="session")
def tiny_slices(tiny_backbone: SamBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    """Three random 1-channel slices ``3 x 1 x 256 x 256`` and their tiny-encoder embeddings ``3 x 256 x 64 x 64``.

    Encoding is the slow part on a CPU, so tests that are not about the encoder reuse these.
    """
    images = torch.rand(3, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeddings = tiny_backbone.encode(images.expand(-1, 3, -1, -1))
    return images, embeddings
