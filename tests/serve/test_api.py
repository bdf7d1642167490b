"""The HTTP API with FastAPI's TestClient against a tiny model folder."""

from __future__ import annotations

import asyncio
import gc
import io
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from PIL import Image

from autoprompt.serve import ServeSettings, create_app
from autoprompt.serve.engine import Engine
from autoprompt.serve.jobs import JobState, JobStore, is_job_id
from autoprompt.serve.worker import JobQueue
from pipeline.io import read_image
from tests.serve.conftest import WORKER_START_S, wait_for_job, write_scan


def _upload(client: TestClient, path: Path, name: str | None = None):
    return client.post("/api/jobs", files={"file": (name or path.name, path.read_bytes())})


def _job_files(client: TestClient, job_id: str) -> list[str]:
    folder = client.app.state.store.folder(job_id)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_nifti_upload_gives_a_label_map_in_the_input_geometry(client: TestClient, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "heart scan.nii.gz", shape=(4, 48, 40))
    response = _upload(client, scan)
    assert response.status_code == 201
    job_id = response.json()["id"]
    assert is_job_id(job_id) and response.json()["state"] == "queued"

    seen_running = False  # the server answers while the job's prediction runs in the worker process
    status = client.get(f"/api/jobs/{job_id}").json()
    while status["state"] in ("queued", "running"):
        if status["stage"] == "segmenting":
            seen_running = True
            health = client.get("/api/health").json()
            assert health["status"] == "ok" and health["model"] == "ready"
        time.sleep(0.05)
        status = client.get(f"/api/jobs/{job_id}").json()
    status = wait_for_job(client, job_id)
    assert status["state"] == "done", status["error"]
    assert seen_running

    download = client.get(f"/api/jobs/{job_id}/result")
    assert download.status_code == 200
    assert "heart%20scan_seg.nii.gz" in download.headers["content-disposition"]
    result_file = tmp_path / "result.nii.gz"
    result_file.write_bytes(download.content)
    labels, geometry = read_image(result_file)
    _, input_geometry = read_image(scan)
    assert geometry.matches(input_geometry)
    assert geometry.direction == input_geometry.direction
    assert set(np.unique(labels)) <= {0, 1, 2}

    result = status["result"]
    assert result["shape"] == [4, 48, 40] and result["ndim"] == 3
    voxel_ml = 0.8 * 0.7 * 3.0 / 1000.0
    for measure, name in zip(result["classes"], ("class1", "class2"), strict=True):
        assert measure["name"] == name
        assert measure["voxels"] == int((labels == measure["label"]).sum())
        assert abs(measure["volume_ml"] - measure["voxels"] * voxel_ml) < 1e-3

    overlay = client.get(f"/api/jobs/{job_id}/overlay.png", params={"slice": 1})
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (366, 384)  # 40 x 0.8 mm wide, 48 x 0.7 mm tall
    plain = client.get(f"/api/jobs/{job_id}/image.png", params={"slice": 3})
    assert plain.status_code == 200 and plain.content[:8] == b"\x89PNG\r\n\x1a\n"
    attached = client.get(f"/api/jobs/{job_id}/overlay.png", params={"slice": 2, "download": True})
    assert 'filename="heart scan_slice2_overlay.png"' in attached.headers["content-disposition"]
    assert client.get(f"/api/jobs/{job_id}/overlay.png", params={"slice": 4}).status_code == 400
    assert _job_files(client, job_id) == [
        "job.json",
        "result/image.npy",
        "result/labels.nii.gz",
        "result/labels.npy",
    ]


def test_other_formats_come_back_in_their_own_format(client: TestClient, tmp_path: Path) -> None:
    mha = write_scan(tmp_path / "scan.mha", shape=(2, 40, 36), seed=1)
    png = write_scan(tmp_path / "photo.png", shape=(50, 60), seed=2)
    jpeg = tmp_path / "photo.jpg"
    Image.open(png).save(jpeg, quality=95)
    jobs = {
        name: _upload(client, path).json()["id"] for name, path in (("mha", mha), ("png", png), ("jpg", jpeg))
    }

    status = wait_for_job(client, jobs["mha"])
    assert status["state"] == "done", status["error"]
    (tmp_path / "out.mha").write_bytes(client.get(f"/api/jobs/{jobs['mha']}/result").content)
    assert read_image(tmp_path / "out.mha")[1].matches(read_image(mha)[1])

    for name in ("png", "jpg"):
        status = wait_for_job(client, jobs[name])
        assert status["state"] == "done", status["error"]
        assert status["result"]["ndim"] == 2 and status["result"]["shape"] == [1, 50, 60]
        assert all(c["area_mm2"] is not None and c["volume_ml"] is None for c in status["result"]["classes"])
        download = client.get(f"/api/jobs/{jobs[name]}/result")
        assert download.content[:8] == b"\x89PNG\r\n\x1a\n"  # labels stay lossless for a JPEG input
        assert "photo_seg.png" in download.headers["content-disposition"]
        assert Image.open(io.BytesIO(download.content)).size == (60, 50)


def _dicom_series(folder: Path, volume: sitk.Image) -> None:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.77")
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0013", str(z))
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(slice_)


def _dicom_zip(tmp_path: Path) -> Path:
    """``series.zip``: a 3 x 40 x 44 DICOM series in ``study/series/``; the series folder stays next to it."""
    volume = sitk.ReadImage(str(write_scan(tmp_path / "v.nii.gz", shape=(3, 40, 44), seed=3)))
    volume.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    _dicom_series(tmp_path / "study" / "series", volume)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((tmp_path / "study").rglob("*")):
            zipped.write(path, path.relative_to(tmp_path))
    return archive


def test_dicom_zip_gives_nifti_in_the_series_geometry(client: TestClient, tmp_path: Path) -> None:
    archive = _dicom_zip(tmp_path)
    status = wait_for_job(client, _upload(client, archive).json()["id"])
    assert status["state"] == "done", status["error"]
    assert status["result"]["download_name"] == "series_seg.nii.gz"
    (tmp_path / "out.nii.gz").write_bytes(client.get(f"/api/jobs/{status['id']}/result").content)
    assert read_image(tmp_path / "out.nii.gz")[1].matches(read_image(tmp_path / "study" / "series")[1])


def test_an_unpacked_upload_is_removed_outside_the_event_loop(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DICOM zip unpacks to up to 4x the upload limit; deleting that must not stall ``/api/health``."""
    removals: list[tuple[Path, bool]] = []
    rmtree = shutil.rmtree

    def watched_rmtree(path: str | Path, *args: object, **kwargs: object) -> None:
        try:
            asyncio.get_running_loop()
            in_event_loop = True
        except RuntimeError:
            in_event_loop = False
        removals.append((Path(path), in_event_loop))
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    response = _upload(client, _dicom_zip(tmp_path))
    assert response.status_code == 201, response.text
    wait_for_job(client, response.json()["id"])
    incoming = client.app.state.store.incoming_dir
    uploads = [(path, in_loop) for path, in_loop in removals if path.parent == incoming]
    assert uploads, removals  # the received upload's folder (with the unpacked series) was removed
    assert not any(in_loop for _, in_loop in uploads)
    assert list(incoming.iterdir()) == []


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _recorded(call: Callable, name: str, calls: list[tuple[str, bool]]) -> Callable:
    """``call``, noting in ``calls`` its ``name`` and whether it ran on an event loop."""

    def recorded(*args: object, **kwargs: object) -> object:
        calls.append((name, _in_event_loop()))
        return call(*args, **kwargs)

    return recorded


def test_upload_checks_and_job_reads_run_outside_the_event_loop(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's header, the disk bound and job.json are file work: on the event loop they would stall
    ``/api/health``."""
    calls: list[tuple[str, bool]] = []
    engine, store = client.app.state.engine, client.app.state.store
    for owner, name in ((engine, "check_case"), (store, "disk_usage"), (store, "create"), (store, "get")):
        monkeypatch.setattr(owner, name, _recorded(getattr(owner, name), name, calls))
    response = _upload(client, write_scan(tmp_path / "a.png", shape=(30, 30)))
    assert response.status_code == 201, response.text
    wait_for_job(client, response.json()["id"])  # GET /api/jobs/{id}: job.json
    assert {name for name, _ in calls} == {"check_case", "disk_usage", "create", "get"}
    assert [name for name, in_loop in calls if in_loop] == []


def test_the_start_up_heap_is_frozen_out_of_the_garbage_collector(
    settings: ServeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection walks every tracked object while requests wait; the objects alive after start-up
    (torch, numpy, the app) are frozen out of it."""
    monkeypatch.setattr(JobQueue, "start", lambda self: None)  # the server's start-up alone, no worker
    app = create_app(replace(settings, data_dir=tmp_path / "data"))
    engine = app.state.engine

    def collectable() -> bool:
        return any(tracked is engine for tracked in gc.get_objects())

    assert gc.is_tracked(engine) and collectable()
    with TestClient(app) as started:
        assert not collectable()  # in the permanent generation
        assert started.get("/api/health").json()["model"] == "loading"


def test_refused_uploads_leave_nothing_stored(client: TestClient, tmp_path: Path) -> None:
    store: JobStore = client.app.state.store
    before = sorted(p.name for p in store.jobs_dir.iterdir())
    too_big = client.post("/api/jobs", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20))})
    assert too_big.status_code == 413 and "limit of 1 MB" in too_big.json()["detail"]
    text = client.post("/api/jobs", files={"file": ("scan.nii.gz", b"patient name, date of birth\n" * 20)})
    assert text.status_code == 415 and text.json()["detail"].startswith("scan.nii.gz: not a supported scan")
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("series/IM0001.dcm", b"x")
        archive.writestr("../../../etc/cron.d/evil", b"x")
    zip_slip = _upload(client, slip)
    assert zip_slip.status_code == 400
    assert zip_slip.json()["detail"].startswith(
        "slip.zip: member '../../../etc/cron.d/evil' has an absolute path"
    )
    assert client.post("/api/jobs", content=b"raw", headers={"content-type": "text/plain"}).status_code == 400
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == before
    assert list(store.incoming_dir.iterdir()) == []


def test_unknown_and_malformed_job_ids_get_404(client: TestClient) -> None:
    for job_id in ("AAAAAAAAAAAAAAAAAAAAAA", "..%2F..%2Fetc", "x"):
        for path in ("", "/result", "/overlay.png", "/image.png", "/box.png", "/box/result"):
            assert client.get(f"/api/jobs/{job_id}{path}").status_code == 404, (job_id, path)
        assert client.delete(f"/api/jobs/{job_id}").status_code == 404
        assert (
            client.post(f"/api/jobs/{job_id}/box", json={"slice": 0, "box": [1, 1, 5, 5]}).status_code == 404
        )


def test_failed_job_reports_its_error_and_keeps_only_its_state(client: TestClient, tmp_path: Path) -> None:
    scan = tmp_path / "cine.nii.gz"  # a 4D cine series: a user's mistake found when the job reads it
    sitk.WriteImage(
        sitk.GetImageFromArray(np.ones((2, 3, 16, 16), dtype=np.int16), isVector=False), str(scan)
    )
    status = wait_for_job(client, _upload(client, scan).json()["id"])
    assert status["state"] == "failed"
    assert status["error"].startswith("cine.nii.gz: 4D images are not supported")
    assert str(client.app.state.store.root) not in status["error"]
    assert _job_files(client, status["id"]) == ["job.json"]
    assert client.get(f"/api/jobs/{status['id']}/result").status_code == 409


def test_delete_removes_the_job(client: TestClient, tmp_path: Path) -> None:
    job_id = _upload(client, write_scan(tmp_path / "a.png", shape=(30, 30))).json()["id"]
    wait_for_job(client, job_id)
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert not client.app.state.store.folder(job_id).exists()


def test_box_mode_segments_a_boxed_object_in_the_input_geometry(client: TestClient, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "box.nii.gz", shape=(2, 48, 40), seed=4)
    job_id = _upload(client, scan).json()["id"]
    assert client.post(f"/api/jobs/{job_id}/box", json={"slice": 0, "box": [1, 1, 9, 9]}).status_code in (
        200,
        409,
    )
    assert wait_for_job(client, job_id)["state"] == "done"
    answer = client.post(f"/api/jobs/{job_id}/box", json={"slice": 1, "box": [5, 8, 30, 40]})
    assert answer.status_code == 200, answer.text
    box = answer.json()
    assert box["slice"] == 1 and box["download_name"] == "box_box.nii.gz"
    assert abs(box["area_mm2"] - box["pixels"] * 0.8 * 0.7) < 0.01
    assert client.get(f"/api/jobs/{job_id}/box.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "mask.nii.gz").write_bytes(client.get(f"/api/jobs/{job_id}/box/result").content)
    mask, geometry = read_image(tmp_path / "mask.nii.gz")
    assert geometry.matches(read_image(scan)[1])
    assert int(mask[1].sum()) == box["pixels"] and int(mask[0].sum()) == 0
    assert client.get(f"/api/jobs/{job_id}").json()["result"]["box"] == box
    outside = client.post(f"/api/jobs/{job_id}/box", json={"slice": 1, "box": [5, 8, 300, 40]})
    assert outside.status_code == 400 and "outside" in outside.json()["detail"]
    assert client.post(f"/api/jobs/{job_id}/box", json={"slice": 1, "box": [1, 2]}).status_code == 422


def test_model_health_and_openapi_describe_the_service(client: TestClient) -> None:
    model = client.get("/api/model").json()
    assert model["dataset"] == "Dataset901_Synthetic" and model["backbone"] == "tiny"
    assert model["folds"] == ["0"] and [c["name"] for c in model["classes"]] == ["class1", "class2"]
    assert client.get("/api/health").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/result",
        "/api/jobs/{job_id}/overlay.png",
    ):
        assert path in paths
    assert "multipart/form-data" in paths["/api/jobs"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>autoprompt</title>" in page.text
    for asset in ("/static/app.js", "/static/style.css"):  # package data, served through importlib
        assert client.get(asset).status_code == 200 and asset.removeprefix("/") in page.text
    # nothing the service serves needs the internet: no CDN-backed Swagger/ReDoc pages, no external scripts
    assert client.get("/docs").status_code == client.get("/redoc").status_code == 404
    assert "https://" not in page.text and "http://" not in page.text


def test_jobs_left_by_a_stopped_server_are_run_after_a_restart(client: TestClient, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "data")
    (tmp_path / "incoming").mkdir()
    upload = write_scan(tmp_path / "incoming" / "scan.nii.gz", shape=(2, 32, 32))
    job = store.create(upload=upload, filename="left.nii.gz", kind=".nii.gz")
    store.update(job.id, state=JobState.RUNNING, stage="segmenting")  # the server died during this job
    queue = JobQueue(store, client.app.state.engine, workers=1)
    queue.start()  # a new server on the same data folder (its worker process loads the model)
    queue.stop(timeout=WORKER_START_S)  # the stop signal waits for the new worker and the re-queued job
    assert store.get(job.id).state is JobState.DONE


def test_cleanup_deletes_only_finished_jobs_past_their_time(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    ids = []
    for state in (JobState.DONE, JobState.FAILED, JobState.QUEUED):
        (tmp_path / "up").mkdir(exist_ok=True)
        upload = tmp_path / "up" / "scan.png"
        upload.write_bytes(b"x")
        job = store.create(upload=upload, filename="a.png", kind=".png")
        store.update(job.id, state=state)
        ids.append(job.id)
    assert store.cleanup(max_age_s=3600) == []
    stale = store.get(ids[0]).updated + 3601
    assert sorted(store.cleanup(max_age_s=3600, now=stale)) == sorted(ids[:2])
    assert [job.id for job in store.all()] == [ids[2]]


def test_decoding_overrides_reach_the_model_and_are_reported(settings: ServeSettings) -> None:
    engine = Engine(replace(settings, decoding={"box_refinement": 0, "presence_floor": 0.1}))
    assert engine.info()["decoding"] == {"box_refinement": 0, "presence_floor": 0.1}
    model = engine.predictor().models[0]
    assert (model.box_refinement, model.presence_floor) == (0, 0.1)
    assert Engine(settings).info()["decoding"] == {}
