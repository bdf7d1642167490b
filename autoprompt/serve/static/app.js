// autoprompt web page: upload a scan, follow its job, view and download the result, box mode.
// The job id lives in the URL (?job=ID) and in localStorage, so a reload finds the job again.
"use strict";

const STORAGE_KEY = "autoprompt.job";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

const state = { model: null, jobId: null, job: null, slice: 0, pollTimer: null, boxMode: false, drag: null };

function api(path) {
  return `/api/jobs/${encodeURIComponent(state.jobId)}${path}`;
}

async function loadModel() {
  const response = await fetch("/api/model");
  state.model = await response.json();
  const m = state.model;
  $("model-line").textContent =
    `model ${m.model_folder} · ${m.dataset} · ${m.configuration} · folds ${m.folds.join(", ")} · ` +
    `${m.backbone} · uploads up to ${m.max_upload_mb} MB`;
}

// ---- upload ---------------------------------------------------------------------------------
function chooseFile(file) {
  const input = $("file-input");
  if (file && input.files[0] !== file) {
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
  }
  const chosen = input.files[0];
  $("chosen-file").textContent = chosen ? `${chosen.name} (${(chosen.size / 2 ** 20).toFixed(1)} MB)` : "";
  $("upload-button").disabled = !chosen;
  $("upload-error").hidden = true;
}

function upload(event) {
  event.preventDefault();
  const file = $("file-input").files[0];
  if (!file) return;
  if (state.model && file.size > state.model.max_upload_mb * 2 ** 20) {
    showUploadError(`${file.name} is larger than the limit of ${state.model.max_upload_mb} MB`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const request = new XMLHttpRequest();
  const bar = $("upload-progress");
  bar.hidden = false;
  bar.value = 0;
  $("upload-button").disabled = true;
  request.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  request.onload = () => {
    bar.hidden = true;
    $("upload-button").disabled = false;
    const body = JSON.parse(request.responseText || "{}");
    if (request.status === 201) {
      openJob(body.id);
    } else {
      showUploadError(body.detail || `upload failed (HTTP ${request.status})`);
    }
  };
  request.onerror = () => {
    bar.hidden = true;
    $("upload-button").disabled = false;
    showUploadError("the upload was interrupted; check the file size and try again");
  };
  request.open("POST", "/api/jobs");
  request.send(form);
}

function showUploadError(message) {
  $("upload-error").textContent = message;
  $("upload-error").hidden = false;
}

// ---- job ------------------------------------------------------------------------------------
function openJob(jobId) {
  state.jobId = jobId;
  state.job = null;
  localStorage.setItem(STORAGE_KEY, jobId);
  const url = new URL(window.location);
  url.searchParams.set("job", jobId);
  history.replaceState(null, "", url);
  $("upload-panel").hidden = true;
  $("job-panel").hidden = false;
  $("result-panel").hidden = true;
  $("job-title").textContent = "Job";
  poll();
}

function forgetJob() {
  clearTimeout(state.pollTimer);
  state.jobId = null;
  state.job = null;
  localStorage.removeItem(STORAGE_KEY);
  const url = new URL(window.location);
  url.searchParams.delete("job");
  history.replaceState(null, "", url);
  setBoxMode(false);
  $("job-panel").hidden = true;
  $("result-panel").hidden = true;
  $("upload-panel").hidden = false;
  $("file-input").value = "";
  chooseFile(null);
}

async function poll() {
  clearTimeout(state.pollTimer);
  const jobId = state.jobId;
  if (!jobId) return;
  let response;
  try {
    response = await fetch(api(""));
  } catch {
    state.pollTimer = setTimeout(poll, POLL_MS * 3);
    return;
  }
  if (jobId !== state.jobId) return;
  if (response.status === 404) {
    forgetJob();
    showUploadError("that job no longer exists (expired or deleted); upload the scan again");
    return;
  }
  const job = await response.json();
  showJob(job);
  if (job.state === "queued" || job.state === "running") {
    state.pollTimer = setTimeout(poll, POLL_MS);
  }
}

function showJob(job) {
  const first = state.job === null || state.job.state !== job.state;
  state.job = job;
  $("job-title").textContent = job.filename;
  const badge = $("job-state");
  badge.textContent = job.state;
  badge.className = `badge ${job.state}`;
  $("job-progress").value = job.progress;
  $("job-progress").hidden = job.state === "done" || job.state === "failed";
  const elapsed = Math.max(0, (job.updated - job.created)).toFixed(0);
  $("job-stage").textContent = job.state === "done" ? "" : `${job.stage} (${elapsed} s since upload)`;
  $("job-error").hidden = job.state !== "failed";
  $("job-error").textContent = job.error || "";
  if (job.state === "done" && first) showResult(job.result);
}

async function deleteJob() {
  if (!state.jobId) return;
  await fetch(api(""), { method: "DELETE" });
  forgetJob();
}

// ---- result ---------------------------------------------------------------------------------
function showResult(result) {
  $("result-panel").hidden = false;
  const slider = $("slice-slider");
  slider.max = result.shape[0] - 1;
  state.slice = Math.floor(result.shape[0] / 2);
  slider.value = state.slice;
  slider.disabled = result.shape[0] === 1;
  const is3d = result.ndim === 3;
  $("measure-head").textContent = is3d ? "volume (mL)" : "area (mm²)";
  const body = $("legend").querySelector("tbody");
  body.replaceChildren(
    ...result.classes.map((c) => {
      const row = document.createElement("tr");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = c.color;
      const cells = [swatch, c.name, is3d ? c.volume_ml.toFixed(2) : c.area_mm2.toFixed(1)];
      for (const content of cells) {
        const cell = document.createElement("td");
        cell.append(content);
        row.append(cell);
      }
      return row;
    })
  );
  const labels = $("download-labels");
  labels.href = api("/result");
  labels.textContent = `label map (${result.download_name})`;
  $("result-time").textContent = `segmented in ${result.seconds.toFixed(1)} s`;
  showSlice();
  if (result.box) showBoxDownload(result.box);
}

function showSlice() {
  $("slice-label").textContent = `${state.slice} / ${state.job.result.shape[0] - 1}`;
  const which = $("overlay-toggle").checked ? "overlay.png" : "image.png";
  $("slice-image").src = api(`/${which}?slice=${state.slice}`);
  $("download-png").href = api(`/overlay.png?slice=${state.slice}&download=true`);
  $("box-info").hidden = true;
}

function stepSlice(delta) {
  const slider = $("slice-slider");
  const next = Math.min(Number(slider.max), Math.max(0, state.slice + delta));
  if (next !== state.slice) {
    slider.value = next;
    state.slice = next;
    showSlice();
  }
}

// ---- box mode -------------------------------------------------------------------------------
function setBoxMode(on) {
  state.boxMode = on;
  $("box-button").setAttribute("aria-pressed", String(on));
  $("box-canvas").hidden = !on;
  $("box-hint").hidden = !on;
  if (on) sizeCanvas();
  else if (state.job && state.job.result) showSlice();
}

function sizeCanvas() {
  const image = $("slice-image");
  const canvas = $("box-canvas");
  canvas.width = image.clientWidth;
  canvas.height = image.clientHeight;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function canvasPoint(event) {
  const rect = $("box-canvas").getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

function drawDrag() {
  const canvas = $("box-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const [x1, y1, x2, y2] = state.drag;
  context.strokeStyle = "#00e5ff";
  context.lineWidth = 2;
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

async function finishBox() {
  const [ax, ay, bx, by] = state.drag;
  state.drag = null;
  const canvas = $("box-canvas");
  const [, rows, cols] = state.job.result.shape;
  const sx = cols / canvas.clientWidth;
  const sy = rows / canvas.clientHeight;
  const clampX = (v) => Math.min(cols, Math.max(0, v * sx));
  const clampY = (v) => Math.min(rows, Math.max(0, v * sy));
  const box = [clampX(Math.min(ax, bx)), clampY(Math.min(ay, by)), clampX(Math.max(ax, bx)), clampY(Math.max(ay, by))];
  if (box[2] - box[0] < 1 || box[3] - box[1] < 1) return;
  $("box-info").hidden = false;
  $("box-info").textContent = "segmenting the boxed object…";
  const response = await fetch(api("/box"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ slice: state.slice, box: box.map((v) => Math.round(v * 10) / 10) }),
  });
  const body = await response.json();
  if (!response.ok) {
    $("box-info").textContent = typeof body.detail === "string" ? body.detail : "the box could not be segmented";
    return;
  }
  sizeCanvas();
  showBoxResult(body);
}

function showBoxResult(box) {
  $("slice-image").src = api(`/box.png?t=${Date.now()}`);
  const info = $("box-info");
  info.hidden = false;
  info.textContent = `boxed object on slice ${box.slice}: ${box.pixels} pixels, ${box.area_mm2.toFixed(1)} mm²`;
  showBoxDownload(box);
}

function showBoxDownload(box) {
  $("download-box").href = api("/box/result");
  $("download-box").textContent = `box mask (${box.download_name})`;
  $("download-box-item").hidden = false;
}

// ---- wiring ---------------------------------------------------------------------------------
function wire() {
  $("file-input").addEventListener("change", () => chooseFile(null));
  $("upload-form").addEventListener("submit", upload);
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  $("new-button").addEventListener("click", forgetJob);
  $("delete-button").addEventListener("click", deleteJob);
  $("slice-slider").addEventListener("input", (e) => { state.slice = Number(e.target.value); showSlice(); });
  $("overlay-toggle").addEventListener("change", showSlice);
  $("stage").addEventListener("wheel", (e) => { e.preventDefault(); stepSlice(Math.sign(e.deltaY)); }, { passive: false });
  $("box-button").addEventListener("click", () => setBoxMode(!state.boxMode));
  $("slice-image").addEventListener("load", () => { if (state.boxMode) sizeCanvas(); });
  const canvas = $("box-canvas");
  canvas.addEventListener("pointerdown", (e) => {
    const [x, y] = canvasPoint(e);
    state.drag = [x, y, x, y];
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!state.drag) return;
    [state.drag[2], state.drag[3]] = canvasPoint(e);
    drawDrag();
  });
  canvas.addEventListener("pointerup", () => { if (state.drag) finishBox(); });
}

async function start() {
  wire();
  await loadModel();
  const fromUrl = new URL(window.location).searchParams.get("job");
  const jobId = fromUrl || localStorage.getItem(STORAGE_KEY);
  if (jobId) openJob(jobId);
}

start();
