"""An int8 copy of the frozen image encoder, calibrated on training windows, for CPUs where int8 pays.

On a CPU with AVX-512 int8 dot products (VNNI) but without AMX, LiteMedSAM's encoder runs faster in int8 than
in bf16 or fp32 (:func:`autoprompt.precision.int8_encoder_pays` decides where). Quantising needs calibration
windows (to set the activation ranges), and they must come from training data: calibrating on the volumes
being predicted would make one prediction depend on the others. So training writes the int8 encoder into
the model folder (``pipeline.training.trainer``: once the steps end, or with ``int8_cache`` before the
embedding cache, which it then builds), and prediction only reads it.

Folder layout (``MODEL_FOLDER/encoder_int8/``)::

    encoder.xml, encoder.bin   OpenVINO IR of one 1 x 3 x S x S window, int8 weights and activations
    int8.json                  what it was made from: the recipe, the encoder's weights digest, S, the
                               number of calibration windows, the nncf and OpenVINO versions; written
                               last, so a present int8.json means a complete folder

Quantisation is NNCF's post-training quantisation for transformers (``nncf.quantize`` with
``ModelType.TRANSFORMER``) on the fp32 OpenVINO model of :mod:`autoprompt.modeling.encoder_runtime`, the
convolutions left in floating point (:data:`FLOAT_OPERATIONS`); what stays in floating point runs at the
compile-time precision hint.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprompt.modeling.backbone import file_sha256
from autoprompt.modeling.encoder_runtime import converted_encoder, save_model_atomically, weights_digest
from pipeline.files import load_json, save_json

FOLDER_NAME = "encoder_int8"
FLOAT_OPERATIONS = ("Convolution", "GroupConvolution")
"""OpenVINO operations left in floating point: TinyViT's convolutions (patch embedding, MBConv stage, neck).
In int8 they flip a few borderline (volume, class) pairs by many Dice points; the attention and MLP matrix
products carry most of the speed-up (docs/results.md, round 41)."""
RECIPE = "nncf transformer ptq, float convolutions"
"""Names how an int8 encoder was made (``int8.json``); a folder made another way is not used."""
MAX_WINDOW = 256
"""The largest window quantised: LiteMedSAM's; the ViT backbones' 1024 windows would take hours to calibrate on a CPU."""
CALIBRATION_WINDOWS = 128
"""Windows the activation ranges are calibrated on (chosen on ACDC CV and Hippocampus fold 1 against fewer,
docs/results.md, round 41; quantising takes longer with more)."""


def quantize_encoder(encoder: nn.Module, windows: np.ndarray, folder: Path) -> Path:
    """Write an int8 ``encoder`` calibrated on ``windows`` into ``folder`` (layout in the module docstring).

    Args:
        encoder: the frozen image encoder, in eval mode.
        windows: ``N x 3 x S x S`` float32, already in the encoder's input scale
            (``SamBackbone.encoder_input``).
        folder: the ``encoder_int8`` folder (created; an earlier int8 encoder there is replaced).

    Returns:
        The ``encoder.xml`` written.

    Raises:
        ImportError: ``nncf`` or ``openvino`` is not installed.
    """
    import openvino

    if any(parameter.device.type != "cpu" for parameter in encoder.parameters()):
        encoder = copy.deepcopy(encoder).cpu()  # traced with CPU inputs
    size = int(windows.shape[-1])
    calibration = [np.ascontiguousarray(window[None], dtype=np.float32) for window in windows]
    with _quiet(), _nncf_without_telemetry() as nncf:  # no log lines, progress bars or usage reports
        model = converted_encoder(encoder, input_size=size)
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            subset_size=len(windows),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(types=list(FLOAT_OPERATIONS)),
        )
    (folder / "int8.json").unlink(missing_ok=True)  # the folder is incomplete until the new record is written
    xml = folder / "encoder.xml"
    save_model_atomically(quantized, xml)
    record = {
        "recipe": RECIPE,
        "weights": weights_digest(encoder),
        "input_size": size,
        "calibration_windows": len(windows),
        "nncf": version("nncf"),
        "openvino": openvino.__version__,
    }
    save_json(record, folder / "int8.json")
    return xml


def int8_encoder_for(folder: Path, encoder: nn.Module, *, input_size: int) -> Path | None:
    """The ``encoder.xml`` of ``folder`` if it holds a complete int8 copy of this very ``encoder`` (same
    weights digest), made by :data:`RECIPE` for ``S x S`` windows, else None."""
    record = _complete_record(folder)
    if record is None:
        return None
    same = record.get("weights") == weights_digest(encoder) and record.get("input_size") == input_size
    return folder / "encoder.xml" if same else None


def int8_encoder_file(folder: Path) -> Path | None:
    """The ``encoder.xml`` of ``folder`` if it holds a complete int8 encoder made by :data:`RECIPE`, whatever
    encoder and windows it was made for (:func:`int8_encoder_for` checks those): enough to compile it ahead
    (:func:`~autoprompt.modeling.encoder_runtime.compile_ahead`) before the encoder is loaded."""
    return None if _complete_record(folder) is None else folder / "encoder.xml"


def _complete_record(folder: Path) -> dict | None:
    """``folder``'s ``int8.json`` if it names :data:`RECIPE` and both model files are there, else None."""
    record_path = folder / "int8.json"
    if not record_path.is_file():
        return None
    try:
        record = load_json(record_path)
    except ValueError:
        return None
    xml = folder / "encoder.xml"
    complete = record.get("recipe") == RECIPE and xml.is_file() and xml.with_suffix(".bin").is_file()
    return record if complete else None


def int8_encoder_digest(xml: Path) -> str:
    """First 16 hex digits of the SHA-256 of an int8 encoder's weights file (``encoder.bin``): tells one
    calibration from another (the embedding cache's key)."""
    return file_sha256(xml.with_suffix(".bin"))[:16]


@contextlib.contextmanager
def _nncf_without_telemetry() -> Iterator[Any]:
    """The ``nncf`` module, its usage reports (which would go over the network) stubbed out meanwhile."""
    import nncf
    from nncf.telemetry import decorator
    from nncf.telemetry.wrapper import NNCFTelemetryStub

    reporting = decorator.telemetry
    decorator.telemetry = NNCFTelemetryStub()
    try:
        yield nncf
    finally:
        decorator.telemetry = reporting


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Log lines (up to warnings) and anything printed kept out of the user's output (training logs its own line)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
