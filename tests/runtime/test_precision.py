"""The ``auto`` precision: the rule on CPU flags and GPUs, the flag reader, and named precisions overriding it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autoprompt.precision
from autoprompt.devices import Precision
from autoprompt.errors import AutoPromptError
from autoprompt.precision import (
    cpu_precision,
    cpuinfo_value,
    cuda_precision,
    int8_encoder_pays,
    read_cpu_flags,
    resolve_precision,
)

CPU = torch.device("cpu")


def fake_cpu(monkeypatch: pytest.MonkeyPatch, *, bf16: bool, extra: tuple[str, ...] = ()) -> None:
    """Make this process see an AVX-512 CPU with or without bf16 dot-product instructions (and the flags
    ``extra``: e.g. ``avx512_vnni`` for int8 dot products, ``amx_tile`` for AMX)."""
    flags = {"fpu", "avx2", "avx512f", *({"avx512_bf16"} if bf16 else ()), *extra}
    monkeypatch.setattr(autoprompt.precision, "read_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", Precision.BF16),  # e.g. Zen 4, Cooper Lake
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "AVX512", Precision.BF16),  # Sapphire Rapids
        ({"avx2", "avx512f", "avx512bw"}, "AVX512", Precision.FP32),  # AVX-512 without bf16: emulated
        ({"avx2", "fma"}, "AVX2", Precision.FP32),  # a typical laptop
        ({"avx512_bf16"}, "AVX2", Precision.FP32),  # kernels limited to AVX2 (ATEN_CPU_CAPABILITY=avx2)
        (set(), "DEFAULT", Precision.FP32),  # flags unreadable (not Linux) or another architecture
    ],
)
def test_cpu_rule(flags: set[str], capability: str, expected: Precision) -> None:
    assert cpu_precision(flags, capability) is expected


@pytest.mark.parametrize(
    ("flags", "precision", "device", "expected"),
    [
        ({"avx512_bf16", "avx512_vnni"}, Precision.BF16, "cpu", True),  # e.g. Zen 4: no AMX
        ({"avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}, Precision.BF16, "cpu", False),
        ({"avx512_bf16"}, Precision.BF16, "cpu", False),  # no int8 dot products
        ({"avx512_vnni"}, Precision.FP32, "cpu", True),  # e.g. Cascade Lake: int8 beside fp32 layers
        ({"avx2", "avx_vnni"}, Precision.FP32, "cpu", False),  # AVX-VNNI laptops: int8 slower than fp32
        ({"avx2", "fma"}, Precision.FP32, "cpu", False),  # no int8 dot products
        ({"avx512_vnni"}, Precision.FP16, "cpu", False),  # not a precision auto gives a CPU
        ({"avx512_bf16", "avx512_vnni"}, Precision.BF16, "cuda", False),
    ],
)
def test_int8_encoder_rule(flags: set[str], precision: Precision, device: str, expected: bool) -> None:
    assert int8_encoder_pays(precision, torch.device(device), flags) is expected


def test_cuda_rule() -> None:
    assert cuda_precision(True) is Precision.BF16 and cuda_precision(False) is Precision.FP16


def test_cpu_flags_are_read_from_the_first_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    assert cpuinfo_value("model name", cpuinfo) == "Some CPU"
    assert (
        cpuinfo_value("microcode", cpuinfo) is None and cpuinfo_value("flags", tmp_path / "missing") is None
    )


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_follows_the_cpu_and_a_named_precision_overrides_it(
    monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    fake_cpu(monkeypatch, bf16=bf16)
    assert resolve_precision("auto", CPU) is (Precision.BF16 if bf16 else Precision.FP32)
    assert resolve_precision("fp32", CPU) is Precision.FP32
    assert resolve_precision(Precision.BF16, CPU) is Precision.BF16


def test_unknown_precision_is_one_clear_error() -> None:
    with pytest.raises(AutoPromptError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize("bf16", [True, False])
def test_training_amp_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    from pipeline.training.trainer import amp_dtype

    fake_cpu(monkeypatch, bf16=bf16)
    assert amp_dtype("auto", CPU) is (torch.bfloat16 if bf16 else None)
    assert amp_dtype("none", CPU) is None


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_embed_records_the_resolved_precision_and_precision_overrides_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bf16: bool, expected: str
) -> None:
    import json

    import numpy as np
    import SimpleITK as sitk

    from autoprompt.cli import main
    from autoprompt.interactive.embedding import embedding_sidecar_path

    image = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24 * 20, dtype=np.int16).reshape(24, 20)), str(image))
    fake_cpu(monkeypatch, bf16=bf16)
    common = [str(image), "--backbone", "tiny", "--device", "cpu"]
    assert main(["embed", *common, "-o", str(tmp_path / "auto.npy")]) == 0
    assert main(["embed", *common, "-o", str(tmp_path / "fp32.npy"), "--precision", "fp32"]) == 0
    recorded = {
        name: json.loads(embedding_sidecar_path(tmp_path / f"{name}.npy").read_text())["precision"]
        for name in ("auto", "fp32")
    }
    assert recorded == {"auto": expected, "fp32": "fp32"}
