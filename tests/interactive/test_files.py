"""``segment`` and ``embed`` on files and through the CLI: geometry, shapes, sidecars and user mistakes.

These use the tiny random backbone: they check the plumbing, not the masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprompt.cli import main
from autoprompt.interactive.embedding import embed, embedding_sidecar_path
from autoprompt.interactive.images import LoadedImage
from autoprompt.interactive.predictor import InteractivePredictor, ModelOptions
from autoprompt.interactive.segment import segment
from autoprompt.modeling.backbone import SamBackbone
from pipeline.io import read_image


def test_segment_slice_of_volume_keeps_geometry(tiny: SamBackbone, volume_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "mask.nii.gz"
    mask = segment(
        volume_file,
        box=(12, 10, 36, 30),
        slice_index=2,
        output=output,
        model=ModelOptions(tiny, device="cpu"),
    )
    written, geometry = read_image(output)
    assert geometry.matches(read_image(volume_file)[1])
    assert written.shape == mask.shape == (3, 40, 48) and written.dtype == np.uint8
    np.testing.assert_array_equal(written, mask)
    assert set(np.unique(mask)) <= {0, 1}
    assert not np.delete(mask, 2, axis=0).any()


def test_segment_png_through_cli(volume_file: Path, png_file: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "mask.png"
    args = ["segment", str(png_file), "--box", "20", "15", "50", "35", "--points", "30", "25", "1"]
    assert main([*args, "-o", str(output), "--backbone", "tiny", "--device", "cpu"]) == 0
    assert str(output) in capsys.readouterr().out
    written, geometry = read_image(output)
    assert geometry.matches(read_image(png_file)[1]) and written.shape == (50, 70)


def test_embed_volume_writes_array_and_sidecar(tiny: SamBackbone, volume_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "emb.npy"
    embeddings = embed(
        volume_file, output=output, model=ModelOptions(tiny, device="cpu", precision="fp32"), batch_size=2
    )
    assert embeddings.shape == (3, 256, 64, 64) and embeddings.dtype == np.float16
    sidecar = json.loads(embedding_sidecar_path(output).read_text())
    assert sidecar["slice_indices"] == [0, 1, 2]
    assert sidecar["shape"] == [3, 256, 64, 64] and sidecar["dtype"] == "float16"
    assert sidecar["backbone"] == "tiny" and sidecar["checksum"] == tiny.checksum
    assert sidecar["source"] == str(volume_file.resolve()) and sidecar["image_shape"] == [3, 40, 48]
    assert sidecar["preprocessing"]["resized_size"] == [213, 256]
    # the stored embedding of slice 2 (second batch) is what the predictor computes for that slice
    loaded = LoadedImage.of(volume_file)
    predictor = InteractivePredictor(tiny, device="cpu", precision="fp32")
    predictor.set_image(loaded.array[2], intensity_range=loaded.intensity_range)
    expected = predictor.embedding[0].numpy()
    np.testing.assert_allclose(
        embeddings[2].astype(np.float32), expected, rtol=1e-2, atol=2e-3 * np.abs(expected).max()
    )


def test_embed_one_slice_and_png_through_cli(volume_file: Path, png_file: Path, tmp_path: Path) -> None:
    common = ["--backbone", "tiny", "--device", "cpu"]
    one_slice = [
        "embed",
        str(volume_file),
        "--slice",
        "1",
        "--dtype",
        "float32",
        "-o",
        str(tmp_path / "s.npy"),
    ]
    assert main([*one_slice, *common]) == 0
    one = np.load(tmp_path / "s.npy")
    assert one.shape == (1, 256, 64, 64) and one.dtype == np.float32
    assert json.loads((tmp_path / "s.json").read_text())["slice_indices"] == [1]
    assert main(["embed", str(png_file), "-o", str(tmp_path / "p.npy"), *common]) == 0
    assert np.load(tmp_path / "p.npy").shape == (1, 256, 64, 64)
    sidecar = json.loads((tmp_path / "p.json").read_text())
    assert sidecar["slice_indices"] is None
    assert sidecar["preprocessing"]["intensity_range"] is None  # an 8-bit picture is min-max scaled only


@pytest.mark.parametrize(
    ("image", "args", "message"),
    [
        ("png", ["--box", "1", "1", "9", "9", "--slice", "0"], "image is 2D; leave out --slice"),
        (
            "volume",
            ["--box", "1", "1", "9", "9"],
            "3D with 3 slices; give the slice with --slice Z, or a 3D box",
        ),
        (
            "volume",
            ["--box", "1", "1", "9", "9", "--slice", "3"],
            "--slice 3 is out of range; the image has slices 0..2",
        ),
        ("volume", ["--box", "1", "1", "49", "9", "--slice", "1"], "lies outside the 48 x 40 image"),
        ("volume", ["--slice", "1"], "no prompt given"),
        (
            "volume",
            ["--box3d", "1", "1", "0", "9", "9", "2", "--slice", "1"],
            "leave out --box, --points and --slice",
        ),
        ("volume", ["--box3d", "1", "1", "2", "9", "9", "1"], "give whole slice numbers with Z1 <= Z2"),
        ("png", ["--box3d", "1", "1", "0", "9", "9", "1"], "--box3d needs a 3D image"),
        ("volume", ["--box", "1", "1", "9", "9", "--slice", "1", "--points", "3", "3"], "triples X Y LABEL"),
        (
            "volume",
            ["--box", "1", "1", "9", "9", "--slice", "1", "--precision", "fp16", "--device", "cpu"],
            "fp16",
        ),
    ],
)
def test_segment_mistakes_exit_2_without_output(
    image: str, args: list[str], message: str, volume_file: Path, png_file: Path, tmp_path: Path, capsys
) -> None:
    path = png_file if image == "png" else volume_file
    output = tmp_path / "mask.nii.gz"
    assert main(["segment", str(path), *args, "-o", str(output), "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not output.exists()


def test_output_names_are_checked_before_any_work(volume_file: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "segment",
                str(volume_file),
                "--slice",
                "1",
                "--box",
                "1",
                "1",
                "9",
                "9",
                "-o",
                str(tmp_path / "m.png"),
            ]
        )
        == 2
    )
    assert "a 3D mask does not fit in .png; write .nii.gz" in capsys.readouterr().err
    assert main(["embed", str(volume_file), "-o", str(tmp_path / "e.npz"), "--backbone", "tiny"]) == 2
    assert "give -o NAME.npy" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [volume_file]
