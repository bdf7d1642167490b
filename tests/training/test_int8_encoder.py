"""The int8 encoder of a model folder: calibrated on training windows, written once per folder (when the steps
end; with ``int8_cache`` before the embedding cache, which it then builds where int8 pays on the training CPU),
and run by ``auto`` prediction (and the final validation) only on a CPU where int8 pays."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from autoprompt.modeling import encoder_runtime
from autoprompt.modeling.encoder_quantization import int8_encoder_digest
from pipeline.checkpoint import load_checkpoint
from pipeline.files import load_json
from pipeline.inference.predictor import Predictor
from pipeline.training.data import TrainingCase, crop_window
from pipeline.training.encoder_calibration import calibration_windows
from pipeline.training.run import train
from tests.runtime.test_precision import fake_cpu
from tests.training.conftest import DATASET, TINY, PlannedDataset

ZEN4 = ("avx512_vnni",)  # bf16 and int8 dot products, no AMX
SAPPHIRE_RAPIDS = ("avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
CASCADE_LAKE = ("avx512_vnni",)  # with bf16=False: int8 dot products, no bf16, no AMX


def _case(name: str, slices: int, offset: float) -> TrainingCase:
    data = (np.arange(slices * 40 * 32, dtype=np.float32).reshape(1, slices, 40, 32) / 1e4 + offset) % 1
    return TrainingCase(name=name, data=data, seg=np.zeros((slices, 40, 32), np.int16), locations={})


def test_calibration_windows_are_spread_evenly_over_every_slice_window_of_the_cases() -> None:
    cases = [_case("a", 3, 0.0), _case("b", 2, 0.5)]  # one 64 x 64 window per 40 x 32 slice: 5 places
    windows = calibration_windows(cases, (64, 64), count=3)
    expected = [
        crop_window(case.data[:, index], 0, 0, (64, 64))
        for case, index in ((cases[0], 0), (cases[0], 2), (cases[1], 1))
    ]
    assert windows.shape == (3, 1, 64, 64) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows, np.stack(expected))
    assert len(calibration_windows(cases, (64, 64), count=32)) == 5  # never more than there are
    with pytest.raises(ValueError, match="at least one training case"):
        calibration_windows([], (64, 64), count=3)


def test_training_writes_the_int8_encoder_once_int8_cache_builds_the_cache_with_it_and_auto_prediction_runs_it(
    planned: PlannedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preprocessed = tmp_path / "preprocessed"  # a copy: the shared fixture keeps its one cache key
    shutil.copytree(planned.folder, preprocessed / DATASET)
    options = dict(
        preprocessed=preprocessed,
        results=tmp_path / "results",
        config="tiny",
        overrides=[*TINY, "val_iterations=1", "int8_encoder=true", "int8_cache=true"],
        epochs=1,
        iterations_per_epoch=1,
        device="cpu",
    )
    fake_cpu(monkeypatch, bf16=True, extra=ZEN4)
    first = train(DATASET, 0, **options)
    folder = first.model_folder / "encoder_int8"
    record = load_json(folder / "int8.json")
    window = load_json(preprocessed / DATASET / "plans.json")["configurations"]["2d"]["window_size"]
    assert [record["input_size"]] * 2 == window
    assert record["calibration_windows"] == 12  # every window of fold 0's training cases: 4 cases x 3 slices
    assert "int8 image encoder written to" in (first.fold_dir / "training_log.txt").read_text()
    log = (first.fold_dir / "training_log.txt").read_text()
    assert log.index("int8 image encoder written") < log.index(": encoded 6 case(s)")  # then the cache
    assert "(int8 encoder); " in log
    assert load_checkpoint(first.fold_dir / "checkpoint_final.pt")["metadata"]["int8_embeddings"] is True
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    fake_cpu(monkeypatch, bf16=True, extra=SAPPHIRE_RAPIDS)  # int8 does not pay: a bf16 cache
    second = train(DATASET, 1, **options)  # the folder has it already: not quantised again
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps
    assert "int8 image encoder written" not in (second.fold_dir / "training_log.txt").read_text()
    assert load_checkpoint(second.fold_dir / "checkpoint_final.pt")["metadata"]["int8_embeddings"] is False
    caches = [load_json(path) for path in (preprocessed / DATASET / "embeddings").glob("*/cache.json")]
    assert sorted(str(parts.get("int8_encoder")) for parts in caches) == sorted(
        [int8_encoder_digest(folder / "encoder.xml"), "None"]
    )

    ahead = []  # compiled in the background while the models load, where auto is going to run it
    monkeypatch.setattr(encoder_runtime, "compile_ahead", lambda xml, *, bf16: ahead.append((xml, bf16)))
    fake_cpu(monkeypatch, bf16=True, extra=ZEN4)
    predictor = Predictor.from_model_folder(first.model_folder, checkpoint="final", device="cpu")
    assert predictor.models[0].backbone.int8_encoder == folder / "encoder.xml"
    assert any("image encoder runs in int8" in note for note in predictor.notes)
    image = next((planned.raw / DATASET / "imagesTr").iterdir())
    assert predictor.predict_case([image]).labels.shape == (3, 40, 32)

    named = Predictor.from_model_folder(
        first.model_folder, checkpoint="final", device="cpu", precision="bf16"
    )
    assert named.models[0].backbone.int8_encoder is None  # a named precision runs the float encoder
    fake_cpu(monkeypatch, bf16=False, extra=CASCADE_LAKE)  # auto is fp32: int8 beside fp32 layers
    fp32 = Predictor.from_model_folder(first.model_folder, checkpoint="final", device="cpu")
    assert fp32.precision.value == "fp32" and fp32.models[0].backbone.int8_encoder == folder / "encoder.xml"
    assert any("--precision fp32 runs it in fp32" in note for note in fp32.notes)
    fake_cpu(monkeypatch, bf16=True, extra=SAPPHIRE_RAPIDS)  # AMX: bf16 tiles outrun int8
    amx = Predictor.from_model_folder(first.model_folder, checkpoint="final", device="cpu")
    assert amx.models[0].backbone.int8_encoder is None
    assert not any("int8" in note for note in amx.notes)
    assert ahead == [(folder / "encoder.xml", True), (folder / "encoder.xml", False)]  # none for bf16, AMX


def test_a_finished_fold_resumed_with_int8_encoder_on_only_writes_it(
    planned: PlannedDataset, tmp_path: Path
) -> None:
    """The way to give a model folder trained without it an int8 encoder: the same train command, resumed."""
    options = dict(
        preprocessed=planned.preprocessed,
        results=tmp_path,
        config="tiny",
        epochs=1,
        iterations_per_epoch=1,
        device="cpu",
    )
    first = train(DATASET, 0, overrides=[*TINY, "val_iterations=1"], **options)
    assert not (first.model_folder / "encoder_int8").exists()
    resumed = train(
        DATASET, 0, overrides=[*TINY, "val_iterations=1", "int8_encoder=true"], resume=True, **options
    )
    assert resumed.steps == first.steps  # no step trained again
    assert load_json(first.model_folder / "encoder_int8" / "int8.json")["calibration_windows"] == 12
