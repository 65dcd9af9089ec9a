"""matte: files written for images, folders and video, their values, and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from exporter.align import estimate_alignment
from exporter.cli import app
from exporter.errors import InputError, OutputError
from exporter.matte import Matter, letterbox, matte
from exporter.runtime import load_runner
from exporter.tolerances import OFF_BY_ONE_LEVEL
from exporter.verify.data import room_case, synthetic_case

runner = CliRunner()


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
    summary = matte(model, src, bgr, target="0,255,0", out=tmp_path / "out")
    assert summary.frames == 1 and not summary.warnings
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["src_alpha.png", "src_composite.png", "src_fgr.png"]

    matter = Matter(load_runner(model, "openvino", f32=False), case.bgr)
    expected = matter.model_outputs(case.src)
    alpha = read(tmp_path / "out/src_alpha.png")
    assert alpha.shape == (192, 320) and alpha.dtype == np.uint8
    assert np.abs(alpha / 255 - expected["pha"][0, 0]).max() <= OFF_BY_ONE_LEVEL

    rgba = read(tmp_path / "out/src_fgr.png")
    assert rgba.shape == (192, 320, 4) and np.array_equal(rgba[..., 3], alpha)
    green = np.zeros((192, 320, 3), np.uint8)
    green[..., 1] = 255
    result = matter(case.src, green)
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
    summary = matte(model, src, bgr, target=str(target), out=tmp_path / "out")
    assert summary.warnings == ["background 400x300 resized to the source's 200x150"]
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


def test_video_in_video_out(model, tmp_path):
    cases = [synthetic_case(96, 160, 20 + i) for i in range(5)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    target = write_video(tmp_path / "target.mp4", [c.bgr for c in cases[:2]])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    result = runner.invoke(
        app, ["matte", "--model", str(model), "--src", str(video), "--bgr", str(bgr), "--target", str(target),
              "--out", str(tmp_path / "out")],
    )  # fmt: skip
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
    summary = matte(model, video, bgr, out=tmp_path / "out", outputs="alpha,composite-png")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"frame_{i:06d}_{kind}.png" for i in range(3) for kind in ("alpha", "composite")]
    assert summary.frames == 3 and set(summary.timings) == {"decode", "prepare", "model", "write"}
    assert 0 < summary.model_share <= 1


def test_folder_outputs_chosen(model, tmp_path):
    for i in range(2):
        save(synthetic_case(96, 160, i).src, tmp_path / "frames" / f"f{i}.png")
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    matte(model, tmp_path / "frames", bgr, out=tmp_path / "out", outputs="composite")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0_composite.png", "f1_composite.png"]
    # For images, composite and composite-png name the same file: written once.
    matte(model, tmp_path / "frames", bgr, out=tmp_path / "both", outputs="composite-png,composite")
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
def test_bad_input_is_one_line_exit_two_and_writes_nothing(case, message, model, tmp_path):
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
    argv = ["matte", *[str(v) for pair in args.items() for v in pair], *extra]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    # The one error line (a progress bar's label may stand before it when stderr is no terminal).
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.stderr
    out = tmp_path / "out"
    assert not out.is_dir() or list(out.iterdir()) == []


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
        summary = matte(model, src, bgr, out=tmp_path / label, align=align, outputs="alpha")
        runs[label] = read(tmp_path / label / "src_alpha.png").astype(float) / 255
        if align:
            assert summary.alignment.startswith("frame 0: shift (") and "inliers" in summary.alignment
    aligned = np.abs(runs["aligned"] - runs["exact"]).mean()
    moved = np.abs(runs["moved"] - runs["exact"]).mean()
    # Random weights magnify the warp's interpolation blur; trained ones far less (closing note).
    assert aligned < 0.6 * moved, (aligned, moved)


@pytest.mark.parametrize("size", [(192, 320), (720, 1280)])
def test_estimated_homography_undoes_the_hand_movement(size):
    case, room = room_case(*size, 3)
    alignment = estimate_alignment(case.bgr, case.src)
    warped = alignment.warp(case.bgr, case.src).astype(float)
    seen = case.pha < 0.01  # where the background shows
    before = np.abs(case.bgr.astype(float) - room)[seen].mean()
    after = np.abs(warped - room)[seen].mean()
    assert after < before / 8, (before, after)
    assert abs(abs(alignment.rotation) - 1.0) < 0.1


def test_align_on_a_textureless_background_is_refused(model, tmp_path):
    case, _ = room_case(96, 160, 4)
    src = save(case.src, tmp_path / "src.png")
    flat = save(np.full((96, 160, 3), 128, np.uint8), tmp_path / "flat.png")
    result = runner.invoke(
        app, ["matte", "--model", str(model), "--src", str(src), "--bgr", str(flat), "--align",
              "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot align the background: 0 features found")
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_unknown_output_kind_is_refused(model, tmp_path):
    good = save(synthetic_case(96, 160, 1).src, tmp_path / "good.png")
    result = runner.invoke(
        app, ["matte", "--model", str(model), "--src", str(good), "--bgr", str(good), "--outputs", "alpha,depth",
              "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--outputs 'alpha,depth': depth is not one of composite, alpha, foreground, composite-png" in result.stderr


def test_video_that_stops_decoding_midway_is_an_error(model, tmp_path):
    path = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 96))
    for i in range(20):
        writer.write(synthetic_case(96, 160, i).src)
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the index says 20 frames
    bgr = save(synthetic_case(96, 160, 0).bgr, tmp_path / "bgr.png")
    result = runner.invoke(
        app, ["matte", "--model", str(model), "--src", str(path), "--bgr", str(bgr), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "stopped decoding at frame 10 of 20" in errors[0], result.stderr
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


def test_target_video_is_streamed_in_a_loop(model, tmp_path):
    cases = [synthetic_case(96, 160, 40 + i) for i in range(5)]
    video = write_video(tmp_path / "in.mp4", [c.src for c in cases])
    target = write_video(tmp_path / "target.mp4", [np.full((96, 160, 3), v, np.uint8) for v in (0, 255)])
    bgr = save(cases[0].bgr, tmp_path / "bgr.png")
    matte(model, video, bgr, target=str(target), out=tmp_path / "out", outputs="alpha,foreground,composite-png")
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
        matte(model, video, bgr, out=tmp_path / "out", outputs="composite,alpha", on_frame=interrupt)
    assert not (tmp_path / "out").exists()  # the folder matte created is gone too


@pytest.mark.slow
def test_bench_matte_measures_both_sides(model):
    from exporter.bench import bench_matte, format_matte_bench

    result = bench_matte(model, frames=6)
    assert result.frames == 6 and result.resolution == (192, 320)
    assert result.model_fps > 0 and result.matte_fps > 0 and 0 < result.model_share <= 1
    assert "of the model's" in format_matte_bench(result)


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(model, tmp_path, monkeypatch):
    import errno

    import exporter.matte as matte_module

    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matte_module, "_save_png", full)
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
