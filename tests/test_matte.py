"""matte: files written for images, folders and video, their values, and bad input."""

from __future__ import annotations

import contextlib
import io
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image

from exporter.align import estimate_alignment
from exporter.data import room_case, synthetic_case
from exporter.errors import InputError, OutputError
from exporter.matte import FirstFrames, matte
from exporter.pipeline.prepare import Composite, Prepare, letterbox
from exporter.pipeline.sources import Frame, Pipe, Stream
from exporter.runtime import load_runner
from exporter.tolerances import OFF_BY_ONE_LEVEL
from helpers import CLI_COMMAND, with_nan_weights


def save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


@pytest.fixture(scope="module")
def model(golden_irs) -> Path:
    return golden_irs["FP32"]


def test_image_at_model_size(model, tmp_path):
    case = synthetic_case(192, 320, 11)
    src, bgr = save(case.src, tmp_path / "in/src.png"), save(case.bgr, tmp_path / "in/bgr.png")
    summary = matte(model, src, bgr, target=(0, 255, 0), out=tmp_path / "out")
    assert summary.frames == 1 and not summary.warnings
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["src_alpha.png", "src_composite.png", "src_fgr.png"]

    runner = load_runner(model, "openvino", inference_precision="auto")
    expected = runner.infer(Prepare(192, 320, case.bgr)(Frame(0, "src", case.src, 0.0)))
    alpha = read(tmp_path / "out/src_alpha.png")
    assert alpha.shape == (192, 320) and alpha.dtype == np.uint8
    assert np.abs(alpha / 255 - expected["pha"][0, 0]).max() <= OFF_BY_ONE_LEVEL

    rgba = read(tmp_path / "out/src_fgr.png")
    assert rgba.shape == (192, 320, 4) and np.array_equal(rgba[..., 3], alpha)
    green = np.zeros((192, 320, 3), np.uint8)
    green[..., 1] = 255
    result = Composite((192, 320), 192, 320)(expected, green)
    composite = read(tmp_path / "out/src_composite.png")
    pha = result.pha[..., None]
    reference = pha * result.fgr + (1 - pha) * green / 255
    assert np.abs(composite / 255 - reference).max() <= OFF_BY_ONE_LEVEL
    # ...and from the written 8-bit files, within the two roundings.
    from_files = alpha[..., None] / 255 * rgba[..., :3] / 255 + (1 - alpha[..., None] / 255) * green / 255
    assert np.abs(composite / 255 - from_files).max() <= 2 * OFF_BY_ONE_LEVEL


def test_other_size_is_letterboxed_and_mapped_back(model, tmp_path):
    case = synthetic_case(150, 200, 12)  # 4:3 into 5:3: padded left and right
    src = save(case.src, tmp_path / "src.png")
    bgr = save(np.array(Image.fromarray(case.bgr).resize((400, 300))), tmp_path / "bgr.png")
    target = save(synthetic_case(90, 90, 13).bgr, tmp_path / "beach.png")
    summary = matte(model, src, bgr, target=target, out=tmp_path / "out")
    # Said, but not as a warning: it is what the user asked for.
    assert summary.notes == ["background 400x300 resized to the source's 200x150"] and not summary.warnings
    for name in ("src_alpha.png", "src_fgr.png", "src_composite.png"):
        assert read(tmp_path / "out" / name).shape[:2] == (150, 200)


def test_letterbox_geometry():
    canvas, box = letterbox(np.ones((150, 200, 3), np.uint8), 192, 320)
    assert box == (0, 32, 192, 256)
    assert canvas[:, :32].max() == 0 and canvas[:, 32:288].min() == 1 and canvas[:, 288:].max() == 0


def test_folder_of_frames(model, tmp_path):
    for i in range(3):
        save(synthetic_case(96, 160, i).src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    calls = []
    summary = matte(model, tmp_path / "frames", bgr, out=tmp_path / "out", on_frame=lambda d, t: calls.append((d, t)))
    assert summary.frames == 3 and calls == [(1, 3), (2, 3), (3, 3)]
    assert len(list((tmp_path / "out").glob("*.png"))) == 9


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_video_in_video_out(model, tmp_path, cli):
    cases = [synthetic_case(96, 160, 20 + i) for i in range(5)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    target = write_video(tmp_path / "target.mp4", [c.bgr for c in cases[:2]])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    result = cli("matte", "--model", model, "--src", video, "--bgr", bgr, "--target", target, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "5 frames in" in result.stdout and "frames per second" in result.stdout
    capture = cv2.VideoCapture(str(tmp_path / "out/composite.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 5
    # A video's default output is the composite video alone.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["composite.mp4"]
    assert "model busy" in result.stdout


def test_video_outputs_chosen(model, tmp_path):
    cases = [synthetic_case(96, 160, 30 + i) for i in range(3)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    summary = matte(model, video, bgr, out=tmp_path / "out", outputs=("alpha", "composite-png"))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"frame_{i:06d}_{kind}.png" for i in range(3) for kind in ("alpha", "composite")]
    assert summary.frames == 3 and set(summary.timings) == {"decode", "prepare", "model", "write"}
    assert 0 < summary.model_share <= 1  # the model's busy time is a part of the wall time


def test_folder_outputs_chosen(model, tmp_path):
    for i in range(2):
        save(synthetic_case(96, 160, i).src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    matte(model, tmp_path / "frames", bgr, out=tmp_path / "out", outputs=("composite",))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0_composite.png", "f1_composite.png"]
    # For images, composite and composite-png name the same file: written once.
    matte(model, tmp_path / "frames", bgr, out=tmp_path / "both", outputs=("composite-png", "composite"))
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["f0_composite.png", "f1_composite.png"]


def identity_model(path: Path) -> Path:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-src", "does not exist"),
        ("bad-image", "cannot read image"),
        ("bad-bgr", "cannot read image"),
        ("empty-folder", "holds no images"),
        ("bad-video", "cannot read video"),
        ("bad-target", "neither a colour R,G,B nor an existing image or video"),
        ("bad-colour", "has a channel above 255"),
        ("bad-device", "device 'TPU' is not one of CPU, GPU, NPU, AUTO"),
        ("absent-device", "is not available here"),
        ("wrong-model", "carries no bgm-export metadata; was it made by bgm-export?"),
        ("corrupt-second-frame", "cannot read image"),
        ("out-is-a-file", "exists and is not a folder"),
        ("bgr-of-another-view", "is 96x96, another aspect than the frames' 160x96: it cannot be the same view"),
    ],
)
def test_bad_input_is_one_line_exit_two_and_writes_nothing(case, message, model, tmp_path, cli, one_error):
    good = save(synthetic_case(96, 160, 1).src, tmp_path / "good.png")
    args = {"--model": model, "--src": good, "--bgr": good, "--out": tmp_path / "out"}
    extra: list[str] = []
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    if case == "missing-src":
        args["--src"] = tmp_path / "none.png"
    elif case == "bad-image":
        args["--src"] = junk
    elif case == "bad-bgr":
        args["--bgr"] = junk
    elif case == "empty-folder":
        (tmp_path / "empty").mkdir()
        args["--src"] = tmp_path / "empty"
    elif case == "bad-video":
        (tmp_path / "v.mp4").write_bytes(b"nope")
        args["--src"] = tmp_path / "v.mp4"
    elif case == "bad-target":
        extra = ["--target", "sunset"]
    elif case == "bad-colour":
        extra = ["--target", "0,300,0"]
    elif case == "bad-device":
        extra = ["--device", "TPU"]
    elif case == "absent-device":
        extra = ["--device", "NPU"]
    elif case == "wrong-model":
        args["--model"] = identity_model(tmp_path / "id.onnx")
    elif case == "corrupt-second-frame":
        save(synthetic_case(96, 160, 1).src, tmp_path / "frames/a.png")
        (tmp_path / "frames/b.png").write_bytes(b"broken")
        args["--src"] = tmp_path / "frames"
    elif case == "out-is-a-file":
        (tmp_path / "out").write_text("x")
    elif case == "bgr-of-another-view":
        args["--bgr"] = save(synthetic_case(96, 96, 1).bgr, tmp_path / "square.png")
    # The one error line, last (a progress bar's label may stand before it when stderr is no terminal).
    one_error(cli("matte", *[v for pair in args.items() for v in pair], *extra), message)
    if case == "out-is-a-file":
        assert (tmp_path / "out").read_text() == "x"
    else:
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "second, size, message",
    [
        ("b.png", (64, 64), "must share a size"),
        ("a.jpg", (96, 160), "has frames sharing a name: a.jpg, a.png"),  # a's results would overwrite each other
    ],
)
def test_frames_that_cannot_go_together_are_refused(model, tmp_path, second, size, message):
    save(synthetic_case(96, 160, 1).src, tmp_path / "frames/a.png")
    save(synthetic_case(*size, 2).src, tmp_path / "frames" / second)
    bgr = save(synthetic_case(96, 160, 1).bgr, tmp_path / "bgr.png")
    with pytest.raises(InputError, match=message):
        matte(model, tmp_path / "frames", bgr, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_align_brings_a_moved_capture_close_to_the_exact_background(model, tmp_path):
    """A capture shifted by (12, -7) px and rotated 1 degree: with --align the alpha is close
    to what the exact background gives; without it, far (any weights show this)."""
    case, room = room_case(192, 320, 3)
    src = save(case.src, tmp_path / "src.png")
    runs = {}
    for label, background, align in (("exact", room, False), ("moved", case.bgr, False), ("aligned", case.bgr, True)):
        bgr = save(background, tmp_path / f"{label}.png")
        summary = matte(model, src, bgr, out=tmp_path / label, align=align, outputs=("alpha",))
        runs[label] = read(tmp_path / label / "src_alpha.png").astype(float) / 255
        if align:
            assert summary.alignment.startswith("frame 0: shift (") and "inliers" in summary.alignment
    aligned = np.abs(runs["aligned"] - runs["exact"]).mean()
    moved = np.abs(runs["moved"] - runs["exact"]).mean()
    # Random weights magnify the warp's interpolation blur; trained ones far less (closing note).
    assert aligned < 0.6 * moved, (aligned, moved)


@pytest.mark.parametrize("size", [(192, 320), pytest.param((720, 1280), marks=pytest.mark.slow)])
def test_estimated_homography_undoes_the_hand_movement(size):
    case, room = room_case(*size, 3)
    alignment = estimate_alignment(case.bgr, case.src)
    warped = alignment.warp(case.bgr, case.src).astype(float)
    seen = case.pha < 0.01  # where the background shows
    before = np.abs(case.bgr.astype(float) - room)[seen].mean()
    after = np.abs(warped - room)[seen].mean()
    assert after < before / 8, (before, after)
    assert abs(abs(alignment.rotation) - 1.0) < 0.1


def test_align_on_a_textureless_background_is_refused(model, tmp_path, cli, one_error):
    case, _ = room_case(96, 160, 4)
    src = save(case.src, tmp_path / "src.png")
    flat = save(np.full((96, 160, 3), 128, np.uint8), tmp_path / "flat.png")
    result = cli("matte", "--model", model, "--src", src, "--bgr", flat, "--align", "--out", tmp_path / "out")
    one_error(result, "cannot align the background: 0 features found")
    assert result.stderr.startswith("error: cannot align the background")
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_unknown_output_kind_is_refused(model, tmp_path, cli, one_error):
    good = save(synthetic_case(96, 160, 1).src, tmp_path / "good.png")
    result = cli("matte", "--model", model, "--src", good, "--bgr", good, "--outputs", "alpha,depth",
                 "--out", tmp_path / "out")  # fmt: skip
    one_error(result, "--outputs 'alpha,depth': depth is not one of composite, alpha, foreground, composite-png")


def test_video_that_stops_decoding_midway_is_an_error(model, tmp_path, cli, one_error):
    path = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 96))
    for i in range(20):
        writer.write(synthetic_case(96, 160, i).src)
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the index says 20 frames
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    result = cli("matte", "--model", model, "--src", path, "--bgr", bgr, "--out", tmp_path / "out")
    one_error(result, "stopped decoding at frame 10 of 20")
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_target_video_is_streamed_in_a_loop(model, tmp_path):
    cases = [synthetic_case(96, 160, 40 + i) for i in range(5)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    target = write_video(tmp_path / "target.mp4", [np.full((96, 160, 3), v, np.uint8) for v in (0, 255)])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    matte(model, video, bgr, target=target, out=tmp_path / "out", outputs=("alpha", "foreground", "composite-png"))
    capture = cv2.VideoCapture(str(target))
    decoded = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) / 255 for _ in range(2)]
    # The target behind frames 0..4 is its frames 0, 1, 0, 1, 0 (black, white, ...).
    for i in range(5):
        alpha = read(tmp_path / "out" / f"frame_{i:06d}_alpha.png")[..., None] / 255
        fgr = read(tmp_path / "out" / f"frame_{i:06d}_fgr.png")[..., :3] / 255
        composite = read(tmp_path / "out" / f"frame_{i:06d}_composite.png") / 255
        expected = alpha * fgr + (1 - alpha) * decoded[i % 2]
        assert np.abs(composite - expected).max() <= 2 * OFF_BY_ONE_LEVEL + 1e-9, i


def test_interrupt_mid_video_leaves_nothing(model, tmp_path):
    cases = [synthetic_case(96, 160, 50 + i) for i in range(6)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        matte(model, video, bgr, out=tmp_path / "out", outputs=("composite", "alpha"), on_frame=interrupt)
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


@pytest.mark.slow
def test_bench_matte_measures_both_sides(model, bench_without_pauses):
    """What is timed, at which size, and the report's numbers from the result's own."""
    import dataclasses

    from exporter.bench import MatteBench, bench_matte, format_matte_bench

    result = bench_matte(model, frames=6)
    assert (result.model, result.frames, result.resolution) == (str(model), 6, (192, 320))
    assert set(result.timings) == {"decode", "prepare", "model", "write"}
    assert 0 < result.model_share <= 1  # the model's busy time is a part of matte's wall time
    assert set(result.to_dict()) == {f.name for f in dataclasses.fields(MatteBench)} | {"ratio"}
    text = format_matte_bench(result)
    assert f"model alone (THROUGHPUT hint)   {result.model_fps:.2f} frames/s" in text
    assert f"{result.matte_fps:.2f} frames/s ({result.matte_fps / result.model_fps:.0%} of the model's)" in text
    assert f"model busy {result.model_share:.0%} of matte's time" in text


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(model, tmp_path, monkeypatch):
    import errno

    import exporter.pipeline.sinks as sinks

    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sinks, "save_png", full)
    for i in range(3):
        save(synthetic_case(96, 160, i).src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    with pytest.raises(OutputError, match="cannot write .*f0_alpha.png: No space left on device"):
        matte(model, tmp_path / "frames", bgr, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_sixteen_bit_grey_and_oversized_images(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from exporter.images import read_image

    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "grey16.png"
    PILImage.fromarray(grey).save(path)
    assert PILImage.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb[..., 0], (grey >> 8).astype(np.uint8))
    assert 0 < rgb.mean() < 255  # not the all-white frame a plain convert gives
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="is larger than the 100 pixels Pillow opens safely"):
        read_image(path)
    # Between the limit and twice it Pillow only warned, and decoded the image (64x64 = 4,096
    # pixels: 1.4 to 2 times a limit of 2,048-2,900).
    for limit in (2_048, 2_900):
        monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(InputError, match=f"is larger than the {limit:,} pixels Pillow opens safely"):
            read_image(path)


# ---- live sources, pipes, and promises kept under hostile input ----


def bgm_export(*args: object, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command line in a process of its own: real standard streams, signals, and C
    libraries' own output on file descriptor 2."""
    return subprocess.run([*CLI_COMMAND, *map(str, args)], input=stdin, capture_output=True, timeout=timeout)


def raw_bgr(frames: list[np.ndarray]) -> bytes:
    return b"".join(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR).tobytes() for frame in frames)


def test_raw_frames_through_pipes_match_the_folder_path(model, tmp_path):
    """``ffmpeg ... -f rawvideo - | bgm-export matte --src - --out - | ffmpeg ...``: every
    frame comes back, composited as the folder path composites it."""
    cases = [synthetic_case(96, 160, 60 + i) for i in range(4)]
    for i, case in enumerate(cases):
        save(case.src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    matte(model, tmp_path / "frames", bgr, out=tmp_path / "out", outputs=("composite",))
    result = bgm_export("matte", "--model", model, "--src", "-", "--size", "160x96", "--bgr", bgr, "--out", "-",
                        stdin=raw_bgr([case.src for case in cases]))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    piped = np.frombuffer(result.stdout, np.uint8).reshape(4, 96, 160, 3)
    for i in range(4):
        folder = read(tmp_path / "out" / f"f{i}_composite.png")
        assert np.abs(cv2.cvtColor(piped[i], cv2.COLOR_BGR2RGB) / 255 - folder / 255).max() <= OFF_BY_ONE_LEVEL, i
    assert b"4 frames in" in result.stderr  # the summary goes to stderr: stdout carries frames


@contextlib.contextmanager
def mjpeg_stream(frames: list[np.ndarray], fps: float) -> Iterator[str]:
    """An MJPEG stream over HTTP on a free loopback port, as IP cameras serve it; it ends
    after ``frames``."""

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for frame in frames:
                jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                self.wfile.write(head + jpeg.tobytes() + b"\r\n")
                time.sleep(1 / fps)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/video.mjpg"
    finally:
        server.shutdown()
        server.server_close()


def test_a_network_stream_runs_in_latency_mode(model, tmp_path):
    """A stream faster than the model: frames are dropped, not queued; every frame is
    accounted for."""
    cases = [synthetic_case(96, 160, 70 + i) for i in range(4)]
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    frames = [cases[i % 4].src for i in range(300)]
    with mjpeg_stream(frames, fps=500) as url:
        summary = matte(model, Stream(url), bgr, out=tmp_path / "out")
    assert summary.live and summary.frames >= 1
    # The first frame, read on opening, only tells the size: neither matted nor dropped.
    assert summary.frames + summary.dropped == len(frames) - 1
    assert summary.dropped > 0  # 500 frames/s is faster than the model and the writer
    assert set(summary.latency_ms) == {"p50", "p95"} and 0 < summary.latency_ms["p50"] <= summary.latency_ms["p95"]
    assert any("dropped" in line and "p95" in line for line in summary.lines(tmp_path / "out"))
    capture = cv2.VideoCapture(str(tmp_path / "out/composite.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == summary.frames


def test_background_from_the_first_frames(model, tmp_path):
    """``--bgr first:N``: the median of the empty scene's first frames; they are not matted."""
    scene = synthetic_case(96, 160, 5)
    frames = [scene.bgr] * 3 + [scene.src] * 2
    stream = io.BytesIO(raw_bgr(frames))
    summary = matte(model, Pipe(160, 96, stream), FirstFrames(3), out=tmp_path / "out", outputs=("alpha",))
    assert summary.frames == 2 and "background: the median of the first 3 frames" in summary.notes
    # Frames keep the source's numbers: the first matted one is the fourth.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frame_000003_alpha.png", "frame_000004_alpha.png"]
    with_image = matte(model, save(scene.src, tmp_path / "src.png"), save(scene.bgr, tmp_path / "bgr.png"),
                       out=tmp_path / "image", outputs=("alpha",))  # fmt: skip
    assert with_image.frames == 1
    assert np.array_equal(read(tmp_path / "out/frame_000003_alpha.png"), read(tmp_path / "image/src_alpha.png"))
    with pytest.raises(InputError, match="first:9: the source has only 5 frames"):
        matte(model, Pipe(160, 96, io.BytesIO(raw_bgr(frames))), FirstFrames(9), out=tmp_path / "short")


@pytest.mark.slow
def test_sigterm_stops_a_live_pipe_cleanly(model, tmp_path):
    """An endless pipe: SIGTERM ends the run, every frame taken is in a finished video, exit 0."""
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    process = subprocess.Popen(
        [*CLI_COMMAND, "matte", "--model", str(model), "--src", "-", "--size", "160x96", "--bgr", str(bgr),
         "--out", str(tmp_path / "out")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        process.stdin.write(raw_bgr([synthetic_case(96, 160, 80 + i).src for i in range(3)]))
        process.stdin.flush()
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob(".matte-*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the model is loaded and frames are running
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)  # closes stdin: a reader blocked on it returns
    finally:
        process.kill()
    assert process.returncode == 0, stderr.decode()
    assert b"stopped by SIGTERM" in stdout and b"3 frames in" in stdout and b"Traceback" not in stderr
    capture = cv2.VideoCapture(str(tmp_path / "out/composite.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 3


@pytest.mark.slow
def test_sigterm_mid_video_is_one_line_and_leaves_nothing(model, tmp_path):
    video = write_video(tmp_path / "in.mp4", [synthetic_case(360, 640, 90 + i % 3).src for i in range(60)])
    bgr = save(synthetic_case(360, 640, 90).bgr, tmp_path / "bgr.png")
    process = subprocess.Popen(
        [*CLI_COMMAND, "matte", "--model", str(model), "--src", str(video), "--bgr", str(bgr),
         "--outputs", "composite,alpha", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob(".matte-*/*")) and time.monotonic() < deadline:
            time.sleep(0.01)  # frames are being written
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    lines = stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert process.returncode == 143 and errors == ["error: terminated; no partial output was left"], lines
    assert "Traceback" not in stderr.decode() and "CancelledError" not in stderr.decode()
    assert not (tmp_path / "out").exists()


def test_a_broken_video_gets_our_line_only(model, tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"nope")
    good = save(synthetic_case(96, 160, 1).src, tmp_path / "good.png")
    result = bgm_export("matte", "--model", model, "--src", tmp_path / "v.mp4", "--bgr", good,
                        "--out", tmp_path / "out")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [f"error: cannot read video {tmp_path / 'v.mp4'}"]


@pytest.mark.parametrize("case", ["target", "bgr", "source-video", "out-is-the-source-folder"])
def test_matte_never_overwrites_its_inputs(case, model, tmp_path):
    out = tmp_path / "out"
    frame = synthetic_case(96, 160, 1)
    src = save(frame.src, tmp_path / "src.png")
    bgr = save(frame.bgr, tmp_path / "bgr.png")
    kwargs: dict = {}
    if case == "target":  # the target is the composite this run writes
        kwargs["target"] = save(frame.bgr, out / "src_composite.png")
    elif case == "bgr":  # the background is the alpha this run writes
        bgr = save(frame.bgr, out / "src_alpha.png")
    elif case == "source-video":  # last run's composite, matted again into the same folder
        out.mkdir()
        src = write_video(out / "composite.mp4", [frame.src] * 2)
    elif case == "out-is-the-source-folder":
        src = tmp_path / "frames"
        save(frame.src, src / "a.png")
        out = src
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="would overwrite the input|is the source folder"):
        matte(model, src, bgr, out=out, **kwargs)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_target_without_a_composite_is_refused(model, tmp_path):
    good = save(synthetic_case(96, 160, 1).src, tmp_path / "good.png")
    with pytest.raises(InputError, match="--target applies to the composite, which is not written"):
        matte(model, good, good, target=(0, 0, 255), outputs=("alpha",), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--matte", "MODEL", "--runs", "3"], "--runs cannot apply with --matte"),
        (["--matte", "MODEL", "--profile", "--preset", "1080p"], "--preset, --profile cannot apply with --matte"),
        (["--matte", "MODEL", "--checkpoint", "c.pth", "--height", "96"], "--checkpoint, --height cannot apply"),
        (["--frames", "3"], "--frames applies with --matte or --server only"),
        (["--matte", "MODEL", "--json", "MODEL"], "refusing to overwrite it"),
        (["--matte", "MODEL", "--json", "BIN"], "the weights of the input"),
    ],
)
def test_bench_refuses_options_that_do_not_apply(model, args, message, cli, one_error):
    argv = [{"MODEL": str(model), "BIN": str(model.with_suffix(".bin"))}.get(a, a) for a in args]
    before = model.with_suffix(".bin").read_bytes()
    one_error(cli("bench", *argv), message)
    assert model.with_suffix(".bin").read_bytes() == before


# ---- every blocking wait ends on SIGINT and SIGTERM (HOSTILE.md, class 1) ----

# A signal at a blocking point ends the run within this many seconds (the bound).
SIGNAL_EXIT_SECONDS = 5
# How long a test waits for the process to reach its blocking point (a model loads first).
READY_SECONDS = 90


class Process:
    """``bgm-export`` in a process of its own, its stderr lines collected as they come."""

    def __init__(self, *args: object, stdout: int = subprocess.DEVNULL) -> None:
        self.popen = subprocess.Popen([*CLI_COMMAND, *map(str, args)], stdin=subprocess.PIPE, stdout=stdout,
                                      stderr=subprocess.PIPE)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stderr:
            self.lines.append(line.decode(errors="replace"))

    def wait_for(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while not ready():
            assert self.popen.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "never reached its blocking point: " + "".join(self.lines)
            time.sleep(0.02)

    def stop_with(self, signum: int) -> None:
        """``signum`` now: the run ends within SIGNAL_EXIT_SECONDS with 128 + signum and one
        error line, no traceback."""
        self.popen.send_signal(signum)
        try:
            code = self.popen.wait(SIGNAL_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        stderr = "".join(self.lines)
        assert code == 128 + signum, f"exit {code} {stderr}"
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr

    def close(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self._reader.join(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def queued(fd: int) -> int:
    """Bytes waiting in a pipe (either of its ends)."""
    import fcntl
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


@contextlib.contextmanager
def silent_peer(kind: str) -> Iterator[tuple[str, Callable[[], bool]]]:
    """A loopback peer that never sends a byte, and when a matte process is blocked on it:
    ``tcp`` and ``http`` accept the connection and stay silent; ``listen`` is a client that
    connects to matte's ``?listen=1`` and stays silent; ``udp`` is a port nobody sends to."""
    import socket

    sockets: list[socket.socket] = []
    try:
        if kind in ("tcp", "http"):
            server = socket.create_server(("127.0.0.1", 0))
            server.settimeout(0.05)
            sockets.append(server)
            port = server.getsockname()[1]

            def accepted() -> bool:
                with contextlib.suppress(TimeoutError):
                    sockets.append(server.accept()[0])
                return len(sockets) > 1

            url = f"tcp://127.0.0.1:{port}" if kind == "tcp" else f"http://admin:s3cr3tPW@127.0.0.1:{port}/cam.mjpg"
            yield url, accepted
        elif kind == "listen":
            with socket.create_server(("127.0.0.1", 0)) as probe:
                port = probe.getsockname()[1]

            def connected() -> bool:
                client = socket.socket()
                try:
                    client.connect(("127.0.0.1", port))
                except OSError:
                    client.close()
                    return False
                sockets.append(client)
                return True

            yield f"tcp://127.0.0.1:{port}?listen=1", connected
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            yield f"udp://127.0.0.1:{port}", lambda: False
    finally:
        for sock in sockets:
            sock.close()


# Each peer with one of the two signals, each signal at two peers: the wait is the same one.
@pytest.mark.parametrize(
    "kind, signum",
    [("tcp", signal.SIGINT), ("http", signal.SIGTERM), ("listen", signal.SIGTERM), ("udp", signal.SIGINT)],
)
def test_a_signal_ends_a_stream_open_nobody_answers(kind, signum, model, tmp_path):
    """OpenCV's open blocks in FFmpeg for its 30 s default; a signal waited for that."""
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    with silent_peer(kind) as (url, peer_ready):
        process = Process("matte", "--model", model, "--src", url, "--bgr", bgr, "--out", tmp_path / "out",
                          "--open-timeout", 60)  # fmt: skip
        try:
            # Ready: the peer sees matte's connection; a UDP port has no connection to see, so
            # matte's line saying it is opening the stream, then a tick for the open to begin.
            process.wait_for(lambda: any("opening" in line for line in process.lines))
            if kind == "udp":
                time.sleep(0.3)
            else:
                process.wait_for(peer_ready)
            process.stop_with(signum)
        finally:
            process.close()
    assert "s3cr3tPW" not in "".join(process.lines)
    assert not (tmp_path / "out").exists()


def test_a_stream_that_never_answers_is_an_error_after_the_open_timeout(model, tmp_path):
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    with silent_peer("http") as (url, _):
        result = bgm_export("matte", "--model", model, "--src", url, "--bgr", bgr, "--out", tmp_path / "out",
                            "--open-timeout", 1, timeout=60)  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: cannot read stream http://admin:***@127.0.0.1:")
    assert "s3cr3tPW" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_run_whose_output_nobody_reads(signum, model, tmp_path):
    """``--out -`` into a pipe nobody reads: the writes wait forever; a signal ends them."""
    import fcntl

    bgr = save(synthetic_case(192, 320, 0).bgr, tmp_path / "bgr.png")
    process = Process("matte", "--model", model, "--src", "-", "--size", "320x192", "--bgr", bgr, "--out", "-",
                      stdout=subprocess.PIPE)  # fmt: skip
    try:
        frame = raw_bgr([synthetic_case(192, 320, 1).src])  # 184,320 bytes: more than a pipe holds
        threading.Thread(target=lambda: [process.popen.stdin.write(frame) for _ in range(4)], daemon=True).start()
        out = process.popen.stdout.fileno()
        capacity = fcntl.fcntl(out, fcntl.F_GETPIPE_SZ)
        process.wait_for(lambda: queued(out) >= capacity)  # full: matte's next write blocks
        process.stop_with(signum)
    finally:
        process.close()
    assert "standard output stay there" in "".join(process.lines)


@pytest.mark.slow
@pytest.mark.parametrize("where, signum", [("first-frames", signal.SIGTERM), ("silent-stdin", signal.SIGINT)])
def test_a_signal_ends_a_run_waiting_for_piped_frames(where, signum, model, tmp_path):
    """``--bgr first:5`` with one frame sent, and a stdin nobody writes to: the read waits for
    frames that do not come; a signal ends it, and nothing is left."""
    bgr = "first:5" if where == "first-frames" else save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    process = Process("matte", "--model", model, "--src", "-", "--size", "160x96", "--bgr", bgr,
                      "--out", tmp_path / "out")  # fmt: skip
    try:
        stdin = process.popen.stdin
        if where == "first-frames":
            stdin.write(raw_bgr([synthetic_case(96, 160, 1).src]))  # 46,080 bytes: the pipe holds them
            stdin.flush()
            process.wait_for(lambda: queued(stdin.fileno()) == 0)  # read: matte waits for the second
        else:
            process.wait_for(lambda: any((tmp_path / "out").glob(".matte-*")))  # the model is loaded
        process.stop_with(signum)
    finally:
        process.close()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["first-takes-the-image", "first-takes-the-pipe", "empty-stdin"])
def test_zero_frames_matted_is_an_error(case, model, tmp_path):
    scene = synthetic_case(96, 160, 5)
    if case == "first-takes-the-image":
        src, bgr, message = save(scene.src, tmp_path / "src.png"), FirstFrames(1), "first:1 took every frame of"
    elif case == "first-takes-the-pipe":
        src, bgr = Pipe(160, 96, io.BytesIO(raw_bgr([scene.src] * 4))), FirstFrames(4)
        message = "first:4 took every frame of the pipe"
    else:
        src, bgr, message = Pipe(160, 96, io.BytesIO()), save(scene.bgr, tmp_path / "bgr.png"), "gave no frame"
    with pytest.raises(InputError, match=message):
        matte(model, src, bgr, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["stdout-closed", "stdin-closed", "dev-full", "terminal"])
def test_hostile_standard_streams_are_one_line(case, model, tmp_path):
    """Closed standard streams, ``/dev/full`` and a terminal: one error line, exit 2."""
    import os
    import pty

    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    args = [*CLI_COMMAND, "matte", "--model", str(model), "--src", "-", "--size", "160x96", "--bgr", str(bgr)]
    frames = raw_bgr([synthetic_case(96, 160, 1).src] * 2)
    kwargs: dict = {"stdout": subprocess.DEVNULL, "input": frames}
    out, message = ["--out", "-"], "standard output is closed"
    if case == "stdout-closed":
        kwargs["stdout"] = None
        kwargs["preexec_fn"] = lambda: os.close(1)
    elif case == "stdin-closed":
        out, message = ["--out", str(tmp_path / "out")], "standard input is closed"
        kwargs.update(input=None, preexec_fn=lambda: os.close(0))
    elif case == "dev-full":
        kwargs["stdout"] = open("/dev/full", "wb")  # noqa: SIM115 - closed below
        message = "cannot write standard output: No space left on device"
    else:
        leader, follower = pty.openpty()
        kwargs["stdout"], message = follower, "refusing to write it to a terminal"
    try:
        result = subprocess.run([*args, *out], stderr=subprocess.PIPE, timeout=120, **kwargs)
    finally:
        if case == "dev-full":
            kwargs["stdout"].close()
        elif case == "terminal":
            os.close(leader)
            os.close(follower)
    stderr = result.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_a_stream_that_stalls_midway_says_so(model, tmp_path, monkeypatch):
    """A stream that stops sending without closing: FFmpeg's read timeout ends the run, which
    says why instead of passing for the stream's end."""
    from exporter.pipeline import sources

    monkeypatch.setattr(sources, "STREAM_READ_TIMEOUT", 1.0)
    cases = [synthetic_case(96, 160, 70 + i) for i in range(4)]
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    stall = threading.Event()

    class Stalling(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for frame in [c.src for c in cases]:
                jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1]
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                self.wfile.write(head + jpeg.tobytes() + b"\r\n")
                time.sleep(0.1)
            stall.wait(30)  # silent, the connection open

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary = matte(model, Stream(f"http://127.0.0.1:{server.server_port}/v.mjpg"), bgr, out=tmp_path / "out")
    finally:
        stall.set()
        server.shutdown()
        server.server_close()
    assert summary.frames >= 1 and summary.stopped.startswith("a stall")
    assert summary.warnings == [f"stopped early: stream http://127.0.0.1:{server.server_port}/v.mjpg sent no frame "
                                "for 1 s; the frames before it were written"]  # fmt: skip


# ---- output names and the final moves (HOSTILE.md, classes 5 and 7) ----


@pytest.mark.parametrize("source", ["image", "video"])
def test_an_output_name_taken_by_a_folder_is_refused_before_writing(source, model, tmp_path, cli, one_error):
    """A file cannot replace a folder: the run failed at its last move, leaving the files moved before."""
    case = synthetic_case(96, 160, 1)
    bgr = save(case.bgr, tmp_path / "bgr.png")
    if source == "image":
        src, taken = save(case.src, tmp_path / "src.png"), "src_fgr.png"
    else:
        src, taken = write_video(tmp_path / "in.mp4", [case.src] * 2), "composite.mp4"
    (tmp_path / "out" / taken).mkdir(parents=True)
    one_error(cli("matte", "--model", model, "--src", src, "--bgr", bgr, "--out", tmp_path / "out"), "is a folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [taken] and not any((tmp_path / "out" / taken).iterdir())


def test_a_failed_move_puts_back_what_it_replaced(model, tmp_path, monkeypatch):
    """The third move fails: the two results moved before it go, the files they replaced come back."""
    case = synthetic_case(96, 160, 1)
    src, bgr = save(case.src, tmp_path / "src.png"), save(case.bgr, tmp_path / "bgr.png")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("src_alpha.png", "src_composite.png", "notes.txt"):
        (out / name).write_text(f"old {name}")
    real, moves = Path.replace, []

    def failing(self: Path, target: Path) -> Path:
        if ".matte-" in str(self) and ".replaced" not in str(self) and ".replaced" not in str(target):
            moves.append(self.name)
            if len(moves) == 3:
                raise PermissionError(13, "Permission denied", str(target))
        return real(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OutputError, match="cannot move the results into .*none was left"):
        matte(model, src, bgr, out=out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"old {name}" for name in ("src_alpha.png", "src_composite.png", "notes.txt")
    }


@pytest.mark.parametrize("when", ["during-the-moves", "after-the-moves", "during-the-summary"])
def test_a_signal_at_the_end_leaves_all_results_or_none_and_says_which(when, model, tmp_path, cli, monkeypatch):
    """SIGTERM while the results are moved into place left some of them; after they were all in
    place, the run still said that no partial output was left."""
    from exporter import files
    from exporter.errors import raise_terminated
    from exporter.matte import MatteSummary

    for i in range(4):
        save(synthetic_case(96, 160, i).src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    out = tmp_path / "out"

    def terminate_after(function: Callable, test: Callable[..., bool] = lambda *_: True) -> Callable:
        sent = []

        def wrapper(*args: object, **kwargs: object) -> object:
            result = function(*args, **kwargs)
            if not sent and test(*args):
                sent.append(True)
                signal.raise_signal(signal.SIGTERM)  # as `kill` sends it: handled between two statements
            return result

        return wrapper

    if when == "during-the-moves":  # after the first result landed
        monkeypatch.setattr(Path, "replace", terminate_after(Path.replace, lambda item, _: ".matte-" in str(item)))
    elif when == "after-the-moves":  # while the emptied staging folder is removed
        monkeypatch.setattr(files.shutil, "rmtree", terminate_after(files.shutil.rmtree))
    else:
        monkeypatch.setattr(MatteSummary, "lines", terminate_after(MatteSummary.lines))
    previous = signal.signal(signal.SIGTERM, raise_terminated)  # a missed one must not end pytest
    try:
        result = cli("matte", "--model", model, "--src", tmp_path / "frames", "--bgr", bgr, "--out", out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"f{i}_{k}.png" for i in range(4)
                                                         for k in ("alpha", "fgr", "composite"))  # fmt: skip
    assert result.stderr.splitlines()[-1] == f"error: terminated; the run had finished: its output in {out} is complete"


@pytest.mark.parametrize("name", ["concat:t1.mp4|short.mp4", "10:30.mp4", "./10:30.mp4"])
def test_a_video_named_like_a_url_is_read_as_that_file(name, model, tmp_path, monkeypatch):
    """FFmpeg took ``concat:a|b`` for its concat protocol (reading other files) and refused
    ``10:30.mp4`` (an unknown protocol ``10``); outputs and targets are opened the same way."""
    monkeypatch.chdir(tmp_path)
    case = synthetic_case(96, 160, 1)
    write_video(Path("t1.mp4"), [case.src])
    write_video(Path("short.mp4"), [case.src] * 2)
    Path(name).write_bytes(write_video(Path("plain.mp4"), [case.src] * 5).read_bytes())
    Path("14:00.mp4").write_bytes(write_video(Path("plain.mp4"), [case.bgr] * 2).read_bytes())
    bgr = save(case.bgr, Path("bgr.png"))
    summary = matte(model, Path(name), bgr, target=Path("14:00.mp4"), out=Path("at:12"))
    assert summary.frames == 5
    capture = cv2.VideoCapture(str(tmp_path / "at:12/composite.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 5


@pytest.fixture(scope="module")
def nan_model(golden_onnx, tmp_path_factory) -> Path:
    return with_nan_weights(golden_onnx, tmp_path_factory.mktemp("nan") / "nan.onnx")


def test_a_model_answering_nan_is_named_broken_and_writes_nothing(nan_model, tmp_path, cli, one_error):
    """Its alpha was written as black, exit 0, with numpy's cast warning."""
    case = synthetic_case(96, 160, 1)
    src, bgr = save(case.src, tmp_path / "src.png"), save(case.bgr, tmp_path / "bgr.png")
    result = cli("matte", "--model", nan_model, "--src", src, "--bgr", bgr, "--out", tmp_path / "out")
    one_error(result, "nan.onnx answered NaN or infinite values (pha of frame src): the artifact is broken; "
                      "check it with bgm-export verify")  # fmt: skip
    assert "RuntimeWarning" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_model_answering_nan_sends_no_frame_down_a_pipe(nan_model, tmp_path):
    case = synthetic_case(96, 160, 1)
    bgr = save(case.bgr, tmp_path / "bgr.png")
    result = bgm_export("matte", "--model", nan_model, "--src", "-", "--size", "160x96", "--bgr", bgr, "--out", "-",
                        stdin=raw_bgr([case.src] * 3))  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 2 and result.stdout == b"", stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ") and "answered NaN or infinite values" in stderr
    assert "Traceback" not in stderr and "RuntimeWarning" not in stderr
