"""Receiving a scan safely: streamed to disk under a size limit, type checked by content, zips checked.

Nothing the client names is ever used as a path: the stored file is named by its detected type, and
the members of a DICOM zip are written under numbered names.
"""

from __future__ import annotations

import re
import shutil
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from autoprompt.errors import AutoPromptError

HEAD_BYTES = 8192
"""How much of an upload is inspected to decide its type."""
FORM_OVERHEAD_BYTES = 1 << 20
"""Allowance for the multipart framing and small form fields on top of the file size limit."""
UNPACKED_ZIP_FACTOR = 4
"""A DICOM zip may unpack to at most this many times the upload limit."""

ACCEPTED = ".nii.gz, .nii, .mha, .nrrd, a .zip of one DICOM series, .png or .jpg"


class UploadKind(str, Enum):
    """Upload types recognised by content; the value is the stored file's ending."""

    NIFTI_GZ = ".nii.gz"
    NIFTI = ".nii"
    METAIMAGE = ".mha"
    NRRD = ".nrrd"
    DICOM_ZIP = ".zip"
    PNG = ".png"
    JPEG = ".jpg"

    @property
    def result_suffix(self) -> str:
        """The label map's file ending: the input's own, except JPEG -> PNG (lossless) and DICOM -> NIfTI."""
        return {UploadKind.JPEG: ".png", UploadKind.DICOM_ZIP: ".nii.gz"}.get(self, self.value)


class UploadRejected(AutoPromptError):
    """An upload the service refuses; ``status_code`` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ReceivedUpload:
    """A file stored by :func:`receive_upload`.

    Attributes:
        path: where it lies (named ``scan<ending>`` by its detected type).
        kind: the detected type.
        filename: the client's file name, cleaned, for display and download names only.
        size: bytes stored.
    """

    path: Path
    kind: UploadKind
    filename: str
    size: int


def sniff_kind(head: bytes) -> UploadKind:
    """Decide an upload's type from its first bytes (up to :data:`HEAD_BYTES`).

    Raises:
        UploadRejected: 415 for an unsupported type, 400 for a MetaImage/NRRD header that points at a
            separate data file (the server would read a path the client names) or an empty zip.
    """
    if head.startswith(b"\x1f\x8b"):
        if _is_nifti(_gunzip_head(head)):
            return UploadKind.NIFTI_GZ
        raise UploadRejected(415, f"a gzip file that does not hold a NIfTI image; upload {ACCEPTED}")
    if _is_nifti(head):
        return UploadKind.NIFTI
    if len(head) >= 348 and head[344:348] == b"ni1\x00":
        raise UploadRejected(415, "a NIfTI .hdr/.img pair cannot be uploaded; convert it to a single .nii.gz")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return UploadKind.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return UploadKind.JPEG
    if head.startswith(b"PK\x03\x04"):
        return UploadKind.DICOM_ZIP
    if head.startswith(b"PK\x05\x06"):
        raise UploadRejected(400, "the zip is empty; zip the folder that holds the DICOM series")
    if head.startswith(b"NRRD000"):
        _check_nrrd_header(head)
        return UploadKind.NRRD
    if _looks_like_metaimage(head):
        _check_metaimage_header(head)
        return UploadKind.METAIMAGE
    if head[128:132] == b"DICM":
        raise UploadRejected(415, "a single DICOM file; zip the whole series folder and upload the .zip")
    raise UploadRejected(
        415, f"not a supported scan (type decided by content, not by name); upload {ACCEPTED}"
    )


def _gunzip_head(head: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
    except zlib.error:
        return b""


def _is_nifti(header: bytes) -> bool:
    """NIfTI-1 (348-byte header, ``n+1`` magic) or NIfTI-2 (540-byte header, ``n+2`` magic), either byte order."""
    if len(header) >= 348 and header[344:348] == b"n+1\x00":
        return header[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")
    if len(header) >= 12 and header[4:12] == b"n+2\x00\r\n\x1a\n":
        return header[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
    return False


_META_LINE = re.compile(rb"^\s*(ObjectType|NDims|Comment|ObjectSubType|TransformType|DimSize)\s*=")


def _looks_like_metaimage(head: bytes) -> bool:
    return bool(_META_LINE.match(head)) and b"NDims" in head


def _check_metaimage_header(head: bytes) -> None:
    match = re.search(rb"^\s*ElementDataFile\s*=\s*(\S+)", head, flags=re.MULTILINE)
    if match is None:
        raise UploadRejected(415, "a MetaImage header without its data; upload a single .mha file")
    if match.group(1) != b"LOCAL":
        raise UploadRejected(
            400,
            "a MetaImage header that points at a separate data file; upload a single .mha with the data inside",
        )


def _check_nrrd_header(head: bytes) -> None:
    header = head.split(b"\n\n", 1)[0]
    if re.search(rb"^\s*data\s?file\s*:", header, flags=re.MULTILINE | re.IGNORECASE):
        raise UploadRejected(
            400,
            "a detached NRRD header that points at a separate data file; upload a single .nrrd with the data inside",
        )


def clean_filename(name: str | None) -> str:
    """The client's file name reduced to a safe display name (last path part, plain characters)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    return base[:120] or "scan"


class _FilePart:
    """Multipart callbacks that write the form field ``file`` to disk, sniffing its head first."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self.in_file = False
        self.seen_file = False
        self.filename = ""
        self.head = bytearray()
        self.kind: UploadKind | None = None
        self.size = 0
        self.handle = None
        self.path: Path | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._append("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _append(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self.headers = {}

    def _header_end(self) -> None:
        self.headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.in_file = options.get(b"name") == b"file" and not self.seen_file
        if self.in_file:
            self.seen_file = True
            self.filename = clean_filename(options.get(b"filename", b"").decode("utf-8", "replace"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            limit = self.max_bytes / 2**20
            raise UploadRejected(413, f"{self.filename}: larger than the upload limit of {limit:.0f} MB")
        if self.handle is None:
            self.head += chunk
            if len(self.head) >= HEAD_BYTES:
                self._open()
            return
        self.handle.write(chunk)

    def _part_end(self) -> None:
        if self.in_file:
            if self.handle is None and self.head:
                self._open()
            self.in_file = False

    def _open(self) -> None:
        try:
            self.kind = sniff_kind(bytes(self.head[:HEAD_BYTES]))
        except UploadRejected as error:
            raise UploadRejected(error.status_code, f"{self.filename}: {error}") from None
        self.path = self.folder / f"scan{self.kind.value}"
        self.handle = self.path.open("wb")
        self.handle.write(self.head)
        self.head = bytearray()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


async def receive_upload(
    stream: AsyncIterator[bytes],
    content_type: str,
    content_length: str | None,
    folder: Path,
    *,
    max_bytes: int,
) -> ReceivedUpload:
    """Stream a ``multipart/form-data`` body's ``file`` field into ``folder``, never past ``max_bytes``.

    The body is parsed as it arrives; the file's type is decided from its first bytes before the rest is
    written, and reading stops as soon as the limit is passed. On any rejection ``folder`` is removed.

    Args:
        stream: the request body's chunks.
        content_type: the request's ``Content-Type`` header (must carry the multipart boundary).
        content_length: the ``Content-Length`` header, if any: a body announced too large is refused
            before a byte is read.
        folder: a fresh folder for this upload (created here).
        max_bytes: the largest file accepted.

    Raises:
        UploadRejected: 413 (too large), 415 (type), 400 (no file, empty file, not multipart).
    """
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadRejected(400, "send the scan as multipart/form-data in a field named 'file'")
    limit = max_bytes + FORM_OVERHEAD_BYTES
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise UploadRejected(413, f"the upload is larger than the limit of {max_bytes / 2**20:.0f} MB")
    folder.mkdir(parents=True, exist_ok=False)
    part = _FilePart(folder, max_bytes)
    parser = MultipartParser(options[b"boundary"], part.callbacks())
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise UploadRejected(
                    413, f"the upload is larger than the limit of {max_bytes / 2**20:.0f} MB"
                )
            parser.write(chunk)
        parser.finalize()
        part.close()
        if not part.seen_file:
            raise UploadRejected(
                400, "no form field named 'file' in the upload; send the scan as field 'file'"
            )
        if part.path is None:
            raise UploadRejected(400, f"the uploaded file '{part.filename}' is empty; upload the scan itself")
    except BaseException as error:
        part.close()
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, MultipartParseError):
            raise UploadRejected(
                400, "the multipart body is malformed; send the scan as form field 'file'"
            ) from error
        raise
    return ReceivedUpload(path=part.path, kind=part.kind, filename=part.filename, size=part.size)


def check_zip(path: Path, *, max_unpacked_bytes: int, name: str = "the zip") -> None:
    """Refuse a zip whose members could escape the folder they are unpacked into, or that unpacks too large.

    Args:
        path: the stored zip.
        max_unpacked_bytes: the most its files may add up to.
        name: the zip's name as the client gave it, for the messages.

    Raises:
        UploadRejected: 400 for a damaged zip, an absolute path, a ``..`` part, a link member or no
            files; 413 when the members add up to more than ``max_unpacked_bytes``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadRejected(400, f"{name}: damaged zip; zip the DICOM series folder again") from error
    for member in members:
        member_path = member.filename.replace("\\", "/")
        parts = PurePosixPath(member_path).parts
        if member_path.startswith("/") or re.match(r"^[A-Za-z]:", member_path) or ".." in parts:
            raise UploadRejected(
                400,
                f"{name}: member '{member.filename}' has an absolute path or '..'; zip the series folder itself",
            )
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise UploadRejected(
                400, f"{name}: member '{member.filename}' is a link; zip the DICOM files themselves"
            )
    files = [member for member in members if not member.is_dir()]
    if not files:
        raise UploadRejected(400, f"{name}: holds no files; zip the folder that holds the DICOM series")
    if sum(member.file_size for member in files) > max_unpacked_bytes:
        raise UploadRejected(413, f"{name}: unpacks to more than {max_unpacked_bytes / 2**20:.0f} MB")


def unpack_zip(path: Path, folder: Path) -> Path:
    """Unpack a zip checked by :func:`check_zip` into ``folder`` under numbered names, flattening folders.

    Returns:
        ``folder``, now holding the members as ``00000.dcm``, ``00001.dcm``, ... (a DICOM series folder
        for :func:`pipeline.io.read_image`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        members = [member for member in archive.infolist() if not member.is_dir()]
        for index, member in enumerate(members):
            with archive.open(member) as source, (folder / f"{index:05d}.dcm").open("wb") as target:
                shutil.copyfileobj(source, target, length=1 << 20)
    return folder
