"""Upload safety: type by content, size limit while streaming, zip member checks."""

from __future__ import annotations

import asyncio
import gzip
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoprompt.serve.uploads import (
    UploadKind,
    UploadRejected,
    check_zip,
    clean_filename,
    receive_upload,
    sniff_kind,
    unpack_zip,
)


def _nifti_bytes(tmp_path: Path, name: str) -> bytes:
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), dtype=np.int16)), str(path))
    return path.read_bytes()


def _nifti2_header(byte_order: str) -> bytes:
    header = bytearray(540)
    header[0:4] = struct.pack(byte_order + "i", 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    return bytes(header)


def test_known_types_are_recognised_by_content(tmp_path: Path) -> None:
    nii = _nifti_bytes(tmp_path, "a.nii")
    big_endian_nii = bytearray(nii[:352])
    big_endian_nii[0:4] = struct.pack(">i", 348)
    cases = {
        UploadKind.NIFTI_GZ: _nifti_bytes(tmp_path, "a.nii.gz"),
        UploadKind.NIFTI: nii,
        UploadKind.METAIMAGE: b"ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n\x00\x00\x00\x00",
        UploadKind.NRRD: b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: raw\n\n\x00\x00\x00\x00",
        UploadKind.PNG: b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
        UploadKind.JPEG: b"\xff\xd8\xff\xe0" + b"\x00" * 20,
        UploadKind.DICOM_ZIP: b"PK\x03\x04" + b"\x00" * 40,
    }
    for expected, head in cases.items():
        assert sniff_kind(head) is expected, expected
    assert sniff_kind(bytes(big_endian_nii)) is UploadKind.NIFTI
    assert sniff_kind(_nifti2_header("<")) is UploadKind.NIFTI
    assert sniff_kind(_nifti2_header(">")) is UploadKind.NIFTI
    assert sniff_kind(gzip.compress(_nifti2_header("<") + b"\x00" * 100)) is UploadKind.NIFTI_GZ


@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (b"hello, this is a text file named scan.nii.gz", 415, "not a supported scan"),
        (gzip.compress(b"just text inside a gzip" * 50), 415, "gzip file that does not hold a NIfTI"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 64, 415, "zip the whole series folder"),
        (b"ObjectType = Image\nNDims = 3\nElementDataFile = /etc/passwd\n", 400, "separate data file"),
        (b"ObjectType = Image\nNDims = 3\nElementDataFile = scan.raw\n", 400, "separate data file"),
        (b"NRRD0004\ntype: uint8\ndata file: /etc/shadow\n\n", 400, "detached NRRD header"),
        (b"PK\x05\x06" + b"\x00" * 18, 400, "the zip is empty"),
        (b"\x5c\x01\x00\x00" + b"\x00" * 340 + b"ni1\x00", 415, ".hdr/.img pair"),
    ],
)
def test_unsupported_or_dangerous_types_are_refused(head: bytes, status: int, message: str) -> None:
    with pytest.raises(UploadRejected, match=message) as caught:
        sniff_kind(head)
    assert caught.value.status_code == status


def test_client_file_names_are_reduced_to_plain_display_names() -> None:
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\scans\\brain scan.nii.gz") == "brain scan.nii.gz"
    assert clean_filename('a<b>"c|d.nii') == "a_b__c_d.nii"
    assert clean_filename("") == "scan"
    assert clean_filename("..") == "scan"


def _multipart(data: bytes, *, field: str = "file", filename: str = "scan.nii.gz") -> tuple[bytes, str]:
    boundary = "testboundary1234"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _receive(
    body: bytes,
    content_type: str,
    folder: Path,
    *,
    max_bytes: int,
    chunk: int = 1000,
    length: bool = True,
    chunks_read: list[int] | None = None,
):
    """Run :func:`receive_upload` on ``body`` sent in ``chunk``-byte pieces; count the pieces read."""
    chunks_read = [] if chunks_read is None else chunks_read

    async def stream():
        for start in range(0, len(body), chunk):
            chunks_read.append(start)
            yield body[start : start + chunk]

    content_length = str(len(body)) if length else None
    return asyncio.run(receive_upload(stream(), content_type, content_length, folder, max_bytes=max_bytes))


def test_upload_is_streamed_to_a_file_named_by_its_type(tmp_path: Path) -> None:
    data = _nifti_bytes(tmp_path, "x.nii.gz") + b""
    body, content_type = _multipart(data, filename="../../evil name.nii.gz")
    upload = _receive(body, content_type, tmp_path / "in", max_bytes=10**6, chunk=37)
    assert upload.path == tmp_path / "in" / "scan.nii.gz"
    assert upload.path.read_bytes() == data
    assert upload.kind is UploadKind.NIFTI_GZ
    assert upload.filename == "evil name.nii.gz"
    assert upload.size == len(data)


def test_oversize_upload_stops_reading_and_leaves_nothing(tmp_path: Path) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(300_000)
    body, content_type = _multipart(data)
    folder = tmp_path / "in"
    chunks_read: list[int] = []
    with pytest.raises(UploadRejected) as caught:  # chunked: no Content-Length to refuse it up front
        _receive(body, content_type, folder, max_bytes=100_000, length=False, chunks_read=chunks_read)
    assert caught.value.status_code == 413
    assert len(chunks_read) <= 102  # stopped at the limit, not at the end of the 300 kB body
    assert not folder.exists()


def test_upload_announced_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    body, content_type = _multipart(b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20))
    chunks_read: list[int] = []
    with pytest.raises(UploadRejected) as caught:
        _receive(body, content_type, tmp_path / "in", max_bytes=2**20, chunks_read=chunks_read)
    assert caught.value.status_code == 413
    assert chunks_read == []
    assert not (tmp_path / "in").exists()


def test_wrong_type_is_refused_after_its_first_bytes(tmp_path: Path) -> None:
    body, content_type = _multipart(b"%PDF-1.7 " + bytes(50_000))
    chunks_read: list[int] = []
    with pytest.raises(UploadRejected) as caught:
        _receive(body, content_type, tmp_path / "in", max_bytes=10**6, chunks_read=chunks_read)
    assert caught.value.status_code == 415
    assert len(chunks_read) < 12  # decided from the first 8 kB, not the whole 50 kB
    assert not (tmp_path / "in").exists()


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"raw bytes", "application/octet-stream", "multipart/form-data"),
        (
            _multipart(b"\x89PNG\r\n\x1a\n", field="other")[0],
            _multipart(b"")[1],
            "no form field named 'file'",
        ),
        (_multipart(b"")[0], _multipart(b"")[1], "is empty"),
    ],
)
def test_requests_without_a_usable_file_are_refused(
    tmp_path: Path, body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(UploadRejected, match=message) as caught:
        _receive(body, content_type, tmp_path / "in", max_bytes=10**6)
    assert caught.value.status_code == 400
    assert not (tmp_path / "in").exists()


def _zip(tmp_path: Path, members: dict[str, bytes], *, link: str | None = None) -> Path:
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("members", "link", "message"),
    [
        ({"../evil.dcm": b"x"}, None, "absolute path or '..'"),
        ({"series/../../evil.dcm": b"x"}, None, "absolute path or '..'"),
        ({"/etc/cron.d/evil": b"x"}, None, "absolute path or '..'"),
        ({"C:/Windows/evil.dcm": b"x"}, None, "absolute path or '..'"),
        ({"..\\evil.dcm": b"x"}, None, "absolute path or '..'"),
        ({"a.dcm": b"x"}, "b.dcm", "is a link"),
        ({"folder/": b""}, None, "holds no files"),
    ],
)
def test_zip_members_that_could_escape_are_refused(
    tmp_path: Path, members: dict[str, bytes], link: str | None, message: str
) -> None:
    with pytest.raises(UploadRejected, match=message) as caught:
        check_zip(_zip(tmp_path, members, link=link), max_unpacked_bytes=10**6)
    assert caught.value.status_code == 400


def test_zip_unpacking_too_large_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", bytes(2_000_000))
    assert path.stat().st_size < 20_000
    with pytest.raises(UploadRejected) as caught:
        check_zip(path, max_unpacked_bytes=1_000_000)
    assert caught.value.status_code == 413


def test_damaged_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + b"garbage" * 10)
    with pytest.raises(UploadRejected, match="damaged") as caught:
        check_zip(path, max_unpacked_bytes=10**6)
    assert caught.value.status_code == 400


def test_zip_is_unpacked_flat_under_numbered_names(tmp_path: Path) -> None:
    path = _zip(tmp_path, {"study/series/IM1": b"one", "study/series/IM2": b"two", "study/": b""})
    check_zip(path, max_unpacked_bytes=10**6)
    folder = unpack_zip(path, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.dcm", "00001.dcm"]
    assert {p.read_bytes() for p in folder.iterdir()} == {b"one", b"two"}


def test_result_suffix_keeps_the_input_format_where_labels_fit() -> None:
    assert UploadKind.NIFTI_GZ.result_suffix == ".nii.gz"
    assert UploadKind.METAIMAGE.result_suffix == ".mha"
    assert UploadKind.JPEG.result_suffix == ".png"
    assert UploadKind.DICOM_ZIP.result_suffix == ".nii.gz"
