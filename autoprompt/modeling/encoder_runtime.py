"""The frozen image encoder on a CPU through OpenVINO: exported once per backbone, cached on disk.

PyTorch eager runs LiteMedSAM's TinyViT as hundreds of small kernels with a Python call each; OpenVINO
compiles the whole graph (fused attention, layer norms and GELUs, bf16 matrix products on AVX512-BF16 or
AMX) and runs it several times faster on the same cores (``python -m benchmarks.speed`` measures both).

When it runs: :meth:`~autoprompt.modeling.backbone.SamBackbone.encode` asks :func:`accelerated_encoder`
for every call. It gives a compiled encoder only for float32 CPU inputs, with the encoder frozen (no
parameter trains) or autograd off, and the backbone's ``encoder_runtime`` ``auto`` or ``openvino``;
otherwise (CUDA, a training encoder, ``eager``) PyTorch runs, unchanged. So the embedding cache, predict,
serve, segment and embed all use it without knowing.

Runtimes (:data:`RUNTIMES`): ``auto`` = the fastest available (OpenVINO where the package imports, else
PyTorch eager), ``eager`` = PyTorch always, ``openvino`` = OpenVINO, falling back to PyTorch like ``auto``.
A fallback (package missing, export or compilation failing) prints one line to stderr, once per process.

Precision: the caller resolves it (:mod:`autoprompt.precision`) and runs the encoder inside
:func:`autoprompt.devices.autocast`; the CPU autocast state seen here becomes OpenVINO's
``INFERENCE_PRECISION_HINT`` (bf16 autocast -> ``bf16``, none -> ``f32``). The hint is always set, as
OpenVINO on its own would pick bf16 on such CPUs even for an fp32 request. Outputs are float32.

An int8 copy of the encoder (``int8_xml``, :mod:`autoprompt.modeling.encoder_quantization`: a model folder's,
where :func:`autoprompt.precision.int8_encoder_pays`) is compiled the same way, with the same hint for the
layers it leaves in floating point, in place of the export below. Compiling takes a moment per process;
:func:`compile_ahead` starts it in a background thread while the caller does other work (the predictor
loads its models meanwhile), and the first call waits for it instead of compiling again.

Exported model: ``<cache folder>/openvino/<key>/encoder.xml`` (+ ``encoder.bin``, fp32 weights), key =
SHA-256 of the encoder's weights (:func:`weights_digest`: for a pristine backbone one export per weights file,
i.e. per backbone checksum; other weights or inserted adapters give another key), the input size and the
OpenVINO version. The cache folder is the user's (``~/.cache/autoprompt`` or under ``$XDG_CACHE_HOME``,
:func:`default_cache_folder`)
unless the backbone names another. ``.bin`` then ``.xml`` are written through
:func:`pipeline.files.atomic_path`, so a present ``.xml`` means a complete export; concurrent processes (DDP
ranks) at worst export twice. Loading reads the files only, and the export runs OpenVINO's converter with
its telemetry switched off: nothing goes over the network. The export is traced, and
TinyViT's traced graph holds the batch size as a constant, so it is exported for one window: a single window
runs compiled for latency (all threads on it), a batch compiled for throughput (OpenVINO's streams, each
window on its share of the threads, as many in flight as there are streams), which pays on small windows.

Embedding cache key (:func:`pipeline.training.embedding_cache.cache_key_parts`): in fp32 OpenVINO's
embeddings equal PyTorch's up to summation order (relative L2 error below :data:`FP32_TOLERANCE`), so an
fp32 cache does not record the runtime. In bf16 the two round to bf16 at different places, and their
embeddings differ from each other about as much as each differs from fp32 (OpenVINO's bf16 stays within
1.5 times PyTorch's bf16 distance from fp32; ``tests/modeling/test_encoder_runtime.py`` checks both on the
real LiteMedSAM weights): a change of the size for which the key already holds the precision. So a bf16 cache built through OpenVINO
records ``encoder_runtime: openvino`` in its key, and caches built by PyTorch keep the keys they had.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import json
import os
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprompt.errors import AutoPromptError
from autoprompt.modeling.config import ENCODER_RUNTIMES as RUNTIMES
from pipeline.files import atomic_path

FP32_TOLERANCE = 1e-4
"""Largest relative L2 error of OpenVINO's fp32 embeddings against eager PyTorch's fp32 embeddings."""

_NOTICES: set[str] = set()
_FAILED_EXPORTS: set[Path | tuple[Path, str]] = set()
"""Exports that failed (the file), and files that failed to compile at a precision hint ``(file, hint)``: a
CPU may compile the fp32 export but not in bf16."""
_AHEAD: dict[tuple[str, str, int, str], threading.Thread] = {}
"""Compilations started by :func:`compile_ahead` that no call has waited for yet, by :func:`_compiled`'s key."""
_AHEAD_LOCK = threading.Lock()
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str]] = weakref.WeakKeyDictionary()

EncoderFn = Callable[[torch.Tensor], torch.Tensor]


def check_runtime(name: str) -> str:
    """``name`` if it is one of :data:`RUNTIMES`.

    Raises:
        AutoPromptError: any other name (with "did you mean").
    """
    if name not in RUNTIMES:
        close = difflib.get_close_matches(str(name), RUNTIMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AutoPromptError(f"unknown encoder_runtime '{name}'{hint}; choose one of {', '.join(RUNTIMES)}")
    return name


def default_cache_folder() -> Path:
    """The user's cache folder for exported encoders: ``$XDG_CACHE_HOME/autoprompt``, by default
    ``~/.cache/autoprompt``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoprompt"


def notice(message: str) -> None:
    """Print ``autoprompt: <message>`` to stderr, once per process and message."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(f"autoprompt: {message}", file=sys.stderr)


def accelerated_encoder(
    encoder: nn.Module,
    inputs: torch.Tensor,
    *,
    runtime: str,
    cache_folder: Path | None = None,
    int8_xml: Path | None = None,
) -> EncoderFn | None:
    """The compiled encoder to run ``inputs`` with, or None where PyTorch runs them (see the module docstring).

    Args:
        encoder: the backbone's image encoder (``B x 3 x S x S`` -> ``B x 256 x 64 x 64``).
        inputs: ``B x 3 x S x S``, already in the encoder's input scale.
        runtime: one of :data:`RUNTIMES`.
        cache_folder: where exported encoders live; None: :func:`default_cache_folder`.
        int8_xml: an int8 copy of ``encoder`` for ``S x S`` windows
            (:mod:`autoprompt.modeling.encoder_quantization`) to run instead of the fp32 export, wherever
            OpenVINO runs; one that fails to compile gives a notice and the fp32 export.

    Returns:
        A function ``B x 3 x S x S`` float32 -> ``B x 256 x 64 x 64`` float32 on the CPU, or None.
    """
    if runtime == "eager" or inputs.device.type != "cpu" or inputs.dtype != torch.float32:
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters()):
        return None  # the encoder trains: its gradients need PyTorch
    try:
        import openvino  # noqa: F401 - is it installed?
    except ImportError:
        notice(
            "the openvino package is not installed; the image encoder runs in PyTorch (pip install openvino)"
        )
        return None
    mode = "LATENCY" if len(inputs) == 1 else "THROUGHPUT"
    hint = _precision_hint()
    if int8_xml is not None and (int8_xml, hint) not in _FAILED_EXPORTS:
        try:
            return functools.partial(_run, _compiled_once(str(int8_xml), hint, torch.get_num_threads(), mode))
        except Exception as error:  # noqa: BLE001 - a damaged int8 file: the fp32 export still works
            _FAILED_EXPORTS.add((int8_xml, hint))
            notice(
                f"{int8_xml}: OpenVINO could not compile the int8 image encoder ({_first_line(error)}); "
                "the fp32 export runs instead (delete the folder, or train again, to make a new one)"
            )
    folder = default_cache_folder() if cache_folder is None else Path(cache_folder)
    xml = folder / "openvino" / export_key(encoder, input_size=inputs.shape[-1]) / "encoder.xml"
    if xml in _FAILED_EXPORTS or (xml, hint) in _FAILED_EXPORTS:
        return None
    try:
        if not xml.is_file():
            export_encoder(encoder, xml, input_size=inputs.shape[-1])
        compiled = _compiled_once(str(xml), hint, torch.get_num_threads(), mode)
    except Exception as error:  # noqa: BLE001 - any export/compile failure means: run PyTorch instead
        _FAILED_EXPORTS.add((xml, hint) if xml.is_file() else xml)
        notice(
            f"{xml}: OpenVINO could not export or compile the image encoder ({_first_line(error)}); "
            "it runs in PyTorch (encoder_runtime=eager silences this)"
        )
        return None
    return functools.partial(_run, compiled)


def compile_ahead(xml: Path, *, bf16: bool) -> None:
    """Start compiling the exported encoder ``xml`` for batches of windows in a background thread, so that
    the first :func:`accelerated_encoder` call that runs it on a batch (under bf16 autocast if ``bf16``)
    finds it compiled or waits for it. OpenVINO compiles without holding Python's lock, so this overlaps
    work such as importing and loading the models. A failure is left to that call, which compiles again and
    reports it; without the ``openvino`` package nothing starts."""
    try:
        import openvino  # noqa: F401 - imported here, not by two threads at once
    except ImportError:
        return
    key = (str(xml), "bf16" if bf16 else "f32", torch.get_num_threads(), "THROUGHPUT")
    with _AHEAD_LOCK:
        if key in _AHEAD:  # already on its way
            return
        # not a daemon: a process ending meanwhile (a bad first case) waits for it, not killing it mid-compile
        thread = _AHEAD[key] = threading.Thread(
            target=_compile_quietly, args=key, name="openvino-compile-ahead"
        )
    thread.start()


def _compile_quietly(*key: Any) -> None:
    with contextlib.suppress(Exception):  # reported by the call that needs the model (see compile_ahead)
        _compiled(*key)


def _compiled_once(xml: str, precision: str, threads: int, mode: str) -> Any:
    """:func:`_compiled`, after waiting for a :func:`compile_ahead` of the same model, so it is not compiled
    twice at once."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.pop((xml, precision, threads, mode), None)
    if ahead is not None:
        ahead.join()
    return _compiled(xml, precision, threads, mode)


def _first_line(error: Exception) -> str:
    """``Class: first line of the message`` (at most 200 characters of it)."""
    return f"{error.__class__.__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def export_key(encoder: nn.Module, *, input_size: int) -> str:
    """First 16 hex digits of the SHA-256 naming one exported encoder (see the module docstring)."""
    import openvino

    parts = {
        "weights": weights_digest(encoder),
        "input_size": int(input_size),
        "openvino": openvino.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, dtypes, values), computed once per state.

    Remembered per module with the tensors' in-place version counters, so weights loaded into the same
    module later (``load_state_dict``) give a new digest.
    """
    state = module.state_dict()
    versions = tuple(tensor._version for tensor in state.values())
    known = _DIGESTS.get(module)
    if known is not None and known[0] == versions:
        return known[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _DIGESTS[module] = (versions, digest.hexdigest())
    return digest.hexdigest()


def export_encoder(encoder: nn.Module, xml: Path, *, input_size: int) -> None:
    """Convert ``encoder`` to OpenVINO IR (one window, fp32 weights) at ``xml`` (+ ``.bin``), atomically.

    Args:
        encoder: the image encoder, in eval mode.
        xml: the final ``encoder.xml``; ``encoder.bin`` goes next to it.
        input_size: S of the ``B x 3 x S x S`` input.
    """
    xml.parent.mkdir(parents=True, exist_ok=True)  # an unwritable cache folder fails before the slow part
    notice(f"exporting the image encoder to OpenVINO once, into {xml.parent}")
    save_model_atomically(converted_encoder(encoder, input_size=input_size), xml)


def converted_encoder(encoder: nn.Module, *, input_size: int) -> Any:
    """``encoder`` as an OpenVINO model for one ``1 x 3 x S x S`` window (``S = input_size``), fp32."""
    import openvino

    example = torch.zeros(1, 3, input_size, input_size)
    # traced in fp32 whatever autocast the caller runs in: the precision is chosen when compiling
    no_autocast = torch.autocast(device_type="cpu", enabled=False)
    with torch.no_grad(), no_autocast, warnings.catch_warnings(), _converter_telemetry_off():
        warnings.simplefilter("ignore")  # tracing warnings about the encoder's shape asserts: noise to a user
        model = openvino.convert_model(encoder, example_input=example)
    model.reshape({model.inputs[0]: openvino.PartialShape([1, 3, input_size, input_size])})
    return model


def save_model_atomically(model: Any, xml: Path) -> None:
    """Save an OpenVINO model as ``xml`` + ``.bin`` (weights uncompressed): ``.bin`` first, so a present
    ``.xml`` means a complete pair."""
    import openvino

    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent) as scratch:
        staged = Path(scratch) / xml.name
        openvino.save_model(model, staged, compress_to_fp16=False)
        with atomic_path(xml) as xml_tmp, atomic_path(xml.with_suffix(".bin")) as bin_tmp:
            staged.with_suffix(".bin").replace(bin_tmp)
            staged.replace(xml_tmp)


@contextlib.contextmanager
def _converter_telemetry_off() -> Iterator[None]:
    """Run OpenVINO's converter with its own telemetry stub: it would otherwise report usage over the network."""
    try:
        stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    except ImportError:
        yield
        return
    saved = []
    for name in ("convert_impl", "telemetry_utils", "utils"):
        module = importlib.import_module(f"openvino.tools.ovc.{name}")
        if hasattr(module, "tm"):
            saved.append((module, module.tm))
            module.tm = stub
    try:
        yield
    finally:
        for module, original in saved:
            module.tm = original


def _precision_hint() -> str:
    """OpenVINO's inference precision for the CPU autocast state around the call."""
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return "bf16" if bf16 else "f32"


@functools.lru_cache(maxsize=8)
def _compiled(xml: str, precision: str, threads: int, mode: str) -> Any:
    """One compiled model per exported file, precision, thread count and ``mode``, shared by the whole
    process: ``LATENCY`` (one window on all threads) or ``THROUGHPUT`` (OpenVINO's streams, several windows
    at once with the threads split between them; :func:`_run` keeps each stream busy)."""
    import openvino

    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": mode,
    }
    return openvino.Core().compile_model(xml, "CPU", config)


def _run(compiled: Any, inputs: torch.Tensor) -> torch.Tensor:
    """``B x 3 x S x S`` -> ``B x 256 x 64 x 64`` float32 through a compiled one-window encoder, one
    inference request per stream (a window each) in flight."""
    array = inputs.detach().numpy()
    if len(array) == 1:
        return torch.from_numpy(compiled(np.ascontiguousarray(array))[0].astype(np.float32, copy=False))
    windows: list[np.ndarray | None] = [None] * len(array)

    def keep(request: Any, index: int) -> None:
        windows[index] = request.get_output_tensor(0).data.copy()

    requests, lock = _requests(compiled)
    with lock:  # one caller at a time on the shared requests (and their callback)
        requests.set_callback(keep)
        for index in range(len(array)):
            requests.start_async({0: np.ascontiguousarray(array[index : index + 1])}, index)
        requests.wait_all()
    return torch.from_numpy(np.concatenate(windows).astype(np.float32, copy=False))


@functools.lru_cache(maxsize=8)
def _requests(compiled: Any) -> tuple[Any, threading.Lock]:
    """The inference requests of a compiled encoder (one per stream), made once and reused by every call."""
    import openvino

    requests = openvino.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    return requests, threading.Lock()
