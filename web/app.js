// The page: a client of bgm.js, as the command line is a client of the Python library.
// A camera or a video file is read frame by frame into the model's size (letterboxed, as
// `bgm-export matte` does), matted against a captured background and composited.
//
// URL parameters: model (default model.onnx; a path on this page's own origin only),
// backend (auto | wasm | webgpu), source=camera
// (start the camera at once), load=0 (load no model: for pages that only import bgm.js),
// debug=1 (keep the background's frames and the last frame read in window.bgmPage, and let
// bgmPage.record(N) keep the next N frames read and their composites: for tests).
import { createMatting, MattingError } from "./bgm.js";

const params = new URLSearchParams(location.search);
const BACKENDS = ["auto", "wasm", "webgpu"];
// The most frames kept for inspection, and the most a background median takes (as
// `matte --bgr first:N`'s limit): each is a frame held in memory.
const DEBUG = params.get("debug") === "1";
const RECORD_LIMIT = 32;
const MAX_BACKGROUND_FRAMES = 60;
// Two sizes show the same view when their aspects differ by at most this (exporter/images.py, ASPECT_SLACK).
const ASPECT_SLACK = 0.01;
// Frames/s is the rate over this many frames.
const FPS_WINDOW = 10;

const $ = (id) => document.getElementById(id);
const video = $("video");
const output = $("output");
const outCtx = output.getContext("2d");
const frameCanvas = document.createElement("canvas");
const frameCtx = frameCanvas.getContext("2d", { willReadFrequently: true });
const targetCanvas = document.createElement("canvas");
const targetCtx = targetCanvas.getContext("2d", { willReadFrequently: true });

/** What the page has done, for people (the messages) and for tests (everything). */
const state = {
  ready: false,
  info: null,
  messages: [],
  frames: 0,
  fps: 0,
  source: null,
  background: null,
  backgroundFrames: [],
  records: [],
  recordLimit: 0,
  lastFrame: null,
  error: null,
};
if (DEBUG) {
  state.record = (count) => {
    state.records = [];
    state.recordLimit = Math.max(0, Math.min(count, RECORD_LIMIT));
  };
}
window.bgmPage = state;

let matting = null;
let background = null;
let collecting = null; // { want, frames } while a background is being captured
let targetImage = null;
let running = false;
let times = [];

function say(code, text, level = "error") {
  clear(code);
  state.messages.push({ code, text, level });
  const p = document.createElement("p");
  p.className = level;
  p.dataset.code = code;
  p.textContent = text;
  $("messages").append(p);
}

function clear(code) {
  state.messages = state.messages.filter((m) => m.code !== code);
  for (const p of $("messages").querySelectorAll(`[data-code="${code}"]`)) p.remove();
}

function status(text) {
  $("state").textContent = text;
}

const MODEL_MESSAGES = {
  "model-unreadable": (e) => `The model could not be loaded: ${e.message}.`,
  "not-bgm-artifact": (e) => `This model is not a bgm-export artifact. ${e.message}.`,
  "dynamic-model": (e) => `This model cannot run here: ${e.message}.`,
  "runtime-missing": (e) => `This site is incomplete: ${e.message}.`,
  "bad-input": (e) => `The page asked for something the module refuses: ${e.message}.`,
  runtime: (e) => `ONNX Runtime Web failed to load the model: ${e.message}`,
};

/** The model's URL from the page's parameter: resolved against the page and on its own origin
 * (frames and models never involve another site), or null with a message saying why not. */
function modelUrl() {
  const given = params.get("model");
  if (!given) return "model.onnx";
  let url = null;
  try {
    url = new URL(given, location.href);
  } catch {
    // not a URL at all: refused below
  }
  if (url && url.origin === location.origin) return url.href;
  say(
    "model-parameter",
    `The page's parameter model=${given} is refused: this page loads models from its own site only ` +
      `(${location.origin}). Give a path on it, such as model=model.onnx.`,
  );
  return null;
}

/** The page's backend parameter, if it is one the page knows; else null with a message. */
function backendParameter() {
  const given = params.get("backend");
  if (given === null || BACKENDS.includes(given)) return given;
  say(
    "backend-parameter",
    `The page's parameter backend=${given} is not one of ${BACKENDS.join(", ")}: fix the address, ` +
      "or leave the parameter out for auto.",
  );
  return null;
}

async function loadModel(backend) {
  if (modelURL === null) return; // a refused parameter: its message stays
  state.ready = false;
  if (matting) matting.dispose();
  matting = null;
  for (const code of [...Object.keys(MODEL_MESSAGES), "webgpu-fallback"]) clear(code);
  status("Loading the model…");
  try {
    matting = await createMatting({ model: modelURL, backend });
  } catch (error) {
    const code = error instanceof MattingError && error.code in MODEL_MESSAGES ? error.code : "runtime";
    state.error = code;
    say(code, MODEL_MESSAGES[code](error));
    status("No model: see the message above.");
    return;
  }
  const { width, height, backend: used, threads, fallback } = matting.info;
  state.info = { ...matting.info };
  for (const canvas of [output, frameCanvas, targetCanvas]) {
    canvas.width = width;
    canvas.height = height;
  }
  targetImage = null;
  background = null;
  $("backend-used").textContent = used === "wasm" ? `WebAssembly (ONNX Runtime Web ${matting.info.ortVersion})` : "WebGPU";
  $("threads").textContent = used === "wasm" ? `${threads}${self.crossOriginIsolated ? "" : " (page not cross-origin isolated)"}` : "–";
  $("model-size").textContent = `${width}x${height}, ${matting.info.metadata.backbone || "mobilenetv2"}`;
  if (fallback) say("webgpu-fallback", fallback + ".", "warning");
  state.ready = true;
  status(state.source ? "Model loaded." : "Model loaded: start the camera or choose a video file.");
}

function letterboxBox(h, w, height, width) {
  const scale = Math.min(height / h, width / w);
  const bh = Math.max(1, Math.round(h * scale));
  const bw = Math.max(1, Math.round(w * scale));
  return { top: Math.floor((height - bh) / 2), left: Math.floor((width - bw) / 2), h: bh, w: bw };
}

function checkAspect() {
  clear("aspect");
  const { width, height } = matting.info;
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  if (Math.abs((vw * height) / (vh * width) - 1) > ASPECT_SLACK) {
    const suggested = Math.max(4, Math.round((width * vh) / vw / 4) * 4);
    say(
      "aspect",
      `The source gives ${vw}x${vh} (${(vw / vh).toFixed(2)}:1) but the model is ${width}x${height} ` +
        `(${(width / height).toFixed(2)}:1): the picture is letterboxed with black bars. For the full picture, ` +
        `export a model of the source's aspect (e.g. bgm-export onnx --width ${width} --height ${suggested}).`,
      "warning",
    );
  }
}

function readFrame() {
  const { width, height } = matting.info;
  const box = letterboxBox(video.videoHeight, video.videoWidth, height, width);
  frameCtx.fillStyle = "#000";
  frameCtx.fillRect(0, 0, width, height);
  frameCtx.drawImage(video, box.left, box.top, box.w, box.h);
  return frameCtx.getImageData(0, 0, width, height);
}

/** The per-pixel median of frames, as `matte --bgr first:N` (numpy's median, truncated to 8 bits). */
function median(frames) {
  const n = frames.length;
  const out = new ImageData(frames[0].width, frames[0].height);
  const values = new Uint8Array(n);
  const length = out.data.length;
  for (let i = 0; i < length; i++) {
    if ((i & 3) === 3) {
      out.data[i] = 255;
      continue;
    }
    for (let k = 0; k < n; k++) values[k] = frames[k].data[i];
    values.sort();
    out.data[i] = n % 2 ? values[n >> 1] : (values[n / 2 - 1] + values[n / 2]) >> 1;
  }
  return out;
}

function startCapture() {
  const want = Math.max(1, Math.min(MAX_BACKGROUND_FRAMES, Number($("auto-frames").value) || 1));
  collecting = { want, frames: [] };
  status(`Capturing the background: the median of ${want} frames…`);
}

function target(src) {
  const choice = document.querySelector('input[name="target"]:checked').value;
  if (choice === "image" && targetImage) return targetImage;
  if (choice === "blur") {
    targetCtx.filter = `blur(${$("target-blur").value}px)`;
    targetCtx.drawImage(frameCanvas, 0, 0);
    targetCtx.filter = "none";
    return targetCtx.getImageData(0, 0, targetCanvas.width, targetCanvas.height);
  }
  const hex = $("target-colour").value;
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function nextFrame() {
  return new Promise((resolve) => video.requestVideoFrameCallback(() => resolve()));
}

async function loop() {
  if (running) return;
  running = true;
  while (running) {
    await nextFrame();
    if (!matting || !state.ready) continue;
    const src = readFrame();
    if (collecting) {
      collecting.frames.push(src);
      outCtx.putImageData(src, 0, 0);
      if (collecting.frames.length >= collecting.want) {
        background = median(collecting.frames);
        state.background = background;
        state.backgroundFrames = DEBUG ? collecting.frames : [];
        collecting = null;
        status("Background captured: step into the picture.");
      }
      continue;
    }
    if (!background) {
      outCtx.putImageData(src, 0, 0);
      continue;
    }
    let out;
    try {
      out = matting.composite(await matting.run(src, background), target(src));
    } catch (error) {
      const code = error instanceof MattingError ? error.code : "runtime";
      state.error = code;
      say(code, `The model failed on a frame: ${error.message}.`);
      status("Stopped: see the message above.");
      running = false;
      break;
    }
    outCtx.putImageData(out, 0, 0);
    state.frames += 1;
    if (DEBUG) state.lastFrame = src;
    if (state.records.length < state.recordLimit) state.records.push({ src, composite: out });
    times.push(performance.now());
    if (times.length > FPS_WINDOW) times.shift();
    if (times.length > 1) {
      state.fps = ((times.length - 1) * 1000) / (times[times.length - 1] - times[0]);
      $("fps").textContent = state.fps.toFixed(1);
    }
    $("snapshot").disabled = false;
  }
}

async function play(kind) {
  await video.play();
  if (!video.videoWidth) await new Promise((resolve) => video.addEventListener("loadedmetadata", resolve, { once: true }));
  state.source = kind;
  times = [];
  background = null;
  $("capture").disabled = false;
  if (matting) checkAspect();
  if ($("auto-capture").checked) startCapture();
  else status("Step out of the picture and press Capture background.");
  loop();
}

async function listCameras() {
  const select = $("camera");
  const chosen = select.value;
  const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  select.replaceChildren(new Option("(default camera)", ""));
  cameras.forEach((camera, i) => select.append(new Option(camera.label || `camera ${i + 1}`, camera.deviceId)));
  select.value = chosen;
}

async function startCamera() {
  for (const code of ["camera-refused", "no-camera", "camera-busy", "camera-error", "camera-ended"]) clear(code);
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say("no-camera", "This browser offers no camera to this page (a camera needs https or localhost). Choose a video file instead.");
    return;
  }
  const size = matting ? { width: { ideal: matting.info.width }, height: { ideal: matting.info.height } } : {};
  const deviceId = $("camera").value;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { ...size, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) } });
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      say("camera-refused", "The camera was refused. Allow it in the browser's site settings (the camera icon in the address bar) and press Start camera again, or choose a video file.");
    } else if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      say("no-camera", "No camera was found. Connect one and press Start camera again, or choose a video file.");
    } else if (error.name === "NotReadableError") {
      say("camera-busy", "The camera could not be started: another program may be using it.");
    } else {
      say("camera-error", `The camera could not be started: ${error.name}: ${error.message}`);
    }
    state.error = state.messages[state.messages.length - 1].code;
    return;
  }
  const [track] = stream.getVideoTracks();
  track.addEventListener("ended", () => say("camera-ended", "The camera stopped (unplugged, or taken by another program)."));
  if (video.src) URL.revokeObjectURL(video.src);
  video.removeAttribute("src");
  video.srcObject = stream;
  await listCameras().catch(() => undefined);
  await play("camera");
}

async function startFile(file) {
  if (video.srcObject) for (const track of video.srcObject.getTracks()) track.stop();
  video.srcObject = null;
  if (video.src) URL.revokeObjectURL(video.src);
  video.src = URL.createObjectURL(file);
  video.loop = true;
  try {
    await play("file");
  } catch (error) {
    say("video-file", `The video file could not be played: ${error.message}`);
  }
}

async function loadTargetImage(file) {
  if (!matting) return;
  const { width, height } = matting.info;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    say("target-image", "The background image could not be read.", "warning");
    return;
  }
  const scale = Math.max(width / bitmap.width, height / bitmap.height); // cover, centred
  const w = bitmap.width * scale;
  const h = bitmap.height * scale;
  targetCtx.drawImage(bitmap, (width - w) / 2, (height - h) / 2, w, h);
  targetImage = targetCtx.getImageData(0, 0, width, height);
  document.querySelector('input[name="target"][value="image"]').checked = true;
}

function snapshot() {
  output.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `background-replaced-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

$("start-camera").addEventListener("click", startCamera);
$("video-file").addEventListener("change", (e) => e.target.files[0] && startFile(e.target.files[0]));
$("target-image").addEventListener("change", (e) => e.target.files[0] && loadTargetImage(e.target.files[0]));
$("capture").addEventListener("click", startCapture);
$("snapshot").addEventListener("click", snapshot);
$("backend").addEventListener("change", (e) => loadModel(e.target.value));

const backendParam = backendParameter();
const modelURL = modelUrl();
if (backendParam) $("backend").value = backendParam;
if (params.get("load") === "0") {
  status("No model loaded (load=0).");
} else if (modelURL === null || (params.get("backend") !== null && backendParam === null)) {
  state.error = state.messages[0].code;
  status("No model: see the message above.");
} else {
  await loadModel($("backend").value);
}
if (params.get("source") === "camera" && (state.ready || params.get("load") === "0")) await startCamera();
