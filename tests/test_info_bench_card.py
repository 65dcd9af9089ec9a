"""info, bench and card: what they count and write (no timing is asserted)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from exporter.bench import ORIGINAL, BenchReport, BenchRow, bench, format_bench, stage_of
from exporter.config import ExportConfig
from exporter.info import artifact_info, checkpoint_info
from exporter.runtime import LayerTime, default_inference_precision, load_runner
from helpers import GOLDEN_CONFIG

SMALL = ExportConfig(height=128, width=192, sample_pixels=8_000)
SMALL_ARGS = ["--height", "128", "--width", "192", "--sample-pixels", "8000"]
# DeployRefine's stages, and what bench's time by stage may name besides.
DEPLOYED_STAGES = {"downsample", "downsample_half", "backbone", "aspp", "decoder", "error", "select", "crops",
                   "refiner", "compose", "inputs", "other", "convolutions"}  # fmt: skip


def conv_gflops(config: ExportConfig) -> dict[str, float]:
    """Hand count of the deployed graph's convolutions and matrix products outside the
    paper's blocks (exporter.model.deploy), 2 x MACs a computed output. Stage one: conv1 as
    two row-phase convolutions of the coarse map padded by 2 (48 channels out, 37 in),
    conv1_image on the half-resolution image padded by 3 (24 out, 6 in), conv2 (16 out);
    and on the four strips at the image's edges (8 half-resolution rows or columns) as the
    original computes it: conv1 on 37 + 6 channels, conv2. Stage two on the K patches side
    by side in one wide image, the columns between patches computed too: conv3 as 2x2
    kernels for 4 phases of 12 channels on 4-row windows, conv3_image 3x3 on 8-row crops,
    conv4 3x3. Outside the paper's blocks: the fixed 3x3 kernels upsampling the coarse
    alpha and foreground (4 maps), one per output phase, and the matrices averaging the
    downsampled inputs' columns (blocks of 32 columns to 32 / factor pixels, for both
    inputs' three channels, at half resolution and at the backbone's), and the 1x1 copies
    of the coarse map's err, pha and fgr channels."""
    k, half, coarse = config.patches, (config.height // 2, config.width // 2), (config.height // 4, config.width // 4)
    assert config.backbone_scale == 0.25

    def stage_one(rows: int, cols: int) -> int:  # conv1 (43 in) and conv2 on a padded map
        return (rows + 4) * (cols + 4) * 24 * 43 * 9 + (rows + 2) * (cols + 2) * 16 * 24 * 9

    stage1 = (
        2 * (coarse[0] + 2) * (coarse[1] + 2) * 48 * 37 * 9
        + (half[0] + 4) * (half[1] + 4) * 24 * 6 * 9
        + (half[0] + 2) * (half[1] + 2) * 16 * 24 * 9
        + 2 * stage_one(8, half[1])
        + 2 * stage_one(half[0], 8)
    )
    stage2 = 48 * (4 * k - 1) * 3 * 16 * 4 + 12 * (8 * k - 2) * 6 * 6 * 9 + 4 * (8 * k - 4) * 4 * 12 * 9
    factor = round(1 / config.backbone_scale)
    small = (config.height // factor) * (config.width // factor)
    assert config.width % 32 == 0
    columns = sum(2 * 3 * (config.height // f) * config.width * 32 // f for f in (2, factor))
    picks = small * 37 * 5  # 1x1 copies of the coarse map's err, and pha and fgr
    return {"refiner": 2 * (stage1 + stage2) / 1e9, "other": 2 * (4 * small * factor**2 * 9 + columns + picks) / 1e9}


def test_onnx_info(golden_onnx):
    info = artifact_info(golden_onnx)
    for block, gflops in conv_gflops(GOLDEN_CONFIG).items():
        assert info.gflops_by_block[block] == pytest.approx(gflops, rel=1e-9), block
    assert set(info.gflops_by_block) == {"backbone", "aspp", "decoder", "refiner", "other"}
    assert info.nodes < info.nodes_before_simplify
    # The 5,006,839 trainable ones with batch norms folded (4,989,243), plus what the
    # deployed graph rearranged: conv1 as two row-phase 3x3 kernels of the coarse map (48
    # out, 37 in, one bias shared), conv3 as four 2x2 kernels a phase, conv1's zero weights
    # for the error channel, the upsampling kernels (the alpha's, and the foreground's in
    # 0..255 steps), the head's clamp bounds, the downsampling's column averages (32 x 16
    # and 32 x 8) and the 1x1 copies of the coarse map's channels (37 x 5).
    assert info.graph_parameters == 5_024_143
    # 65 in the original; conv1 and conv3 gain an image half, conv3 is one a row phase (2),
    # conv1 is two row phases on the whole map and, with conv1_image and conv2, runs again on
    # the four strips at the edges (12), 2 copy channels of the coarse map (1x1), and 16
    # upsample the coarse alpha and the foreground's three planes (4 a plane).
    assert info.ops["Conv"] == 99 and "NonZero" not in info.ops
    assert info.metadata["color_order"] == "BGR"


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_ir_info_counts_the_same_flops(precision, golden_onnx, golden_irs):
    xml = golden_irs[precision]
    info = artifact_info(xml)
    assert info.gflops == pytest.approx(artifact_info(golden_onnx).gflops, rel=1e-6)
    assert info.files == {str(p): p.stat().st_size for p in (xml, xml.with_suffix(".bin"))}
    assert info.metadata["resolution"] == "192x320" and info.metadata["precision"] == precision


@pytest.mark.slow
def test_checkpoint_info_at_720p(weights):
    info = checkpoint_info(ExportConfig(), weights)
    assert info.trainable_parameters == 5_006_839
    # The base network alone is 6.69 GFLOPs, the published figure's bulk. The refiner added
    # 4.74 on 5,000 patches' windows; deployed, its first stage runs on the whole
    # half-resolution map (exporter.model.deploy), and the upsampling kernels are "other".
    base = sum(v for k, v in info.gflops_by_block.items() if k not in ("refiner", "other"))
    assert base == pytest.approx(6.6903, abs=1e-3)
    assert info.gflops_by_block["refiner"] == pytest.approx(conv_gflops(ExportConfig())["refiner"], rel=1e-9)


def test_info_cli(golden_onnx, tmp_path, cli, one_error):
    result = cli("info", golden_onnx, "--json", tmp_path / "i.json")
    assert result.exit_code == 0, result.output
    assert "GFLOPs" in result.stdout and "Conv 99" in result.stdout
    assert json.loads((tmp_path / "i.json").read_text())["format"] == "onnx"
    one_error(cli("info", tmp_path / "none.onnx"), "does not exist")


@pytest.mark.parametrize(
    ("name", "kind", "stage"),
    [
        ("/refiner/conv1_phases.0/Conv/WithoutBiases", "Convolution", "convolutions"),
        ("/compose/upsample/Conv_2", "GroupConvolution", "convolutions"),
        ("/refiner/Gather_6", "Gather", "refiner"),
        ("/downsample_half_1/MatMul", "FullyConnected", "downsample_half"),  # the module's second call
        ("/decoder/Resize_3", "Interpolate", "decoder"),
        ("src_f32_bf16_/downsample/Reshape", "Reorder", "inputs"),  # the input's conversion
        ("/Reshape_abcd_acdb_/refiner/conv3_image/Conv", "Reorder", "refiner"),  # counts for what it feeds
        ("/refiner/Pad_1_acdb_abcd_/compose/Reshape_24", "Reorder", "compose"),
        ("/Concat_1", "Concatenation", "other"),  # the top level's own ops
        ("/Div/fq_output_0", "Subgraph", "other"),
        ("VariadicSplit_9383", "VariadicSplit", "other"),
        ("fgr", "Subgraph", "other"),
    ],
)
def test_stage_of(name, kind, stage):
    assert stage_of(LayerTime(name, kind, "jit_avx512", 1.0), ["src", "bgr"]) == stage


def bench_rows(golden_irs) -> list[tuple[str, str, str, str]]:
    """bench's rows in order (name, runtime, weights, arithmetic): eager PyTorch and ONNX
    Runtime in f32, then each IR in f32 and, on a CPU whose default is another (bf16 where it
    has it), in that one too: one row an IR where the default is f32 (AVX2-only CPUs)."""
    auto = load_runner(golden_irs["FP32"], "openvino", inference_precision="auto").inference_precision
    irs = [("IR FP32", "FP32"), ("IR FP16", "FP16"), ("IR INT8", "INT8"), (ORIGINAL, "FP32")]
    return [("eager PyTorch", "torch", "FP32", "f32"), ("ONNX", "onnxruntime", "FP32", "f32")] + [
        (name, "openvino", weights, arithmetic) for name, weights in irs for arithmetic in dict.fromkeys(("f32", auto))
    ]


def check_ratios(ratios: list[dict], rows: list[dict]) -> None:
    """Every IR against the original recipe's IR in its own arithmetic, each ratio from the two
    rows' own numbers."""
    irs = [r for r in rows if r["runtime"] == "openvino" and r["name"] != ORIGINAL]
    assert [(ratio["row"], ratio["against"]) for ratio in ratios] == [
        (f"{r['name']} ({r['inference']})", f"{ORIGINAL} ({r['inference']})") for r in irs
    ]
    for ratio, row in zip(ratios, irs, strict=True):
        (peer,) = [r for r in rows if r["name"] == ORIGINAL and r["inference"] == row["inference"]]
        assert ratio["latency"] == pytest.approx(peer["median_ms"] / row["median_ms"]), (ratio, row, peer)
        assert ratio["throughput"] == pytest.approx(row["throughput_fps"] / peer["throughput_fps"]), (ratio, row, peer)


@pytest.mark.slow
def test_bench_small(weights, golden_irs, bench_without_pauses):
    """Which rows, in which arithmetic, and each row's numbers derived from its own timings."""
    report = bench(SMALL, weights, runs=1, profile=True)
    rows = report.rows
    assert [(r.name, r.runtime, r.precision, r.inference) for r in rows] == bench_rows(golden_irs)
    eager = rows[0]
    assert (eager.speedup_latency, eager.speedup_throughput) == (1.0, 1.0)
    for r in rows:
        assert r.p90_ms == r.median_ms, r.label  # one timed run: its own 90th percentile
        assert r.speedup_latency == pytest.approx(eager.median_ms / r.median_ms), r.label
        assert r.speedup_throughput == pytest.approx(r.throughput_fps / eager.throughput_fps), r.label
        if r.runtime != "openvino":  # one request at a time: throughput is the latency's inverse
            assert r.throughput_fps == pytest.approx(1000 / r.median_ms), r.label
    # Each row's GFLOP/s from what its graph computes: the exported graph's count for ours,
    # the original arithmetic (every sampled patch's 8x8 window, as refined in the plain
    # graph) for the eager model and the original recipe's IR.
    exported = checkpoint_info(SMALL, weights)
    k = SMALL.patches
    plain_refiner = 2 * k * (36 * 42 * 24 * 9 + 16 * 24 * 16 * 9 + 36 * 22 * 12 * 9 + 16 * 12 * 4 * 9) / 1e9
    original = sum(exported.gflops_by_block[b] for b in ("backbone", "aspp", "decoder")) + plain_refiner
    for r in rows:
        expected = original if r.name in ("eager PyTorch", ORIGINAL) else exported.gflops
        assert r.gflops == pytest.approx(expected, rel=1e-6), r.label
    # The ten costliest layers of one request, costliest first, and the convolutions' share of
    # it: OpenVINO's counters, so for the IRs only.
    for r in rows:
        if r.runtime == "openvino":
            times = [layer.milliseconds for layer in r.profile]
            assert len(times) == 10 and times == sorted(times, reverse=True), r.label
            assert len({layer.name for layer in r.profile}) == 10 and 0 < r.conv_share <= 1, r.label
            # The same request's time by stage: convolutions first, the rest costliest first.
            convolutions, *rest = r.time_by_stage.items()
            assert convolutions[0] == "convolutions", r.label
            assert [ms for _, ms in rest] == sorted((ms for _, ms in rest), reverse=True), r.label
            # The stages hold every profiled layer: the ten costliest are in them.
            assert sum(r.time_by_stage.values()) >= sum(times) * (1 - 1e-9), r.label
            if r.name != ORIGINAL:  # the deployed graph's named stages, each with work outside convolutions
                assert {"refiner", "compose", "crops", "select"} <= set(r.time_by_stage) <= DEPLOYED_STAGES, r.label
        else:
            assert r.profile == [] and r.conv_share is None and r.time_by_stage == {}, r.label
    check_ratios(report.to_dict()["ratios"], report.to_dict()["rows"])
    text = format_bench(report)
    assert f"{rows[1].gflops:.2f} GFLOP a frame as exported ({eager.gflops:.2f} as the original computes it)" in text
    # One table and one stage line a row: no two rows share a label.
    ir_rows = [r for r in rows if r.runtime == "openvino"]
    assert len({r.label for r in rows}) == len(rows)
    assert text.count("Top layers, ") == len(ir_rows)
    for r in ir_rows:
        assert sum(line.startswith(f"  {r.label}: convolutions ") for line in text.splitlines()) == 1, r.label


RATIO = re.compile(r"^(.+ \(\w+\)) vs (.+ \(\w+\)): latency x([\d.]+), throughput x([\d.]+)$", re.M)


@pytest.mark.slow
def test_bench_cli(tmp_path, golden_irs, cli, one_error, bench_without_pauses):
    result = cli("bench", *SMALL_ARGS, "--runs", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    # Every field of the report (its config as resolution and sample pixels) and of each row.
    report_fields = {f.name for f in dataclasses.fields(BenchReport)} - {"config"}
    assert set(data) == report_fields | {"resolution", "sample_pixels", "ratios"}
    assert (data["resolution"], data["sample_pixels"]) == ([128, 192], 8000)
    assert data["checkpoint"] == "synthetic bgmv2-synthetic-v1 seed 0"
    row_fields = {f.name for f in dataclasses.fields(BenchRow)} | {"gflops_per_second"}
    assert all(set(row) == row_fields for row in data["rows"])
    rows = data["rows"]
    assert [(r["name"], r["runtime"], r["precision"], r["inference"]) for r in rows] == bench_rows(golden_irs)
    for r in rows:
        assert r["gflops_per_second"] == pytest.approx(r["gflops"] * r["throughput_fps"]), r["name"]
        assert r["profile"] == [] and r["time_by_stage"] == {}  # without --profile
    check_ratios(data["ratios"], rows)
    # The lines printed are the JSON's ratios, rounded.
    printed = RATIO.findall(result.stdout)
    assert printed == [
        (ratio["row"], ratio["against"], f"{ratio['latency']:.2f}", f"{ratio['throughput']:.2f}")
        for ratio in data["ratios"]
    ]
    one_error(cli("bench", "--runs", "0"), "Invalid value for '--runs'")


def test_card(golden_onnx, golden_irs, tmp_path, cli):
    target = tmp_path / "card.md"
    result = cli("card", golden_onnx, golden_irs["FP16"], "--cases", "1", "--output", target)
    assert result.exit_code == 0, result.output
    text = target.read_text()
    info = artifact_info(golden_onnx)
    assert f"| GFlops | {info.gflops:.4f} |" in text
    assert f"| MParams | {info.graph_parameters / 1e6:.3f} |" in text
    assert "| Metric | Original model | Converted model |" in text and "| alpha MAD |" in text
    assert "Expected color order: `BGR`" in text and "Made from synthetic weights" in text
    assert "shape: `1, 3, 192, 320`" in text
    assert "Precisions (changes against the original model on the same cases):" in text
    assert "| ms per frame (verify, one request, that arithmetic) |" in text
    assert "| Arithmetic | f32 |" in text  # every accuracy and speed figure says its arithmetic
    # ONNX Runtime, OpenVINO on the .onnx and on the FP16 IR: in f32, and in the device's
    # default arithmetic (OpenVINO's) where it differs.
    reduced = 0 if default_inference_precision() == "f32" else 2
    assert text.count("| PASSED |") == 3 + reduced


@pytest.mark.slow
def test_card_specification_does_not_depend_on_the_order_of_its_artifacts(int8_ir, golden_irs, weights):
    """MParams and GFlops come from the most exact artifact given, and an INT8 IR counts its
    8-bit weights: 5.025 MParams whichever artifact comes first (0.065 when INT8 came first)."""
    from exporter.card import model_card
    from exporter.verify import verify

    paths = [int8_ir, golden_irs["FP32"]]
    report = verify(paths, weights, cases=1)
    infos = [artifact_info(path) for path in paths]
    assert infos[0].graph_parameters == infos[1].graph_parameters == 5_025_126
    cards = [model_card(report, infos), model_card(report, infos[::-1])]
    specification = [
        [line for line in card.splitlines() if line.startswith(("| MParams", "| GFlops"))] for card in cards
    ]
    assert specification[0] == specification[1]
    assert "| MParams | 5.025 |" in specification[0]


@pytest.mark.slow
def test_card_refuses_artifacts_of_different_models(golden_onnx, weights, tmp_path, cli, one_error):
    from exporter.export.onnx import export_onnx

    other = export_onnx(ExportConfig(height=128, width=192, sample_pixels=4000), weights, tmp_path / "s.onnx").path
    target = tmp_path / "card.md"
    one_error(
        cli("card", golden_onnx, other, "--cases", "1", "--output", target),
        "describes one model at one resolution; these artifacts are mobilenetv2 128x192, mobilenetv2 192x320",
    )
    assert not target.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--height", "128", "--width", "192", "--json", "FILE/b.json"],
        ["verify", "ONNX", "--json", "FILE/v.json"],
        ["card", "ONNX", "--output", "FILE/card.md"],
    ],
    ids=["bench", "verify", "card"],
)
def test_outputs_are_checked_before_the_work(argv, golden_onnx, tmp_path, cli, one_error):
    (tmp_path / "file").write_text("x")
    places = {"ONNX": str(golden_onnx), "FILE": str(tmp_path / "file")}
    result = cli(*(re.sub("ONNX|FILE", lambda m: places[m[0]], arg) for arg in argv))
    one_error(result, "is not a folder")
    assert "exporting" not in result.stderr and "reference" not in result.stderr


def test_info_of_a_graph_whose_shapes_are_unknown_is_one_error_line(tmp_path, cli, one_error):
    """An ONNX that is not ours (a Conv whose weight nothing gives): no FLOPs to count, said in
    one line naming the node, not a KeyError."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "none"], ["y"], name="c" * 500)], "g", [x], [y])
    path = tmp_path / "other.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    result = cli("info", path)
    one_error(result, "cannot count the FLOPs of Conv node")
    assert "c" * 101 not in result.stderr


def test_bench_leaves_out_the_int8_row_where_int8_is_refused(weights):
    """bench of a trained model at 360p exported ONNX, FP32 and FP16, then died on INT8's size
    floor: the row is left out, with the reason, before any export."""
    import dataclasses

    from exporter.bench import ir_precisions
    from exporter.settings import resolve_export

    config, _ = resolve_export(preset="360p")
    trained = dataclasses.replace(weights, synthetic=False, label="sha256:" + "0" * 64)
    precisions, notes = ir_precisions(config, trained)
    assert precisions == ["FP32", "FP16"] and len(notes) == 1 and "is refused: below 921,600 pixels" in notes[0]
    assert ir_precisions(config, weights) == (["FP32", "FP16", "INT8"], [])  # synthetic: its own bars
    assert ir_precisions(config.replace(height=720, width=1280, sample_pixels=80_000), trained)[1] == []
