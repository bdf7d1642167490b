"""The image encoder through OpenVINO: same embeddings as PyTorch, exported once, PyTorch when it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from autoprompt.devices import Precision, autocast
from autoprompt.errors import AutoPromptError
from autoprompt.modeling import encoder_runtime
from autoprompt.modeling.backbone import SamBackbone, load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.config import ModelConfig
from tests.modeling.conftest import tiny_config

CPU = torch.device("cpu")


def _backbone(name: str, cache: Path, runtime: str = "auto") -> SamBackbone:
    backbone = load_backbone(name)
    backbone.encoder_runtime = runtime
    backbone.runtime_cache_folder = cache
    return backbone


def _window() -> torch.Tensor:
    """One ``1 x 3 x 256 x 256`` window in [0, 1]: a bright ellipse with a soft edge in mild noise."""
    rows, cols = np.mgrid[0:256, 0:256]
    ellipse = ((rows - 120) / 60.0) ** 2 + ((cols - 140) / 40.0) ** 2
    image = 0.2 + 0.6 / (1 + np.exp((ellipse - 1) * 8)) + np.random.default_rng(0).normal(0, 0.02, (256, 256))
    return torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))[None, None].expand(1, 3, -1, -1)


def _windows(count: int) -> torch.Tensor:
    """``count x 3 x 256 x 256`` different windows (:func:`_window` shifted), so a mix-up in order would show."""
    return torch.cat([_window().roll(shift * 16, dims=-1) for shift in range(count)])


def _encode(backbone: SamBackbone, images: torch.Tensor, precision: Precision) -> torch.Tensor:
    with torch.inference_mode(), autocast(CPU, precision):
        return backbone.encode(images).float()


def _exports(cache: Path) -> list[Path]:
    return sorted(cache.glob("openvino/*/encoder.*"))


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Notices, failed exports and compiled models as in a new process."""
    monkeypatch.setattr(encoder_runtime, "_NOTICES", set())
    monkeypatch.setattr(encoder_runtime, "_FAILED_EXPORTS", set())
    monkeypatch.setattr(encoder_runtime, "_AHEAD", {})
    encoder_runtime._compiled.cache_clear()
    encoder_runtime._requests.cache_clear()


@pytest.mark.slow
def test_openvino_gives_eager_embeddings_of_real_litemedsam():
    backbone = load_backbone("litemedsam")  # the user's cache folder: exported once per machine, as in use
    backbone.encoder_runtime = "openvino"
    assert backbone.resolved_encoder_runtime(Precision.BF16) == "openvino"
    window = _window()
    embeddings = {}
    for runtime in ("eager", "openvino"):
        backbone.encoder_runtime = runtime
        for precision in (Precision.FP32, Precision.BF16):
            embeddings[runtime, precision] = _encode(backbone, window, precision)
    reference = embeddings["eager", Precision.FP32]
    assert reference.shape == (1, 256, 64, 64) and reference.std() > 0.01
    errors = {
        key: ((value - reference).norm() / reference.norm()).item() for key, value in embeddings.items()
    }
    print(f"relative L2 error against eager fp32: {errors}")
    assert errors["openvino", Precision.FP32] < encoder_runtime.FP32_TOLERANCE
    # bf16: OpenVINO's rounding is as close to fp32 as PyTorch's (which is far beyond the fp32 tolerance)
    assert errors["eager", Precision.BF16] > 10 * encoder_runtime.FP32_TOLERANCE
    assert errors["openvino", Precision.BF16] < 1.5 * errors["eager", Precision.BF16]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A cache folder holding the tiny encoder's export, and the embeddings of :func:`_window` it gave."""
    folder = tmp_path_factory.mktemp("tiny_openvino")
    return folder, _encode(_backbone("tiny", folder), _window(), Precision.FP32)


def test_export_is_cached_on_disk_and_reused(tiny_export, monkeypatch, capsys):
    folder, first = tiny_export
    files = _exports(folder)
    assert [f.name for f in files] == ["encoder.bin", "encoder.xml"]
    assert not [p for p in files[0].parent.iterdir() if p.name.startswith(".")]  # no temporary left

    calls = []
    convert = openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: calls.append(1) or convert(*a, **k))
    stamps = [f.stat().st_mtime_ns for f in files]
    second = _encode(_backbone("tiny", folder), _window(), Precision.FP32)  # a new process: only the files
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == stamps
    assert capsys.readouterr().err == ""
    torch.testing.assert_close(second, first)
    eager = _encode(_backbone("tiny", folder, runtime="eager"), _window(), Precision.FP32)
    torch.testing.assert_close(second, eager, rtol=1e-3, atol=1e-4)


def test_a_batch_runs_on_streams_and_gives_each_windows_own_embedding_in_order(tiny_export, monkeypatch):
    folder, _ = tiny_export
    backbone = _backbone("tiny", folder)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two streams even on a one-core runner
    compile_model = encoder_runtime._compiled
    modes = []
    monkeypatch.setattr(
        encoder_runtime, "_compiled", lambda *args: modes.append(args[-1]) or compile_model(*args)
    )
    queues = []
    make_queue = openvino.AsyncInferQueue
    monkeypatch.setattr(openvino, "AsyncInferQueue", lambda *args: queues.append(1) or make_queue(*args))
    windows = _windows(5)
    batch = _encode(backbone, windows, Precision.FP32)
    alone = torch.cat([_encode(backbone, window[None], Precision.FP32) for window in windows])
    assert set(modes) == {"LATENCY", "THROUGHPUT"}  # the batch on streams, single windows on all threads
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
    assert not torch.equal(batch[0], batch[1])
    torch.testing.assert_close(_encode(backbone, windows.flip(0), Precision.FP32), batch.flip(0))
    assert queues == [1]  # the second batch reuses the first one's inference requests


def test_pytorch_encodes_a_batch_in_parts_of_at_most_batch_size_openvino_all_at_once(
    tiny_export, monkeypatch
):
    folder, _ = tiny_export
    windows = _windows(5)
    eager = _backbone("tiny", folder, runtime="eager")
    parts = []
    eager.image_encoder.register_forward_hook(lambda _module, args, _output: parts.append(len(args[0])))
    with torch.inference_mode(), autocast(CPU, Precision.FP32):
        split = eager.encode(windows, batch_size=2)
        whole = eager.encode(windows)
    assert parts == [2, 2, 1, 5]
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)

    compiled_runs = []
    run = encoder_runtime._run
    monkeypatch.setattr(
        encoder_runtime,
        "_run",
        lambda compiled, inputs: compiled_runs.append(len(inputs)) or run(compiled, inputs),
    )
    compiled = _backbone("tiny", folder)
    with torch.inference_mode(), autocast(CPU, Precision.FP32):
        compiled.encode(windows, batch_size=2)
    assert compiled_runs == [5]  # OpenVINO holds only a stream's worth of windows in flight anyway


def test_changed_weights_get_their_own_export(tiny_export, capsys):
    folder, _ = tiny_export
    backbone = _backbone("tiny", folder)
    with torch.no_grad():
        next(backbone.image_encoder.parameters()).add_(0.5)  # e.g. fine-tuned weights loaded in place
    changed = _encode(backbone, _window(), Precision.FP32)
    assert len(_exports(folder)) == 4
    assert "exporting the image encoder to OpenVINO" in capsys.readouterr().err
    backbone.encoder_runtime = "eager"
    torch.testing.assert_close(changed, _encode(backbone, _window(), Precision.FP32), rtol=1e-3, atol=1e-4)


def test_missing_openvino_falls_back_to_pytorch_with_one_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        sys.modules, "openvino", None
    )  # what `import openvino` meets when it is not installed
    backbone = _backbone("tiny", tmp_path)
    window = _window()
    first = _encode(backbone, window, Precision.FP32)
    second = _encode(backbone, window, Precision.FP32)
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == 1 and "openvino package is not installed" in notices[0]
    assert notices[0].startswith("autoprompt: ")
    with torch.inference_mode():
        torch.testing.assert_close(first, backbone.image_encoder(window), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert _exports(tmp_path) == []


def test_failed_export_falls_back_to_pytorch_with_one_notice(tmp_path, capsys):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")
    backbone = _backbone("tiny", blocked)
    window = _window()
    embeddings = _encode(backbone, window, Precision.FP32)
    _encode(backbone, window, Precision.FP32)
    notices = [line for line in capsys.readouterr().err.splitlines() if "could not export" in line]
    assert len(notices) == 1 and "runs in PyTorch" in notices[0]
    with torch.inference_mode():
        torch.testing.assert_close(embeddings, backbone.image_encoder(window), rtol=0, atol=0)


def test_a_compile_failing_in_bf16_leaves_openvino_to_fp32(tiny_export, monkeypatch, capsys):
    """A CPU whose OpenVINO has no bf16 refuses the bf16 hint; the same file still compiles in fp32."""
    folder, fp32_embeddings = tiny_export
    compiled = encoder_runtime._compiled

    def no_bf16(xml: str, precision: str, threads: int, mode: str):
        if precision == "bf16":
            raise RuntimeError("bf16 inference precision is not supported on this CPU")
        return compiled(xml, precision, threads, mode)

    monkeypatch.setattr(encoder_runtime, "_compiled", no_bf16)
    backbone = _backbone("tiny", folder)
    _encode(backbone, _window(), Precision.BF16)
    assert "could not export or compile" in capsys.readouterr().err
    assert backbone.resolved_encoder_runtime(Precision.FP32) == "openvino"
    torch.testing.assert_close(_encode(backbone, _window(), Precision.FP32), fp32_embeddings)


def test_pytorch_runs_when_asked_for_or_when_the_encoder_trains(tmp_path):
    window = _window()
    _encode(_backbone("tiny", tmp_path, runtime="eager"), window, Precision.FP32)
    trainable = _backbone("tiny", tmp_path)  # load_backbone leaves requires_grad on
    assert trainable.encode(window).requires_grad
    assert _exports(tmp_path) == []


def test_the_runtime_is_a_model_setting(tiny_backbone):
    with pytest.raises(ValueError, match="did you mean 'openvino'"):
        ModelConfig(encoder_runtime="openvno")
    with pytest.raises(AutoPromptError, match="did you mean 'eager'"):
        encoder_runtime.check_runtime("eagr")
    frozen = build_autoprompt_sam(
        tiny_config(encoder_runtime="openvino"), num_classes=2, in_channels=1, backbone=tiny_backbone
    )
    assert frozen.backbone.encoder_runtime == "openvino"
    adapted = build_autoprompt_sam(
        tiny_config(encoder_adapters=True, encoder_runtime="openvino"),
        num_classes=2,
        in_channels=1,
        backbone=tiny_backbone,
    )
    assert adapted.backbone.encoder_runtime == "eager"  # its encoder trains: PyTorch, even for inference
    assert ModelConfig().encoder_runtime == "auto"  # OpenVINO where it imports
    assert ModelConfig.from_dict(ModelConfig(encoder_runtime="auto").to_dict()).encoder_runtime == "auto"


def test_only_a_bf16_cache_built_by_openvino_records_the_runtime():
    from pipeline.training.embedding_cache import cache_key, cache_key_parts
    from tests.planners.test_plans import make_plans

    def key(precision: str, runtime: str) -> str:
        parts = cache_key_parts(
            make_plans(), "2d", backbone_checksum="abc", precision=precision, encoder_runtime=runtime
        )
        return cache_key(parts)

    eager_bf16 = cache_key(cache_key_parts(make_plans(), "2d", backbone_checksum="abc", precision="bf16"))
    assert key("bf16", "eager") == eager_bf16  # caches built before the runtime existed keep their key
    assert key("bf16", "openvino") != eager_bf16
    assert key("fp32", "openvino") == key("fp32", "eager")


def test_a_backbone_built_for_a_small_window_exports_and_matches_pytorch(tmp_path, capsys):
    backbone = load_backbone("tiny", window=96)
    backbone.runtime_cache_folder = tmp_path
    window = torch.nn.functional.interpolate(_window(), size=(96, 96), mode="bilinear")
    backbone.encoder_runtime = "eager"
    reference = _encode(backbone, window, Precision.FP32)
    backbone.encoder_runtime = "openvino"
    compiled = _encode(backbone, window, Precision.FP32)
    assert "could not export" not in capsys.readouterr().err  # exported and compiled, no fallback
    assert [path.suffix for path in _exports(tmp_path)] == [".bin", ".xml"]
    assert reference.shape == compiled.shape == (1, 256, 24, 24)
    assert ((compiled - reference).norm() / reference.norm()).item() < encoder_runtime.FP32_TOLERANCE
