"""Backbone loading: the registry, checksum verification of LiteMedSAM weights, and the CLI's answer to bad weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from autoprompt.cli import main
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.backbone import (
    LITEMEDSAM_SHA256,
    LITEMEDSAM_SIZE,
    SamBackbone,
    file_sha256,
    litemedsam_weights_path,
    load_backbone,
)


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    """A private copy of the bundled lite_medsam.pth to damage."""
    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(litemedsam_weights_path(), copy)
    return copy


def _run_cli(
    capsys: pytest.CaptureFixture, png_file: Path, checkpoint: Path, output: Path
) -> tuple[int, str]:
    status = main(
        [
            "segment",
            str(png_file),
            "--box",
            "20",
            "15",
            "50",
            "35",
            "--checkpoint",
            str(checkpoint),
            "-o",
            str(output),
        ]
    )
    return status, capsys.readouterr().err


def test_bundled_litemedsam_is_verified(litemedsam: SamBackbone) -> None:
    assert litemedsam.name == "litemedsam"
    assert litemedsam.checksum == LITEMEDSAM_SHA256
    assert litemedsam_weights_path().stat().st_size == LITEMEDSAM_SIZE


def test_flipped_bytes_give_checksum_error(
    weights_copy: Path, png_file: Path, tmp_path: Path, capsys
) -> None:
    data = bytearray(weights_copy.read_bytes())
    data[LITEMEDSAM_SIZE // 2 : LITEMEDSAM_SIZE // 2 + 8] = bytes(
        b ^ 0xFF for b in data[LITEMEDSAM_SIZE // 2 : LITEMEDSAM_SIZE // 2 + 8]
    )
    weights_copy.write_bytes(bytes(data))
    with pytest.raises(AutoPromptError, match="SHA-256 .* does not match"):
        load_backbone("litemedsam", checkpoint=weights_copy)
    output = tmp_path / "mask.png"
    status, err = _run_cli(capsys, png_file, weights_copy, output)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("autoprompt: error: ")
    assert str(weights_copy) in err and "corrupted" in err and "Traceback" not in err
    assert not output.exists()


def test_truncated_file_gives_size_error(weights_copy: Path, png_file: Path, tmp_path: Path, capsys) -> None:
    with weights_copy.open("r+b") as handle:
        handle.truncate(LITEMEDSAM_SIZE - 1000)
    with pytest.raises(
        AutoPromptError, match=f"has {LITEMEDSAM_SIZE - 1000} bytes, expected {LITEMEDSAM_SIZE}"
    ):
        load_backbone("litemedsam", checkpoint=weights_copy)
    status, err = _run_cli(capsys, png_file, weights_copy, tmp_path / "mask.png")
    assert status == 2 and err.count("\n") == 1 and "truncated" in err


def test_fine_tuned_weights_need_no_verify(weights_copy: Path, tmp_path: Path) -> None:
    state = torch.load(weights_copy, map_location="cpu", weights_only=True)
    key = "mask_decoder.iou_prediction_head.layers.0.bias"
    state[key] = state[key] + 0.5
    tuned = tmp_path / "tuned.pth"
    torch.save({"model": state, "epoch": 3}, tuned)  # the layout of LiteMedSAM's training checkpoints
    with pytest.raises(AutoPromptError, match="--no-verify"):
        load_backbone("litemedsam", checkpoint=tuned)
    backbone = load_backbone("litemedsam", checkpoint=tuned, verify=False)
    assert backbone.checksum == file_sha256(tuned) != LITEMEDSAM_SHA256
    assert torch.equal(backbone.mask_decoder.state_dict()[key.removeprefix("mask_decoder.")], state[key])


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(AutoPromptError, match="not a readable PyTorch checkpoint"):
        load_backbone("litemedsam", checkpoint=junk, verify=False)
    with pytest.raises(AutoPromptError, match="checkpoint file not found"):
        load_backbone("litemedsam", checkpoint=tmp_path / "missing.pth", verify=False)


@pytest.mark.parametrize(
    ("name", "checkpoint", "message"),
    [
        ("litemedsm", None, "did you mean 'litemedsam'"),
        ("sam_vit_b", None, "needs its weights file: pass --checkpoint"),
        ("medsam_vit_b", "missing.pth", "checkpoint file not found"),
    ],
)
def test_registry_errors(name: str, checkpoint: str | None, message: str, tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match=message):
        load_backbone(name, checkpoint=tmp_path / checkpoint if checkpoint else None)


def test_vit_backbone_rejects_litemedsam_weights() -> None:
    with pytest.raises(AutoPromptError, match="do not fit SAM vit_b"):
        load_backbone("sam_vit_b", checkpoint=litemedsam_weights_path())


def test_tiny_backbone_shapes(tiny: SamBackbone) -> None:
    with torch.inference_mode():
        embedding = tiny.encode(torch.rand(1, 3, 256, 256))
    assert embedding.shape == (1, tiny.embed_dim, *tiny.embedding_size) == (1, 256, 64, 64)
    assert tiny.prompt_encoder.input_image_size == (256, 256)
