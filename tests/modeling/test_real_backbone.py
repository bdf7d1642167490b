"""AutoPromptSAM on the real LiteMedSAM weights and a real ACDC slice (about 1 s per encoder pass on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.config import ModelConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def litemedsam() -> SamBackbone:
    """PyTorch's encoder: the adapted and the pretrained encoder are compared exactly here."""
    backbone = load_backbone("litemedsam")
    backbone.encoder_runtime = "eager"
    return backbone


@pytest.fixture(scope="module")
def acdc_slice(shared_data: Path) -> torch.Tensor:
    """The middle slice of an ACDC cine MR frame, min-max scaled to [0, 1], resized to ``1 x 1 x 256 x 256``."""
    volume = sitk.GetArrayFromImage(
        sitk.ReadImage(shared_data / "Dataset027_ACDC/imagesTr/patient002_frame01_0000.nii.gz")
    )
    plane = volume[volume.shape[0] // 2].astype(np.float32)
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    return F.interpolate(
        torch.from_numpy(plane)[None, None], size=(256, 256), mode="bilinear", align_corners=False
    )


@pytest.fixture(scope="module")
def acdc_embedding(litemedsam: SamBackbone, acdc_slice: torch.Tensor) -> torch.Tensor:
    """The pretrained LiteMedSAM embedding ``1 x 256 x 64 x 64`` of :func:`acdc_slice`."""
    with torch.no_grad():
        return litemedsam.encode(acdc_slice.expand(-1, 3, -1, -1))


def test_zero_initialised_adapters_equal_pretrained_litemedsam(litemedsam, acdc_slice, acdc_embedding):
    config = ModelConfig(encoder_adapters=True, decoder_adapters=True)
    model = build_autoprompt_sam(config, num_classes=2, in_channels=1, backbone=litemedsam)
    assert not model.uses_frozen_encoder
    with torch.no_grad():
        adapted = model.encode(acdc_slice)
        prompts = model.prompt_generator(embeddings=acdc_embedding)
        inputs = {
            "boxes": prompts.boxes,
            "coarse_logits": prompts.coarse_logits,
            "class_tokens": prompts.class_tokens,
            "output_size": 256,
        }
        parts = (model.backbone.prompt_encoder, model.backbone.mask_decoder)
        adapted_masks = decode_classes(*parts, acdc_embedding, **inputs)
        pretrained_masks = decode_classes(
            litemedsam.prompt_encoder, litemedsam.mask_decoder, acdc_embedding, **inputs
        )
    assert adapted.shape == (1, 256, 64, 64)
    assert acdc_embedding.std() > 0.01  # a real embedding, not a degenerate one
    assert torch.allclose(adapted, acdc_embedding, atol=1e-6)
    assert adapted_masks.shape == (1, 2, 256, 256)
    assert torch.allclose(adapted_masks, pretrained_masks, atol=1e-6)


def test_default_model_on_fp16_cached_real_embeddings(litemedsam, acdc_embedding):
    model = build_autoprompt_sam(ModelConfig(), num_classes=3, in_channels=1, backbone=litemedsam)
    assert model.uses_frozen_encoder and model.backbone.image_encoder is litemedsam.image_encoder
    counts = model.parameter_counts()
    assert counts["trainable"] < counts["total"] // 10  # the pretrained network stays frozen
    with torch.no_grad():
        exact = model(embeddings=acdc_embedding)
        cached = model(embeddings=acdc_embedding.half())  # as stored in the embedding cache
    assert cached.logits.shape == (1, 4, 256, 256) and cached.logits.dtype == torch.float32
    error = (cached.class_mask_logits - exact.class_mask_logits).norm() / exact.class_mask_logits.norm()
    assert error < 0.01, f"fp16 embedding cache changes the decoder output by {error:.2%}"


def test_fine_tuned_litemedsam_weights_load_with_verify_checkpoint_off(litemedsam, tmp_path: Path):
    from autoprompt.errors import AutoPromptError
    from autoprompt.modeling.build import load_configured_backbone

    state = {
        f"{part}.{key}": value.clone()
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
        for key, value in getattr(litemedsam, part).state_dict().items()
    }
    first = next(key for key in state if key.startswith("mask_decoder.") and state[key].is_floating_point())
    state[first] += 0.01  # "fine-tuned"
    checkpoint = tmp_path / "fine_tuned_litemedsam.pth"
    torch.save(state, checkpoint)

    with pytest.raises(AutoPromptError, match="fine_tuned_litemedsam.pth"):
        load_configured_backbone(ModelConfig(checkpoint=str(checkpoint)))
    tuned = load_configured_backbone(ModelConfig(checkpoint=str(checkpoint), verify_checkpoint=False))
    assert tuned.checksum != litemedsam.checksum
    assert torch.equal(
        dict(tuned.mask_decoder.state_dict())[first.removeprefix("mask_decoder.")], state[first]
    )


@pytest.mark.parametrize("window", [96, 256])
def test_litemedsam_built_for_a_small_window_still_segments_a_boxed_ventricle(shared_data: Path, window: int):
    """The same weights in a 96 x 96 window (a small-slice dataset's plan): a ground-truth box around the left
    ventricle of a real slice, enlarged to the window, still gives its mask."""
    volume = sitk.GetArrayFromImage(
        sitk.ReadImage(shared_data / "Dataset027_ACDC/imagesTr/patient002_frame01_0000.nii.gz")
    )
    labels = sitk.GetArrayFromImage(
        sitk.ReadImage(shared_data / "Dataset027_ACDC/labelsTr/patient002_frame01.nii.gz")
    )
    middle = volume.shape[0] // 2
    plane = volume[middle].astype(np.float32)
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    image = F.interpolate(torch.from_numpy(plane)[None, None], size=(window, window), mode="bilinear")
    truth = F.interpolate(
        torch.from_numpy((labels[middle] == 3).astype(np.float32))[None, None], size=(window, window)
    )
    rows, cols = np.nonzero(truth[0, 0].numpy())
    box = torch.tensor([[[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]]], dtype=torch.float32)
    backbone = load_backbone("litemedsam", window=window)
    assert backbone.embedding_size == (window // 4, window // 4)
    with torch.no_grad():
        embedding = backbone.encode(image.expand(-1, 3, -1, -1))
        sparse, dense = backbone.prompt_encoder(points=None, boxes=box, masks=None)
        masks, _ = backbone.mask_decoder(
            image_embeddings=embedding,
            image_pe=backbone.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    predicted = F.interpolate(masks, size=(window, window), mode="bilinear")[0, 0] > 0
    wanted = truth[0, 0] > 0.5
    dice = 2 * (predicted & wanted).sum() / (predicted.sum() + wanted.sum())
    assert dice > 0.8, f"Dice {dice:.3f} in a {window} x {window} window"
