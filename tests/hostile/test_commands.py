"""Hostile inputs on the command line: each row ends in one ``autoprompt: error:`` line, exit status 2,
and no partial output (issue #20, items 1, 3, 6, 7 and 8).

Each row prepares its inputs under ``tmp_path`` and returns the command line, the texts the error must
hold, and the paths that must stay absent (or unchanged) afterwards.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from planners.plans import Plans
from tests.hostile.conftest import (
    DATASET,
    SHAPE,
    Outcome,
    Setup,
    assert_one_line_error,
    copy_dataset,
    scan,
    tree,
    write_volume,
)


@dataclass
class Case:
    """A command line, what its error must say, and what must not exist after it.

    ``listed``: the dataset check prints each problem on its own line above the one error line.
    ``by_argparse``: argparse refuses the value (its usage line, then its one error line, exit 2).
    """

    args: list[str | Path]
    expected: tuple[str, ...]
    absent: list[Path] = field(default_factory=list)
    listed: bool = False
    by_argparse: bool = False


def header_only_nifti(
    path: Path, size_xyz: tuple[int, int, int], spacing: tuple[float, float, float]
) -> Path:
    """A small ``.nii.gz`` whose header promises ``size_xyz`` int16 voxels (the voxels are not there)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(size_xyz)
    header.set_data_dtype(np.int16)
    header.set_zooms(spacing)
    header["magic"] = b"n+1"
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4)
    return path


# ---------------------------------------------------------------------------------- plan-and-preprocess
def _plan(raw_root: Path, tmp_path: Path, *extra: str) -> list[str | Path]:
    return [
        "plan-and-preprocess", "-d", "901", "--raw", raw_root, "--preprocessed", tmp_path / "pre",
        "-c", "2d", "-np", "1", *extra,
    ]  # fmt: skip


def mixed_2d_and_3d(setup: Setup, tmp_path: Path) -> Case:
    dataset = copy_dataset(setup, tmp_path)
    write_volume(dataset / "imagesTr" / "case_002_0000.nii.gz", scan(shape=SHAPE[1:]))
    write_volume(dataset / "labelsTr" / "case_002.nii.gz", np.zeros(SHAPE[1:], np.int16))
    return Case(
        _plan(tmp_path / "raw", tmp_path),
        ("case_002_0000.nii.gz: a 2D image in a dataset of 3D images",),
        [tmp_path / "pre"],
        listed=True,
    )


def broken_group_regex(setup: Setup, tmp_path: Path) -> Case:
    copy_dataset(setup, tmp_path)
    return Case(
        _plan(tmp_path / "raw", tmp_path, "--group-regex", "("),
        ("--group-regex '(': not a valid regular expression",),
        [tmp_path / "pre"],
    )


def micron_spacing_case(setup: Setup, tmp_path: Path) -> Case:
    """One case at 1e-5 mm among 0.8 mm cases resamples to no voxel at all."""
    dataset = copy_dataset(setup, tmp_path)
    for path in (dataset / "imagesTr" / "case_003_0000.nii.gz", dataset / "labelsTr" / "case_003.nii.gz"):
        image = sitk.ReadImage(str(path))
        image.SetSpacing((1e-5, 1e-5, 1e-5))
        sitk.WriteImage(image, str(path))
    return Case(
        _plan(tmp_path / "raw", tmp_path),
        ("case_003_0000.nii.gz: spacing 1e-05 x 1e-05 x 1e-05 mm resamples to", "fix the spacing"),
        [tmp_path / "pre" / DATASET / planned_data_identifier(setup) / "case_003.npy"],
    )


def empty_dataset(setup: Setup, tmp_path: Path) -> Case:
    """The hint must not ask for numTraining: 0, which the schema refuses."""
    dataset = tmp_path / "raw" / DATASET
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    shutil.copy(setup.raw_dataset / "dataset.json", dataset / "dataset.json")
    return Case(
        _plan(tmp_path / "raw", tmp_path),
        ("imagesTr/labelsTr hold no cases; add images {case}_0000.nii.gz",),
        [tmp_path / "pre"],
        listed=True,
    )


def nan_in_nifti_training_image(setup: Setup, tmp_path: Path) -> Case:
    """ITK reads NaN in a .nii.gz as 0: the raw values are checked."""
    dataset = copy_dataset(setup, tmp_path)
    image = dataset / "imagesTr" / "case_001_0000.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    array[1, 2, 3] = np.nan
    write_volume(image, array)
    return Case(
        _plan(tmp_path / "raw", tmp_path),
        ("case_001_0000.nii.gz: contains NaN or infinite values",),
        [tmp_path / "pre"],
        listed=True,
    )


# --------------------------------------------------------------------------------------------- predict
def _predict(setup: Setup, source: Path, output: Path, *extra: str) -> list[str | Path]:
    return ["predict", "-i", source, "-o", output, "--model-dir", setup.model_dir, "--device", "cpu", *extra]


def output_is_a_file(setup: Setup, tmp_path: Path) -> Case:
    output = tmp_path / "preds"
    output.write_text("not a folder")
    return Case(_predict(setup, setup.image(0), output), (f"{output}: is a file, not a folder", "-o"))


def output_under_a_file(setup: Setup, tmp_path: Path) -> Case:
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" / "preds"
    return Case(_predict(setup, setup.image(0), output), (f"{tmp_path / 'file'} is a file, not a folder",))


def nan_in_nifti_scan(setup: Setup, tmp_path: Path) -> Case:
    array = scan()
    array[0, 0, 0] = np.nan
    source = write_volume(tmp_path / "scan.nii.gz", array)
    return Case(
        _predict(setup, source, tmp_path / "out"),
        ("scan.nii.gz: contains NaN or infinite values",),
        [tmp_path / "out" / "scan.nii.gz"],
    )


def inf_in_mha_scan(setup: Setup, tmp_path: Path) -> Case:
    array = scan()
    array[2, 10, 10] = np.inf
    source = write_volume(tmp_path / "scan.mha", array)
    return Case(
        _predict(setup, source, tmp_path / "out"),
        ("scan.mha: contains NaN or infinite values",),
        [tmp_path / "out" / "scan.mha"],
    )


def coarse_spacing_bomb(setup: Setup, tmp_path: Path) -> Case:
    """22 KB: 4 x 40 x 40 voxels at 60 mm resample to hundreds of thousands of windows."""
    source = write_volume(tmp_path / "coarse.nii.gz", scan(shape=(4, 40, 40)), spacing=(60.0, 60.0, 60.0))
    assert source.stat().st_size < 40_000
    return Case(
        _predict(setup, source, tmp_path / "out", "--no-tta", "--max-case-memory-gb", "1000"),
        ("coarse.nii.gz: 4x40x40 voxels resampled to", "network windows, over the limit of 20000"),
        [tmp_path / "out" / "coarse.nii.gz"],
    )


def planned_data_identifier(setup: Setup) -> str:
    """The folder of the session's preprocessed cases (``autoprompt_slices_<window>`` for its small slices)."""
    return Plans.load(setup.preprocessed / DATASET / "plans.json").configuration("2d").data_identifier


def header_memory_bomb(setup: Setup, tmp_path: Path) -> Case:
    """A tiny file whose header promises 1024 x 1024 x 1200 voxels: refused from the header, nothing read."""
    source = header_only_nifti(tmp_path / "huge.nii.gz", (1024, 1024, 1200), (0.4, 0.4, 3.0))
    return Case(
        _predict(setup, source, tmp_path / "out", "--max-case-windows", "100000000"),
        ("huge.nii.gz: 1200x1024x1024 voxels", "GB, over the limit of 16 GB", "--max-case-memory-gb"),
        [tmp_path / "out" / "huge.nii.gz"],
    )


def lowered_memory_limit(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _predict(setup, setup.image(0), tmp_path / "out", "--max-case-memory-gb", "0.01"),
        ("case_000_0000.nii.gz:", "over the limit of 0.01 GB"),
        [tmp_path / "out" / "case_000.nii.gz"],
    )


def micron_spacing_scan(setup: Setup, tmp_path: Path) -> Case:
    source = write_volume(tmp_path / "tiny.nii.gz", scan(), spacing=(1e-5, 1e-5, 1e-5))
    return Case(
        _predict(setup, source, tmp_path / "out"),
        ("tiny.nii.gz:", "its spacing is implausible; fix the spacing in the image header"),
        [tmp_path / "out" / "tiny.nii.gz"],
    )


def volume_to_png(setup: Setup, tmp_path: Path) -> Case:
    """The error names the input, not a temporary file, and comes before any prediction."""
    return Case(
        _predict(setup, setup.image(0), tmp_path / "out", "--output-format", "png"),
        (f"{setup.image(0)}: is a 3D image and .png holds 2D images only",),
        [tmp_path / "out" / "case_000.png"],
    )


def nan_limit_option(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _predict(setup, setup.image(0), tmp_path / "out", "--max-case-memory-gb", "nan"),
        ("--max-case-memory-gb", "'nan' is not a finite number"),
        [tmp_path / "out"],
        by_argparse=True,
    )


# -------------------------------------------------------------------------------------------- evaluate
def evaluate_output_under_a_file(setup: Setup, tmp_path: Path) -> Case:
    (tmp_path / "file").write_text("x")
    labels = setup.raw_dataset / "labelsTr"
    return Case(
        ["evaluate", "-r", labels, "-p", labels, "-o", tmp_path / "file" / "summary.json", "-np", "1"],
        (f"{tmp_path / 'file'} is a file, not a folder",),
    )


def evaluate_output_is_a_folder(setup: Setup, tmp_path: Path) -> Case:
    (tmp_path / "summary.json").mkdir()
    labels = setup.raw_dataset / "labelsTr"
    return Case(
        ["evaluate", "-r", labels, "-p", labels, "-o", tmp_path / "summary.json", "-np", "1"],
        ("summary.json: is a folder; give -o a file name",),
    )


# -------------------------------------------------------------------------------------------- segment
def _segment(setup: Setup, tmp_path: Path, *prompt: str) -> list[str | Path]:
    return [
        "segment",
        setup.image(0),
        "-o",
        tmp_path / "mask.nii.gz",
        "--backbone",
        "tiny",
        "--device",
        "cpu",
        *prompt,
    ]


def nan_box(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _segment(setup, tmp_path, "--slice", "1", "--box", "nan", "nan", "nan", "nan"),
        ("case_000_0000.nii.gz: box (nan, nan, nan, nan) holds a value that is not a finite number",),
        [tmp_path / "mask.nii.gz"],
    )


def nan_point(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _segment(setup, tmp_path, "--slice", "1", "--points", "nan", "3", "1"),
        ("--points nan 3 1: not all finite numbers",),
        [tmp_path / "mask.nii.gz"],
    )


def nan_box3d(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _segment(setup, tmp_path, "--box3d", "1", "1", "0", "nan", "9", "2"),
        ("3D box (1, 1, 0, nan, 9, 2) holds a value that is not a finite number",),
        [tmp_path / "mask.nii.gz"],
    )


# ---------------------------------------------------------------------------------------------- serve
def _serve(setup: Setup, tmp_path: Path, *extra: str) -> list[str | Path]:
    return ["serve", "--model-dir", setup.model_dir, "--data-dir", tmp_path / "jobs", *extra]


def serve_ttl_nan(setup: Setup, tmp_path: Path) -> Case:
    return Case(_serve(setup, tmp_path, "--job-ttl-hours", "nan"), ("--job-ttl-hours nan must be positive",))


def serve_upload_limit_nan(setup: Setup, tmp_path: Path) -> Case:
    return Case(_serve(setup, tmp_path, "--max-upload-mb", "nan"), ("--max-upload-mb nan must be positive",))


def serve_case_memory_inf(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        _serve(setup, tmp_path, "--max-case-memory-gb", "inf"), ("--max-case-memory-gb inf must be positive",)
    )


def serve_queue_zero(setup: Setup, tmp_path: Path) -> Case:
    return Case(_serve(setup, tmp_path, "--max-queued-jobs", "0"), ("--max-queued-jobs 0 must be positive",))


def serve_port_out_of_range(setup: Setup, tmp_path: Path) -> Case:
    return Case(_serve(setup, tmp_path, "--port", "99999"), ("--port 99999 is not a port number (0-65535)",))


def serve_data_dir_is_a_file(setup: Setup, tmp_path: Path) -> Case:
    (tmp_path / "jobs").write_text("a file")
    return Case(_serve(setup, tmp_path), (f"{tmp_path / 'jobs'}: is a file, not a folder", "--data-dir"))


# ---------------------------------------------------------------------------------------------- train
def _train(setup: Setup, *extra: str) -> list[str | Path]:
    return [
        "train", "901", "0", "--config", "tiny", "--preprocessed", setup.preprocessed,
        "--results", setup.results, "--device", "cpu", *extra,
    ]  # fmt: skip


def train_time_budget_nan(setup: Setup, tmp_path: Path) -> Case:
    return Case(_train(setup, "--time-budget", "nan"), ("time_budget_minutes", "NaN or infinity"))


def train_weight_decay_nan(setup: Setup, tmp_path: Path) -> Case:
    return Case(_train(setup, "--set", "weight_decay=nan"), ("trainer config: weight_decay must be finite",))


def benchmark_budget_nan(setup: Setup, tmp_path: Path) -> Case:
    return Case(
        ["benchmark", "-d", "901", "--raw", setup.raw, "--budget", "nan", "-o", tmp_path / "bench"],
        ("--budget nan", "positive finite number"),
        [tmp_path / "bench"],
    )


TABLE: dict[str, Callable[[Setup, Path], Case]] = {
    fn.__name__: fn
    for fn in (
        mixed_2d_and_3d,
        broken_group_regex,
        micron_spacing_case,
        empty_dataset,
        nan_in_nifti_training_image,
        output_is_a_file,
        output_under_a_file,
        nan_in_nifti_scan,
        inf_in_mha_scan,
        coarse_spacing_bomb,
        header_memory_bomb,
        lowered_memory_limit,
        micron_spacing_scan,
        volume_to_png,
        nan_limit_option,
        evaluate_output_under_a_file,
        evaluate_output_is_a_folder,
        nan_box,
        nan_point,
        nan_box3d,
        serve_ttl_nan,
        serve_upload_limit_nan,
        serve_case_memory_inf,
        serve_queue_zero,
        serve_port_out_of_range,
        serve_data_dir_is_a_file,
        train_time_budget_nan,
        train_weight_decay_nan,
        benchmark_budget_nan,
    )
}


@pytest.mark.parametrize("name", list(TABLE))
def test_hostile_command_ends_in_one_line_and_exit_2(
    name: str, setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    case = TABLE[name](setup, tmp_path)
    model_files = tree(setup.model_dir)
    outcome = cli(*case.args)
    if case.by_argparse:
        assert outcome.code == 2 and "Traceback" not in outcome.err
        assert all(text in outcome.err.splitlines()[-1] for text in case.expected), outcome.err
    elif case.listed:
        assert_one_line_error(outcome, "problem")
        assert all(any(text in line for line in outcome.err.splitlines()) for text in case.expected), (
            outcome.err
        )
    else:
        assert_one_line_error(outcome, *case.expected)
    for path in case.absent:
        assert not path.exists(), f"{path} left behind"
    assert tree(setup.model_dir) == model_files  # a refused command changes no model folder


def test_continue_on_error_prints_each_failure_once(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    source = tmp_path / "in"
    bad = scan()
    bad[0, 0, 0] = np.nan
    write_volume(source / "nan.nii.gz", bad)
    (source / "broken.nii.gz").write_bytes(b"not an image")
    outcome = cli(*_predict(setup, source, tmp_path / "out", "--continue-on-error"))
    assert outcome.code == 1, outcome.err
    for case in ("broken", "nan"):
        assert outcome.err.count(f"failed {case}:") == 1, outcome.err
    assert "0 done, 0 skipped, 2 failed" in outcome.out
    assert tree(tmp_path / "out") == []


def test_truncated_preprocessed_labels_are_redone_by_replanning(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    """A _seg.npy cut short (a full disk, a bad copy) is noticed: training names it, re-planning redoes it."""
    from autoprompt.errors import AutoPromptError
    from pipeline.training.data import load_training_cases

    preprocessed = tmp_path / "pre"
    shutil.copytree(setup.preprocessed, preprocessed)
    seg = preprocessed / DATASET / planned_data_identifier(setup) / "case_002_seg.npy"
    whole = seg.read_bytes()
    seg.write_bytes(whole[: len(whole) - 7])
    with pytest.raises(AutoPromptError, match=r"case_002_seg\.npy: damaged \(truncated"):
        load_training_cases(seg.parent, ["case_002"], labels=[1, 2], seed=0)
    outcome = cli(
        "plan-and-preprocess",
        "-d",
        "901",
        "--raw",
        setup.raw,
        "--preprocessed",
        preprocessed,
        "-c",
        "2d",
        "-np",
        "1",
    )
    assert outcome.code == 0, outcome.err
    assert seg.read_bytes() == whole


def test_empty_dataset_hint_does_not_ask_for_zero_training_cases(
    setup: Setup, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    case = empty_dataset(setup, tmp_path)
    outcome = cli(*case.args)
    assert "numTraining to 0" not in outcome.err
    data = json.loads((tmp_path / "raw" / DATASET / "dataset.json").read_text())
    assert data["numTraining"] >= 1  # the schema's rule the old hint broke
