"""The int8 image encoder: written with its record, found only for its own encoder and window, run by
OpenVINO in place of the fp32 export, and close to fp32 on the real LiteMedSAM."""

from __future__ import annotations

import copy
import shutil
import threading
from pathlib import Path

import openvino
import pytest
import torch

from autoprompt.devices import Precision
from autoprompt.modeling import encoder_runtime
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.encoder_quantization import (
    RECIPE,
    int8_encoder_file,
    int8_encoder_for,
    quantize_encoder,
)
from pipeline.files import load_json, save_json
from tests.modeling.test_encoder_runtime import _encode, _fresh_process_state, _window, _windows

__all__ = ["_fresh_process_state"]  # the autouse fixture: a new process's notices and compiled models


def _calibration(backbone: SamBackbone, windows: torch.Tensor):
    return backbone.encoder_input(windows).numpy()


def _error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory) -> tuple[SamBackbone, Path]:
    """The tiny backbone and the ``encoder_int8`` folder of its int8 encoder (8 calibration windows)."""
    backbone = load_backbone("tiny")
    folder = tmp_path_factory.mktemp("model") / "encoder_int8"
    quantize_encoder(backbone.image_encoder, _calibration(backbone, _windows(8)), folder)
    return backbone, folder


def test_the_int8_encoder_is_found_for_its_own_encoder_and_window_only(tiny_int8, tmp_path):
    backbone, folder = tiny_int8
    assert sorted(path.name for path in folder.iterdir()) == ["encoder.bin", "encoder.xml", "int8.json"]
    record = load_json(folder / "int8.json")
    assert record["weights"] == encoder_runtime.weights_digest(backbone.image_encoder)
    assert record["recipe"] == RECIPE
    assert (record["input_size"], record["calibration_windows"]) == (256, 8)
    assert int8_encoder_for(folder, backbone.image_encoder, input_size=256) == folder / "encoder.xml"
    assert int8_encoder_for(folder, backbone.image_encoder, input_size=128) is None

    changed = copy.deepcopy(backbone.image_encoder)
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    assert int8_encoder_for(folder, changed, input_size=256) is None
    assert int8_encoder_file(folder) == folder / "encoder.xml"  # whatever it was made from: compiled ahead

    unfinished = tmp_path / "encoder_int8"  # the record is written last: without it the folder is not used
    shutil.copytree(folder, unfinished)
    (unfinished / "int8.json").unlink()
    assert int8_encoder_for(unfinished, backbone.image_encoder, input_size=256) is None
    assert int8_encoder_file(unfinished) is None

    other_recipe = tmp_path / "made_otherwise"  # quantised another way: every layer in int8
    shutil.copytree(folder, other_recipe)
    save_json({**record, "recipe": "nncf transformer ptq"}, other_recipe / "int8.json")
    assert int8_encoder_for(other_recipe, backbone.image_encoder, input_size=256) is None
    assert int8_encoder_file(other_recipe) is None


def test_a_backbone_runs_its_int8_encoder_in_place_of_the_fp32_export(tiny_int8, tmp_path):
    backbone, folder = tiny_int8
    backbone.runtime_cache_folder = tmp_path
    window = _window()
    backbone.int8_encoder = None
    backbone.encoder_runtime = "eager"
    reference = _encode(backbone, window, Precision.FP32)
    backbone.encoder_runtime = "auto"
    exported = _encode(backbone, window, Precision.FP32)
    backbone.int8_encoder = folder / "encoder.xml"
    try:
        int8 = _encode(backbone, window, Precision.FP32)
        backbone.encoder_runtime = "eager"  # PyTorch never runs the int8 copy
        torch.testing.assert_close(_encode(backbone, window, Precision.FP32), reference)
    finally:
        backbone.int8_encoder = None
        backbone.encoder_runtime = "auto"
    assert int8.shape == reference.shape
    assert _error(exported, reference) < encoder_runtime.FP32_TOLERANCE
    assert encoder_runtime.FP32_TOLERANCE * 10 < _error(int8, reference) < 0.5  # int8: rounded, not wrong


@pytest.mark.parametrize("ahead", [False, True], ids=["compiled-by-the-call", "compiled-ahead"])
def test_an_int8_file_that_does_not_compile_gives_one_notice_and_the_fp32_export(
    tiny_int8, tmp_path, capsys, ahead
):
    backbone, _ = tiny_int8
    damaged = tmp_path / "encoder_int8" / "encoder.xml"
    damaged.parent.mkdir()
    damaged.write_text("<net>not an OpenVINO model</net>")
    damaged.with_suffix(".bin").write_bytes(b"")
    backbone.runtime_cache_folder = tmp_path / "cache"
    windows = _windows(2)
    reference = _encode(backbone, windows, Precision.FP32)
    if ahead:  # fails in its background thread: the call that needs the model reports it
        encoder_runtime.compile_ahead(damaged, bf16=False)
    backbone.int8_encoder = damaged
    try:
        first = _encode(backbone, windows, Precision.FP32)
        second = _encode(backbone, windows, Precision.FP32)
    finally:
        backbone.int8_encoder = None
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference)
    notices = [line for line in capsys.readouterr().err.splitlines() if "int8 image encoder" in line]
    assert len(notices) == 1 and str(damaged) in notices[0] and "fp32 export runs instead" in notices[0]


def test_an_encoder_compiled_ahead_is_waited_for_not_compiled_again(tiny_int8, tmp_path, monkeypatch):
    backbone, folder = tiny_int8
    backbone.runtime_cache_folder = tmp_path / "cache"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two streams even on a one-core runner
    compiles = []
    compile_model = openvino.Core.compile_model

    def recorded(core, model, *args, **kwargs):
        compiles.append((Path(model).parent.name, threading.current_thread().name))
        return compile_model(core, model, *args, **kwargs)

    monkeypatch.setattr(openvino.Core, "compile_model", recorded)
    windows = _windows(3)
    backbone.int8_encoder = folder / "encoder.xml"
    try:
        encoder_runtime.compile_ahead(folder / "encoder.xml", bf16=False)
        ahead = _encode(backbone, windows, Precision.FP32)
        assert compiles == [("encoder_int8", "openvino-compile-ahead")]
        encoder_runtime._compiled.cache_clear()  # a new process that did not compile ahead
        torch.testing.assert_close(_encode(backbone, windows, Precision.FP32), ahead, rtol=0, atol=0)
    finally:
        backbone.int8_encoder = None
    assert compiles[1:] == [("encoder_int8", "MainThread")]


@pytest.mark.slow
def test_real_litemedsam_in_int8_stays_near_fp32_and_is_not_the_float_encoder(tmp_path):
    """Calibrated on 8 windows, tested on another; at the small window Hippocampus plans (80 x 80)."""
    backbone = load_backbone("litemedsam", window=80)
    backbone.runtime_cache_folder = tmp_path / "cache"
    windows = torch.nn.functional.interpolate(_windows(9), size=(80, 80), mode="bilinear")
    calibration, held_out = windows[:8], windows[8:]
    folder = tmp_path / "encoder_int8"
    xml = quantize_encoder(backbone.image_encoder, _calibration(backbone, calibration), folder)
    backbone.encoder_runtime = "eager"
    reference = _encode(backbone, held_out, Precision.FP32)
    backbone.encoder_runtime = "auto"
    bf16 = _encode(backbone, held_out, Precision.BF16)
    backbone.int8_encoder = xml
    int8 = _encode(backbone, held_out, Precision.BF16)
    errors = {"bf16": _error(bf16, reference), "int8": _error(int8, reference)}
    print(f"relative L2 error against eager fp32: {errors}")
    assert errors["bf16"] < errors["int8"] < 0.25
