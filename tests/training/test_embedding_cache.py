"""The embedding cache's encoder calls: several windows at a time (OpenVINO's streams stay busy), PyTorch's
batch size passed on, every window's embedding stored in its place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.config import ModelConfig
from pipeline.training.data import TrainingCase, crop_window, fixed_windows
from pipeline.training.embedding_cache import WINDOWS_PER_CALL, EmbeddingCache


def test_the_cache_hands_the_encoder_several_windows_per_call_and_stores_each_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_autoprompt_sam(
        ModelConfig(backbone="tiny", head_channels=16, adapter_dim=8),
        num_classes=1,
        in_channels=1,
        backbone=load_backbone("tiny"),
    )
    generator = np.random.default_rng(3)
    data = generator.random((1, 5, 300, 300), dtype=np.float32)  # 4 windows of 256 on each of 5 slices
    case = TrainingCase(name="case", data=data, seg=np.zeros((5, 300, 300), np.int16), locations={})
    calls = []
    encode = SamBackbone.encode

    def counted(self: SamBackbone, images: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        calls.append((len(images), batch_size))
        return encode(self, images, batch_size=batch_size)

    monkeypatch.setattr(SamBackbone, "encode", counted)
    cache = EmbeddingCache(
        tmp_path, {"backbone_checksum": "tiny", "window_size": [256, 256], "precision": "fp32"}
    )
    assert cache.build(model, [case], device=torch.device("cpu"), batch_size=1) == 1
    assert WINDOWS_PER_CALL == 8 and calls == [(8, 1), (8, 1), (4, 1)]  # 20 windows; PyTorch one at a time

    stored = np.load(cache.path(case.name))
    corners = fixed_windows((300, 300), (256, 256))
    assert stored.shape == (5, 4, 256, 64, 64) and len(corners) == 4
    window = crop_window(data[:, 3], *corners[2], (256, 256))
    with torch.inference_mode():
        expected = model.encode(torch.from_numpy(window[None])).numpy()[0]
    np.testing.assert_allclose(stored[3, 2].astype(np.float32), expected, atol=2e-2, rtol=1e-2)
