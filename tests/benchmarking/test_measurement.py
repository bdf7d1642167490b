"""The helpers of the measurement scripts (``autoprompt.benchmarking.measurement``),
``benchmarks/class_scaling.py`` on the tiny backbone and ``benchmarks/speed.py``'s predict and cache parts (no
timed assertions)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from autoprompt.benchmarking import measurement
from autoprompt.modeling.backbone import load_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.class_decoder import ABSENT_LOGIT
from autoprompt.precision import cpuinfo_value, read_cpu_flags
from benchmarks import class_scaling, speed
from benchmarks.class_scaling import forced_presence, forced_presence_logits
from tests.modeling.conftest import tiny_config
from tests.synthetic_data import make_synthetic_dataset

CPU = torch.device("cpu")


def test_median_seconds_warms_up_once_then_takes_the_median_of_the_repeats(monkeypatch):
    clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # repeats of 1, 3 and 2 seconds
    monkeypatch.setattr(measurement.time, "perf_counter", lambda: next(clock))
    calls = []
    assert measurement.median_seconds(lambda: calls.append(1), device=CPU, repeats=3) == 2.0
    assert len(calls) == 4


def test_machine_info_and_markdown_table():
    info = measurement.machine_info(CPU, load_average_before=1.5)
    assert info["load_average_before"] == 1.5 and info["torch_threads"] >= 1
    assert info["device"] == "cpu" and info["gpu"] is None and info["cpu"] and info["cpu_count"] >= 1
    assert set(info["bf16_instructions"]) <= {"avx512_bf16", "amx_bf16"}
    assert measurement.peak_memory_mib(CPU) > 0
    table = measurement.markdown_table([{"k": 3, "ms": 1.5}, {"k": 15, "ms": 4.0}], ["k", "ms"])
    assert table.splitlines() == ["| k | ms |", "|---|---|", "| 3 | 1.5 |", "| 15 | 4.0 |"]


def test_the_machine_is_the_cpu_model_of_cpuinfo_and_its_bf16_instructions(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
    )
    monkeypatch.setattr(measurement, "cpuinfo_value", lambda field: cpuinfo_value(field, cpuinfo))
    monkeypatch.setattr(measurement, "read_cpu_flags", lambda: read_cpu_flags(cpuinfo))
    described = measurement.machine(CPU)
    assert described == {
        "cpu": "AMD EPYC",
        "cpu_count": os.cpu_count(),
        "bf16_instructions": ["avx512_bf16"],
        "gpu": None,
    }
    assert measurement.machine_label(described) == f"AMD EPYC, {os.cpu_count()} CPUs, avx512_bf16"
    older = {"cpu": "Xeon", "cpu_count": 4, "bf16_instructions": [], "gpu": "NVIDIA H200"}
    assert measurement.machine_label(older) == "NVIDIA H200 (Xeon, 4 CPUs, no bf16 instructions)"
    monkeypatch.setattr(measurement, "cpuinfo_value", lambda field: None)  # no /proc/cpuinfo (macOS)
    assert measurement.machine(CPU)["cpu"]  # what platform reports


def test_forced_presence_makes_the_first_classes_present_in_every_window():
    assert forced_presence_logits(4, 1).tolist() == [8.0, -8.0, -8.0, -8.0]
    assert forced_presence_logits(2, 3).tolist() == [8.0, 8.0]
    model = build_autoprompt_sam(tiny_config(), num_classes=3, in_channels=1, backbone=load_backbone("tiny"))
    embeddings = torch.randn(2, 256, 64, 64)
    with torch.no_grad(), forced_presence(model, forced_presence_logits(3, 2)):
        forced = model.prompt_generator(embeddings=embeddings).presence_logits
    assert forced.tolist() == [[8.0, 8.0, -8.0]] * 2
    with torch.no_grad():  # the hook is gone
        assert model.prompt_generator(embeddings=embeddings).presence_logits.abs().max() < 8.0


def test_class_scaling_runs_every_part_and_writes_its_json(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(class_scaling, "median_seconds", lambda run, **_: calls.append(run()) or 0.5)
    output = tmp_path / "scaling.json"
    arguments = ["--backbone", "tiny", "--preset", "tiny", "--encoder-runtime", "eager", "--device", "cpu"]
    arguments += ["--set", "model.box_refinement=0", "--classes", "2", "--batch", "1", "--present", "1"]
    assert class_scaling.main([*arguments, "-o", str(output)]) == 0
    result = json.loads(output.read_text())
    assert len(calls) == 4  # train step, prediction without and with skipping, encoder
    assert calls[1].logits.shape == calls[2].logits.shape == (1, 3, 256, 256)
    assert bool((calls[2].class_mask_logits[0, 1] == ABSENT_LOGIT).all())  # the forced-absent class skipped
    assert result["rows"] == [
        {
            "classes": 2,
            "train_step_ms": 500.0,
            "predict_window_ms": 500.0,
            "predict_window_skipping_ms": 500.0,
            "decoded_classes_skipping": 1,
            "peak_memory_mib": result["rows"][0]["peak_memory_mib"],
        }
    ]
    assert result["model"]["skip_presence_below"] == 0.0 and result["decoder_passes_per_prediction"] == 1
    assert result["encoder"] == {"runtime": "eager", "ms_per_window": 500.0}


def test_speed_predicts_fold_all_models_and_refuses_other_folds(tmp_path, monkeypatch, capsys):
    raw = make_synthetic_dataset(tmp_path / "raw", num_cases=2)
    nnunet_model = tmp_path / "nnunet"
    (nnunet_model / "fold_all").mkdir(parents=True)
    commands = []
    usage = SimpleNamespace(seconds=4.0, peak_rss_mib=10.0)
    monkeypatch.setattr(speed, "run_logged", lambda command, **_: commands.append(command) or usage)
    rows = speed.predict_rows("Dataset999_Synthetic", raw, model=tmp_path / "model", nnunet_model=nnunet_model,
                              cases=["case_000"], fold="all", tta=False, work=tmp_path / "work")  # fmt: skip
    assert [row["s_per_volume"] for row in rows] == [4.0, 4.0]
    for command in commands:
        assert command[command.index("-f") + 1] == "all"
    with pytest.raises(SystemExit) as stop:
        speed.main(["--no-encoder", "--fold", "last"])
    assert stop.value.code == 2 and "give a number or 'all'" in capsys.readouterr().err


def test_speed_times_the_cache_with_a_backbone_built_for_the_plans_window(tmp_path):
    from pipeline.experiment_planning import plan_and_preprocess
    from planners.plans import Plans

    raw = make_synthetic_dataset(tmp_path / "raw", num_cases=2, shape=(2, 40, 32))
    folder = plan_and_preprocess(raw, tmp_path / "preprocessed", configurations=("2d",), num_processes=1)
    window = Plans.load(folder / "plans.json").configuration("2d").window_size[0]
    assert window < 256  # small slices: a smaller window than LiteMedSAM's own
    row = speed.cache_row(folder, tmp_path / "work", cases=1, int8=False)
    assert row["window"] == window and row["windows"] == 2 and row["minutes"] > 0


def test_training_step_times_each_setting_on_a_subset_and_writes_its_json(tmp_path):
    from benchmarks import training_step

    raw = make_synthetic_dataset(tmp_path / "raw", num_cases=5, shape=(3, 40, 32))
    output = tmp_path / "step.json"
    argv = [
        *f"--raw {raw} --cases 4 --preset tiny --device cpu --epochs 1 --steps 2 --set views.count=2".split(),
        "--batch-sizes",
        "0",
        "2",
    ]
    assert training_step.main([*argv, "--work", str(tmp_path / "work"), "-o", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["cases"] == 4 and report["preset"] == "tiny" and report["overrides"] == ["views.count=2"]
    assert [(row["workers"], row["batch_size"]) for row in report["rows"]] == [(0, None), (0, 2)]
    assert all(row["ms_per_step"] > 0 and len(row["ms_per_step_by_epoch"]) == 1 for row in report["rows"])
    assert len(list((tmp_path / "work" / "raw" / raw.name / "labelsTr").iterdir())) == 4
