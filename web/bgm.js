// BackgroundMattingV2 in the browser: a bgm-export ONNX artifact run by ONNX Runtime Web.
//
//   import { createMatting } from "./bgm.js";
//   const m = await createMatting({ model: "model.onnx", backend: "auto" });
//   const { pha, fgr } = await m.run(src, bgr);   // ImageData at m.info.width x m.info.height
//   const out = m.composite({ pha, fgr }, [0, 255, 0]);
//   m.dispose();
//
// No framework and no bundler: an ES module that loads ONNX Runtime Web's own ES module from
// `ortBase` (default: the folder ort/ beside this file, as `bgm-export web` lays it out), so
// nothing is fetched from another origin. Frames of another size are the caller's to scale.

/** Where ONNX Runtime Web's files are, relative to this module (`bgm-export web` puts them there). */
const DEFAULT_ORT_BASE = new URL("./ort/", import.meta.url);
// ONNX Runtime Web's entry points: the WebAssembly-only build (14 MB of .wasm) and the
// WebGPU build (27 MB); a page downloads only the one it runs.
const ORT_ENTRY = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };
// How long a WebGPU adapter may take to appear before WebAssembly is used instead: a
// software adapter in headless Chromium never answered in 220 s (issue 28); a real one
// answers in well under a second.
const ADAPTER_TIMEOUT_MS = 5000;
// The most threads asked of WebAssembly: ONNX Runtime Web's own ceiling for its default.
const MAX_THREADS = 4;
// What every bgm-export artifact states in its metadata (exporter/config.py, ExportConfig.metadata).
const REQUIRED_METADATA = ["model_name", "resolution", "color_order", "input_scale"];

// ONNX Runtime Web's entry module URL -> the WebAssembly threads it was started with.
const runtimes = new Map();

/** An error the page can name: `code` is one of "model-unreadable", "not-bgm-artifact",
 * "dynamic-model", "runtime-missing" (ONNX Runtime Web's files are not at `ortBase`),
 * "runtime" (ONNX Runtime Web refused the model), "bad-input" (a frame, matte, colour or
 * option of the wrong kind), "bad-output" (the model answered NaN, infinity or the wrong
 * size), "disposed". */
export class MattingError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "MattingError";
    this.code = code;
  }
}

/**
 * @typedef {Object} MattingOptions
 * @property {string | URL | ArrayBuffer | Uint8Array} model  The ONNX artifact (a URL, or its bytes).
 * @property {"auto" | "wasm" | "webgpu"} [backend]  "auto": WebGPU where an adapter exists, else WebAssembly.
 * @property {number} [threads]  WebAssembly threads (default: the cores, at most 4; 1 unless the page is cross-origin isolated).
 * @property {string | URL} [ortBase]  The folder holding ONNX Runtime Web's .mjs and .wasm files.
 */

/**
 * @typedef {Object} MattingInfo
 * @property {number} width   The model's input width (frames passed to run must have it).
 * @property {number} height  The model's input height.
 * @property {"wasm" | "webgpu"} backend  What actually runs.
 * @property {number} threads  WebAssembly threads in use (1 without cross-origin isolation).
 * @property {Object<string, string>} metadata  The artifact's bgm-export metadata.
 * @property {string | null} fallback  Why the requested backend is not the one running, or null.
 * @property {string} ortVersion  ONNX Runtime Web's version.
 */

/**
 * @typedef {Object} Matte
 * @property {Float32Array} pha  Alpha, H*W values in 0..1.
 * @property {Float32Array} fgr  Foreground, 3*H*W values: R, G and B planes in 0..1.
 */

/**
 * @typedef {Object} Matting
 * @property {MattingInfo} info
 * @property {(src: ImageData, bgr: ImageData) => Promise<Matte>} run
 * @property {(matte: Matte, target: ImageData | number[]) => ImageData} composite
 * @property {() => void} dispose
 */

/** Reads the varint at `pos`; returns [value, next position]. Values beyond 2^53 lose precision,
 * which only matters for lengths no browser could hold anyway. */
function readVarint(bytes, pos) {
  let value = 0;
  let factor = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) throw new RangeError("truncated varint");
    const byte = bytes[pos++];
    value += (byte & 0x7f) * factor;
    if (byte < 0x80) return [value, pos];
    factor *= 128;
  }
  throw new RangeError("varint longer than 10 bytes");
}

/** The `metadata_props` of an ONNX ModelProto (field 14, StringStringEntryProto key=1 value=2),
 * read from the top level only: ONNX Runtime Web does not expose them. Throws RangeError on
 * bytes that are not a protobuf message. */
export function onnxMetadata(bytes) {
  const text = new TextDecoder();
  const props = {};
  let pos = 0;
  let sawGraph = false;
  while (pos < bytes.length) {
    let key;
    [key, pos] = readVarint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field === 0) throw new RangeError("field number 0");
    if (wire === 0) {
      [, pos] = readVarint(bytes, pos);
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      if (pos + length > bytes.length) throw new RangeError("field runs past the end");
      if (field === 7) sawGraph = true;
      if (field === 14) {
        const entry = bytes.subarray(pos, pos + length);
        let p = 0;
        let k = "";
        let v = "";
        while (p < entry.length) {
          let t;
          [t, p] = readVarint(entry, p);
          if ((t & 7) !== 2) throw new RangeError("metadata entry with a non-string field");
          let n;
          [n, p] = readVarint(entry, p);
          const s = text.decode(entry.subarray(p, p + n));
          p += n;
          if (t >> 3 === 1) k = s;
          else if (t >> 3 === 2) v = s;
        }
        props[k] = v;
      }
      pos += length;
    } else {
      throw new RangeError(`wire type ${wire}`);
    }
  }
  if (pos !== bytes.length || !sawGraph) throw new RangeError("no graph");
  return props;
}

async function modelBytes(model) {
  if (model instanceof Uint8Array) return model;
  if (model instanceof ArrayBuffer) return new Uint8Array(model);
  let response;
  try {
    response = await fetch(model);
  } catch (error) {
    throw new MattingError("model-unreadable", `the model ${model} could not be fetched: ${error.message}`);
  }
  if (!response.ok) {
    throw new MattingError("model-unreadable", `the model ${model} could not be fetched: HTTP ${response.status}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

/** The artifact's metadata and size, or a MattingError saying why it is not a usable bgm-export artifact. */
function describe(bytes, name) {
  let metadata;
  try {
    metadata = onnxMetadata(bytes);
  } catch (error) {
    throw new MattingError("model-unreadable", `${name} is not an ONNX model (${error.message})`);
  }
  const missing = REQUIRED_METADATA.filter((key) => !(key in metadata));
  if (missing.length) {
    throw new MattingError(
      "not-bgm-artifact",
      `${name} is an ONNX model but not a bgm-export artifact (its metadata lacks ${missing.join(", ")}): ` +
        "export it with `bgm-export onnx`",
    );
  }
  if (metadata.dynamic === "true") {
    throw new MattingError(
      "dynamic-model",
      `${name} is a --dynamic export; the browser runs fixed-size exports (bgm-export onnx --height H --width W)`,
    );
  }
  const match = /^(\d+)x(\d+)$/.exec(metadata.resolution);
  if (!match || metadata.color_order !== "BGR" || metadata.input_scale !== "255") {
    throw new MattingError(
      "not-bgm-artifact",
      `${name}: its metadata (resolution ${metadata.resolution}, colour order ${metadata.color_order}, ` +
        `input scale ${metadata.input_scale}) is not what bgm-export writes`,
    );
  }
  return { metadata, height: Number(match[1]), width: Number(match[2]) };
}

/** "webgpu" when an adapter answers within ADAPTER_TIMEOUT_MS, else the reason it is not used. */
async function webgpuAdapter() {
  if (typeof navigator === "undefined" || !navigator.gpu) return "this browser has no WebGPU (navigator.gpu)";
  const timeout = new Promise((resolve) => setTimeout(() => resolve("timeout"), ADAPTER_TIMEOUT_MS));
  let adapter;
  try {
    adapter = await Promise.race([navigator.gpu.requestAdapter(), timeout]);
  } catch (error) {
    return `WebGPU's adapter request failed (${error.message})`;
  }
  if (adapter === "timeout") return `no WebGPU adapter answered within ${ADAPTER_TIMEOUT_MS / 1000} s`;
  if (!adapter) return "WebGPU gives no adapter on this machine";
  return "webgpu";
}

/** What `value` is, for a message: "an array of 3", "Uint8Array(10)", "undefined". */
function kind(value) {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${value.length})`;
  return typeof value === "object" ? (value.constructor?.name ?? "an object") : `${typeof value} ${String(value).slice(0, 40)}`;
}

/** True when `data` is a Uint8ClampedArray (from this realm or another: an iframe's ImageData). */
function isClamped(data) {
  return Object.prototype.toString.call(data) === "[object Uint8ClampedArray]";
}

/** False when any value of the planes is NaN or infinite: one pass, x * 0 is 0 only for finite x. */
function allFinite(pha, fgr, plane) {
  let sum = 0;
  for (let i = 0; i < plane; i++) sum += pha[i] * 0 + fgr[i] * 0 + fgr[plane + i] * 0 + fgr[2 * plane + i] * 0;
  return sum === 0;
}

/** The number of WebAssembly threads to ask for. */
function defaultThreads() {
  const isolated = typeof self !== "undefined" && self.crossOriginIsolated;
  const cores = (typeof navigator !== "undefined" && navigator.hardwareConcurrency) || 1;
  return isolated ? Math.max(1, Math.min(MAX_THREADS, cores)) : 1;
}

/**
 * Loads a bgm-export ONNX artifact into ONNX Runtime Web.
 * @param {MattingOptions} options
 * @returns {Promise<Matting>}
 * @throws {MattingError} the model cannot be fetched, is not ONNX, not a bgm-export artifact, or a --dynamic export.
 */
export async function createMatting(options) {
  const { model, backend = "auto", threads, ortBase = DEFAULT_ORT_BASE } = options || {};
  if (!["auto", "wasm", "webgpu"].includes(backend)) {
    throw new MattingError("bad-input", `backend ${backend} is not one of auto, wasm, webgpu`);
  }
  if (model === undefined || model === null) throw new MattingError("bad-input", "no model given");
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) {
    throw new MattingError("bad-input", `threads ${kind(threads)} is not a whole number of at least 1`);
  }
  const name = typeof model === "string" || model instanceof URL ? String(model) : "the model";
  const bytes = await modelBytes(model);
  const { metadata, width, height } = describe(bytes, name);

  let chosen = "wasm";
  let fallback = null;
  if (backend !== "wasm") {
    const adapter = await webgpuAdapter();
    if (adapter === "webgpu") chosen = "webgpu";
    else if (backend === "webgpu") fallback = `WebGPU was requested but ${adapter}: running on WebAssembly instead`;
  }
  let base;
  let entry;
  let ort;
  try {
    base = new URL(ortBase, import.meta.url);
    entry = new URL(ORT_ENTRY[chosen], base).href;
    ort = await import(entry);
  } catch (error) {
    throw new MattingError(
      "runtime-missing",
      `ONNX Runtime Web could not be loaded from ortBase ${String(ortBase)} (${error.message}): give the folder ` +
        "holding ONNX Runtime Web 1.30's files (bgm-export web puts them in ort/ beside bgm.js)",
    );
  }
  // ONNX Runtime Web starts its WebAssembly once per page, with the threads asked for first;
  // a later session runs with those whatever it asks, so info reports those.
  const first = !runtimes.has(entry);
  if (first) {
    ort.env.wasm.wasmPaths = base.href;
    ort.env.wasm.numThreads = threads ?? defaultThreads();
  }
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: chosen === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
      graphOptimizationLevel: "all",
    });
  } catch (error) {
    throw new MattingError("runtime", `ONNX Runtime Web could not load ${name}: ${error.message || error}`);
  } finally {
    // What started: ONNX Runtime Web lowers numThreads to 1 where threads are unavailable.
    if (first) runtimes.set(entry, ort.env.wasm.numThreads);
  }
  for (const [kind, names, wanted] of [
    ["inputs", session.inputNames, ["src", "bgr"]],
    ["outputs", session.outputNames, ["pha", "fgr"]],
  ]) {
    if (!wanted.every((n) => names.includes(n))) {
      session.release();
      throw new MattingError(
        "not-bgm-artifact",
        `${name} has ${kind} ${names.join(", ")}; a bgm-export artifact has ${wanted.join(", ")}`,
      );
    }
  }

  const plane = width * height;
  const srcData = new Float32Array(3 * plane);
  const bgrData = new Float32Array(3 * plane);
  let queue = Promise.resolve();
  let disposed = false;

  /** ImageData of the model's size, or an object of its shape ({ width, height, data }); else bad-input. */
  function checkImage(image, label) {
    if (!image || image.width !== width || image.height !== height) {
      const got = image && image.width !== undefined ? `${image.width}x${image.height}` : kind(image);
      throw new MattingError("bad-input", `${label} is ${got}; the model takes ImageData of ${width}x${height}`);
    }
    if (!isClamped(image.data) || image.data.length !== 4 * plane) {
      throw new MattingError(
        "bad-input",
        `${label}.data is ${kind(image.data)}; ImageData of ${width}x${height} holds a Uint8ClampedArray of ` +
          `${4 * plane} RGBA bytes`,
      );
    }
    return image.data;
  }

  /** RGBA bytes -> the model's B, G, R planes in 0..255. */
  function toPlanes(image, out, label) {
    const rgba = checkImage(image, label);
    for (let i = 0, j = 0; i < plane; i++, j += 4) {
      out[i] = rgba[j + 2];
      out[plane + i] = rgba[j + 1];
      out[2 * plane + i] = rgba[j];
    }
  }

  /** @type {Matting} */
  const matting = {
    info: Object.freeze({
      width,
      height,
      backend: chosen,
      threads: chosen === "wasm" ? runtimes.get(entry) : 1,
      metadata: Object.freeze({ ...metadata }),
      fallback,
      ortVersion: ort.env.versions?.web ?? "unknown",
    }),

    run(src, bgr) {
      // ONNX Runtime Web runs one request of a session at a time; the input buffers are reused.
      const task = queue.then(async () => {
        if (disposed) throw new MattingError("disposed", "this matting was disposed");
        toPlanes(src, srcData, "src");
        toPlanes(bgr, bgrData, "bgr");
        const dims = [1, 3, height, width];
        const feeds = { src: new ort.Tensor("float32", srcData, dims), bgr: new ort.Tensor("float32", bgrData, dims) };
        const outputs = await session.run(feeds, ["pha", "fgr"]);
        const pha = await outputs.pha.getData(true);
        const fgr = await outputs.fgr.getData(true);
        if (pha.length !== plane || fgr.length !== 3 * plane) {
          throw new MattingError(
            "bad-output",
            `the model answered ${pha.length} alpha and ${fgr.length} foreground values for ${plane} pixels`,
          );
        }
        // A broken artifact answers NaN without an error: drawn, it is a black frame and no message.
        if (!allFinite(pha, fgr, plane)) {
          throw new MattingError(
            "bad-output",
            "the model answered NaN or infinite values: the artifact is broken (check it with bgm-export verify)",
          );
        }
        return { pha, fgr };
      });
      queue = task.catch(() => undefined);
      return task;
    },

    composite(matte, target) {
      if (disposed) throw new MattingError("disposed", "this matting was disposed");
      const { pha, fgr } = matte ?? {};
      if (!(pha instanceof Float32Array && pha.length === plane && fgr instanceof Float32Array && fgr.length === 3 * plane)) {
        throw new MattingError(
          "bad-input",
          `composite takes what run answered, { pha: Float32Array(${plane}), fgr: Float32Array(${3 * plane}) }; ` +
            `got ${matte ? `pha ${kind(pha)}, fgr ${kind(fgr)}` : kind(matte)}`,
        );
      }
      if (!allFinite(pha, fgr, plane)) throw new MattingError("bad-input", "the matte holds NaN or infinite values");
      let colour = null;
      if (Array.isArray(target)) {
        if (target.length !== 3 || !target.every((v) => typeof v === "number" && v >= 0 && v <= 255)) {
          throw new MattingError(
            "bad-input",
            `the target colour is [${String(target).slice(0, 60)}]; give [r, g, b], each a number in 0..255`,
          );
        }
        colour = target;
      }
      const t = colour ? null : checkImage(target, "the target (ImageData, or [r, g, b])");
      const out = new ImageData(width, height);
      const o = out.data;
      for (let i = 0, j = 0; i < plane; i++, j += 4) {
        const a = Math.min(1, Math.max(0, pha[i]));
        for (let c = 0; c < 3; c++) {
          const f = Math.min(1, Math.max(0, fgr[c * plane + i]));
          const b = colour ? colour[c] / 255 : t[j + c] / 255;
          o[j + c] = Math.round((f * a + b * (1 - a)) * 255);
        }
        o[j + 3] = 255;
      }
      return out;
    },

    dispose() {
      if (!disposed) {
        disposed = true;
        queue.then(() => session.release());
      }
    },
  };
  return matting;
}
