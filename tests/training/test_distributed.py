"""DDP on the CPU: two torchrun processes over gloo train one fold of the tiny synthetic dataset."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.checkpoint import load_checkpoint
from pipeline.files import load_json
from pipeline.model_folder import ModelFolder
from tests.training.conftest import DATASET, PlannedDataset

REPO = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ")


def test_two_processes_train_with_one_writer(planned: PlannedDataset, tmp_path: Path) -> None:
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(planned.preprocessed, preprocessed, ignore=shutil.ignore_patterns("embeddings"))
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "autoprompt.cli",
        "train",
        DATASET,
        "0",
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--iterations-per-epoch",
        "2",
        "--set",
        "val_iterations=1",
        "--raw",
        str(planned.raw),
        "--preprocessed",
        str(preprocessed),
        "--results",
        str(results),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]  # torchrun: 0 only when both processes finished
    assert done.stdout.count("model folder:") == 1  # process 0 reports

    fold_dir = results / DATASET / "autoprompt__tiny__2d" / "fold_0"
    messages = [STAMP.sub("", line) for line in (fold_dir / "training_log.txt").read_text().splitlines()]
    assert len(messages) == len(set(messages))  # one writer: no line twice
    assert sum("x 2 processes" in line for line in messages) == 1
    assert sum(line.startswith("epoch 1/1") for line in messages) == 1
    cases = sorted(load_json(preprocessed / DATASET / "splits_final.json")[0]["train"])
    cases += sorted(load_json(preprocessed / DATASET / "splits_final.json")[0]["val"])
    # both processes encoded their share of the cases; the sum is logged once
    assert any(f"encoded {len(cases)} case(s)" in line for line in messages)
    assert any(line.startswith("final validation") for line in messages)  # process 0, after the group

    names = sorted(path.name for path in fold_dir.iterdir())
    assert [name for name in names if name.startswith("checkpoint_")] == [
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "checkpoint_latest.pt",
    ]
    assert not [name for name in names if name.startswith(".")]  # no temporary file left behind
    final = load_checkpoint(fold_dir / "checkpoint_final.pt")
    assert final["epoch"] == 1 and final["step"] == 2
    assert final["history"][0]["train_loss"] > 0
    model = ModelFolder(fold_dir.parent).load_model(0, checkpoint="final", device="cpu")
    assert model.num_classes == 2
    assert (fold_dir / "validation" / "summary.json").is_file()
