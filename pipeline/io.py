"""Reading and writing medical images through SimpleITK, keeping their geometry.

Arrays are in SimpleITK order, ``(Z, Y, X)`` for 3D and ``(Y, X)`` for 2D; :class:`Geometry` holds spacing,
origin and direction in SimpleITK ``(x, y[, z])`` order, so an image read here and written back lands in
the same physical place.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.color import rgb2gray

from autoprompt.errors import AutoPromptError
from pipeline.files import atomic_path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
PLANAR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_SUFFIXES = VOLUME_SUFFIXES + PLANAR_SUFFIXES
"""File endings :func:`read_image` and :func:`write_image` accept (a DICOM series is a folder)."""
_UINT8_ONLY = (".png", ".jpg", ".jpeg")
PLANAR_ONLY_SUFFIXES = _UINT8_ONLY
"""File endings that hold 2D images only."""
LOSSY_SUFFIXES = (".jpg", ".jpeg")
"""File endings whose compression changes values: never used for a label map."""
RGB_CHANNELS = 3
"""Channels of nnU-Net's RGB layout: one 2D colour picture ``{case}_0000`` holds all three."""
_FIX_FORMAT = f"use one of {', '.join(SUPPORTED_SUFFIXES)} or a folder holding one DICOM series"


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in physical space, in SimpleITK ``(x, y[, z])`` order.

    Attributes:
        spacing: voxel size in mm per axis.
        origin: physical position of the first voxel.
        direction: direction cosines, flattened row-major, ``ndim**2`` values.
        size: voxels per axis ``(x, y[, z])`` (the numpy shape reversed).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        """The geometry of a SimpleITK image, or of a reader after ``ReadImageInformation``."""
        return cls(
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
            size=tuple(int(v) for v in image.GetSize()),
        )

    @property
    def ndim(self) -> int:
        return len(self.size)

    def to_dict(self) -> dict:
        """JSON-able form (lists)."""
        return {key: list(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
            size=tuple(int(v) for v in d["size"]),
        )

    def mismatches(self, other: Geometry, *, tol: float = 1e-4) -> list[str]:
        """Names of the fields (``size``, ``spacing``, ``origin``, ``direction``) that differ beyond ``tol``.

        ``size`` must be equal; the others must agree within ``tol`` absolute or relative.
        """
        if self.size != other.size:
            return ["size"]
        return [
            name
            for name in ("spacing", "origin", "direction")
            if not np.allclose(getattr(self, name), getattr(other, name), rtol=tol, atol=tol)
        ]

    def matches(self, other: Geometry, *, tol: float = 1e-4) -> bool:
        """Whether size is equal and spacing, origin and direction agree within ``tol``."""
        return not self.mismatches(other, tol=tol)


def image_suffix(path: str | os.PathLike) -> str:
    """The image format ending of ``path`` (``".nii.gz"``, ``".png"``, ...), ``""`` for a DICOM folder.

    Raises:
        AutoPromptError: the ending is not a supported image format.
    """
    path = Path(path)
    if path.is_dir():
        return ""
    name = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise AutoPromptError(f"{path}: not a supported image file; {_FIX_FORMAT}")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image file or DICOM series folder with its geometry.

    RGB(A) 2D images become grey (luminance, same 0-255 scale, float32); :func:`read_channels` keeps colour.

    Returns:
        The voxels, ``(Z, Y, X)`` or ``(Y, X)`` in the file's pixel type, and their :class:`Geometry`.

    Raises:
        AutoPromptError: the file is missing, unreadable, not an image, 4D, or a vector image that is not
            a 2D RGB(A) picture.
    """
    channels, geometry = read_channels(path)
    return (channels[0] if len(channels) == 1 else grey(channels)), geometry


def grey(rgb: np.ndarray) -> np.ndarray:
    """The luminance of ``3 x ...`` colour channels (same scale), float32 ``...``."""
    return rgb2gray(np.moveaxis(rgb, 0, -1).astype(np.float32)).astype(np.float32)


def read_channels(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image with its values per pixel as channels, as nnU-Net's ``NaturalImage2DIO`` does.

    A 2D RGB(A) picture gives its three colour channels (alpha is dropped), any other image one channel.

    Returns:
        ``C x Z x Y x X`` or ``C x Y x X`` in the file's pixel type (``C`` = 3 for a colour picture, else 1),
        and the :class:`Geometry`.

    Raises:
        AutoPromptError: as :func:`read_image`.
    """
    path = Path(path)
    image = _read_sitk(path)
    if image.GetDimension() not in (2, 3):
        raise _unsupported_dimension(path, image.GetDimension())
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        if image.GetDimension() != 2 or components not in (3, 4):
            raise AutoPromptError(
                f"{path}: a {image.GetDimension()}D image with {components} values per voxel is not supported; "
                "save each channel as its own single-valued file ({case}_0000, {case}_0001, ...)"
            )
        array = np.moveaxis(array[..., :RGB_CHANNELS], -1, 0)
    else:
        array = array[None]
    if not all_finite(array):
        raise _non_finite(path)
    return array, Geometry.of(image)


def holds_all_channels(suffix: str, num_channels: int) -> bool:
    """Whether one file of type ``suffix`` may hold all ``num_channels`` channels of a case: nnU-Net's RGB
    layout (a 2D colour picture ``{case}_0000`` for a dataset with three channel names)."""
    return num_channels == RGB_CHANNELS and suffix in PLANAR_SUFFIXES


def label_map_suffix(suffix: str) -> str:
    """The file type to write a label map in for an input of type ``suffix``: ``.png`` for a lossy JPEG."""
    return ".png" if suffix in LOSSY_SUFFIXES else suffix


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, read without its voxels (see :func:`read_image_info`).

    Attributes:
        geometry: spacing, origin, direction and size, as :func:`read_image` would return them.
        components: values per voxel (3 or 4 for an RGB(A) picture).
        itemsize: bytes per value in the file's pixel type.
    """

    geometry: Geometry
    components: int
    itemsize: int

    @property
    def ndim(self) -> int:
        return self.geometry.ndim

    @property
    def voxels(self) -> int:
        return int(np.prod(self.geometry.size, dtype=np.int64))


def read_image_info(path: str | os.PathLike) -> ImageInfo:
    """Read an image's header (or a DICOM series' first and last headers) without reading its voxels.

    Costs are computed from this before anything large is allocated: a small file can promise a huge
    image (a compressed volume of zeros, or a coarse spacing that resampling multiplies).

    Raises:
        AutoPromptError: the file is missing, not an image, or its header is unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise AutoPromptError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return _dicom_series_info(path)
    image_suffix(path)
    reader = _header(path)
    if reader.GetDimension() not in (2, 3):
        raise _unsupported_dimension(path, reader.GetDimension())
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    return ImageInfo(
        geometry=Geometry.of(reader),
        components=int(reader.GetNumberOfComponents()),
        itemsize=int(bits.group(1)) // 8 if bits else 8,
    )


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(path) from error
    return reader


def _dicom_series_info(folder: Path) -> ImageInfo:
    """The 3D geometry a series folder reads as: the first file's in-plane grid, one slice per file (a single
    multi-frame file: its frames)."""
    files = _dicom_series_files(folder)
    first = _header(Path(files[0]))
    geometry = Geometry.of(first)
    spacing = list(geometry.spacing[:2]) + [geometry.spacing[2] if geometry.ndim == 3 else 1.0]
    if len(files) > 1:
        last = Geometry.of(_header(Path(files[-1])))
        distance = float(np.linalg.norm(np.subtract(last.origin[:3], geometry.origin[:3])))
        spacing[2] = distance / (len(files) - 1) or spacing[2]
    origin = (list(geometry.origin) + [0.0])[:3]
    direction = geometry.direction if geometry.ndim == 3 else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    frames = len(files) if len(files) > 1 or geometry.ndim == 2 else geometry.size[2]
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(first.GetPixelID()))
    return ImageInfo(
        geometry=Geometry(
            spacing=tuple(spacing),
            origin=tuple(origin),
            direction=tuple(direction),
            size=(geometry.size[0], geometry.size[1], frames),
        ),
        components=int(first.GetNumberOfComponents()),
        itemsize=int(bits.group(1)) // 8 if bits else 8,
    )


def all_finite(array: np.ndarray, *, chunk: int = 1 << 22) -> bool:
    """Whether a float array holds no NaN or infinity (checked in chunks, never a full-size mask)."""
    if array.dtype.kind not in "fc":
        return True
    flat = array.reshape(-1)
    return all(np.isfinite(flat[start : start + chunk]).all() for start in range(0, flat.size, chunk))


def _unsupported_dimension(path: Path, ndim: int) -> AutoPromptError:
    return AutoPromptError(
        f"{path}: {ndim}D images are not supported; "
        "save each channel or time point as its own 3D file ({case}_0000, {case}_0001, ...)"
    )


def _non_finite(path: Path) -> AutoPromptError:
    return AutoPromptError(
        f"{path}: contains NaN or infinite values; replace them, e.g. with the image minimum, and save it again"
    )


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write ``array`` with ``geometry`` atomically; the format comes from the suffix of ``path``.

    PNG holds 2D uint8 only: integer arrays within 0..255 (label maps) are written as they are, other
    arrays are scaled to 0..255. JPEG is refused: its compression changes values (labels). TIFF holds 32-bit values at most (64-bit arrays are narrowed). Boolean
    masks are written as uint8 0/1, float16 as float32.
    PNG and TIFF keep spacing only; NIfTI, MHA and NRRD keep the full geometry.

    Args:
        array: ``(Z, Y, X)`` or ``(Y, X)``; its shape reversed must equal ``geometry.size``.
        geometry: where the voxels lie.
        path: output file; a folder (DICOM) is not writable, write ``.nii.gz`` instead.

    Raises:
        AutoPromptError: unsupported or lossy (JPEG) suffix, or a 3D array for a 2D-only format.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        raise AutoPromptError(f"{path}: an output image needs a file ending; name it e.g. {path.name}.nii.gz")
    suffix = image_suffix(path)
    if suffix in LOSSY_SUFFIXES:
        raise lossy_output_error(path)
    if tuple(reversed(array.shape)) != geometry.size:
        raise ValueError(
            f"array shape {array.shape} does not fit geometry size {geometry.size} (x, y[, z] order)"
        )
    if suffix in _UINT8_ONLY and array.ndim != 2:
        raise AutoPromptError(f"{path}: {suffix} holds 2D images only; write this 3D image as .nii.gz")
    image = sitk.GetImageFromArray(_storable(array, suffix))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=suffix not in _UINT8_ONLY)


def lossy_output_error(output: str | os.PathLike) -> AutoPromptError:
    """The one-line refusal of a JPEG output: its compression would change label values."""
    return AutoPromptError(
        f"{output}: JPEG compression changes pixel values, so a label map written as JPEG gets wrong labels; "
        "write .png (or .nii.gz) instead"
    )


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise AutoPromptError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return _read_dicom_series(path)
    suffix = image_suffix(path)  # rejects unsupported endings before SimpleITK guesses at them
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise _unreadable(path) from error


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header promises, or a NaN/infinite value.

    SimpleITK zero-pads a truncated file (an interrupted copy or upload) without a word, and ITK's NIfTI
    reader turns NaN and infinity into 0, so a damaged scan would look like a clean one. This reads the
    header with nibabel and streams the raw (decompressed) bytes once, counting them and, for a float
    pixel type, checking every raw value.
    """
    import nibabel

    try:
        voxels = nibabel.load(str(path)).dataobj  # an ArrayProxy: the header's offset, shape and type
        dtype = np.dtype(voxels.dtype)
        offset = int(voxels.offset)
        data_bytes = int(np.prod(voxels.shape, dtype=np.int64)) * dtype.itemsize
    except Exception as error:  # nibabel's errors for a damaged header are of several types
        raise _unreadable(path) from error
    finite = _RawValueCheck(dtype, offset, data_bytes)
    if path.name.lower().endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    finite.feed(chunk)
                    size += len(chunk)
        except (EOFError, OSError, zlib.error):
            size = -1  # the compressed stream ends early or is corrupt
    else:
        size = path.stat().st_size
        if data_bytes and size >= offset + data_bytes and dtype.kind in "fc":
            finite.values_ok = all_finite(
                np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(data_bytes // dtype.itemsize,))
            )
    if size < offset + data_bytes:
        raise AutoPromptError(
            f"{path}: the file is incomplete (truncated or damaged: the header promises "
            f"{offset + data_bytes} bytes of voxels); copy or export it again"
        )
    if not finite.values_ok:
        raise _non_finite(path)


class _RawValueCheck:
    """Checks the float values of a NIfTI byte stream fed chunk by chunk (header bytes skipped)."""

    def __init__(self, dtype: np.dtype, offset: int, data_bytes: int) -> None:
        self.dtype = dtype
        self.skip = offset
        self.left = data_bytes if dtype.kind in "fc" else 0
        self.carry = b""
        self.values_ok = True

    def feed(self, chunk: bytes) -> None:
        if not self.left or not self.values_ok:
            return
        if self.skip:
            dropped = min(self.skip, len(chunk))
            chunk, self.skip = chunk[dropped:], self.skip - dropped
        data = (self.carry + chunk)[: self.left]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.values_ok = bool(np.isfinite(np.frombuffer(data[:usable], dtype=self.dtype)).all())
        self.carry = data[usable:]
        self.left -= usable


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_dicom_series_files(folder))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise _unreadable(folder) from error


def _dicom_series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order."""
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on stderr for a folder without DICOM
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if not series:
        raise AutoPromptError(
            f"{folder}: folder holds no DICOM series; point to an image file or a DICOM series folder"
        )
    if len(series) > 1:
        raise AutoPromptError(
            f"{folder}: folder holds {len(series)} DICOM series; put each series in its own folder"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _unreadable(path: Path) -> AutoPromptError:
    return AutoPromptError(f"{path}: not a readable image (damaged or wrong format); re-export it as .nii.gz")


def _storable(array: np.ndarray, suffix: str) -> np.ndarray:
    """``array`` in a pixel type SimpleITK and the format can hold."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if suffix in _UINT8_ONLY:
        return _to_uint8(array)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if suffix in (".tif", ".tiff") and array.dtype.itemsize == 8 and array.dtype.kind in "iuf":
        fits_int32 = array.dtype.kind in "iu" and array.size and np.abs(array).max() < 2**31
        return array.astype(np.int32 if fits_int32 else np.float32)
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Integer arrays within 0..255 as they are; anything else min-max scaled to 0..255."""
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    array = array.astype(np.float64)
    low, high = float(np.min(array)), float(np.max(array))
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.round(scaled).astype(np.uint8)
