"""The deployed graph (exporter.model.deploy): the same numbers as the plain graph, the
same patches, and none of the full-resolution data movement it was built to remove."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F

from exporter.checkpoint import build_model
from exporter.config import ExportConfig
from exporter.data import synthetic_case
from exporter.export.onnx import BGRInputs, export_module, export_onnx
from exporter.images import to_model_input
from exporter.model.deploy import STRIP, DeployRefine, Downsample, Upsample, _nearest_then_conv, deploy_applies
from exporter.tolerances import FP32_ATOL
from helpers import GOLDEN_CONFIG


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsample_is_the_bilinear_resize(factor):
    x = torch.rand(3, 1, 9, 13)
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(Upsample(factor)(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsampled_alpha_needs_no_clamp(factor, dtype):
    """Compose does not clamp the upsampled alpha: each phase's weights are dyadic
    fractions summing to exactly 1, so from 0..1 (ones and their neighbours below
    included) no rounded sum leaves 0..1, in f32 or bf16."""
    upsample = Upsample(factor).to(dtype)
    assert torch.equal(upsample.kernel.float().sum((1, 2, 3)), torch.ones(factor * factor))
    x = torch.rand(1, 1, 31, 47)
    x[x > 0.6] = 1.0
    x[(x > 0.3) & (x < 0.6)] = 1.0 - 2.0**-24 * torch.randint(1, 8, (1,)).item()
    y = upsample(x.to(dtype))
    assert 0.0 <= y.min() and y.max() <= 1.0 and (y == 1.0).any()


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("columns", [5, 12, 40])  # blocks of the width itself, of 16 and of 32
def test_downsample_is_the_bilinear_resize(factor, columns):
    x = torch.rand(1, 3, 8 * factor, columns * factor) * 255
    expected = F.interpolate(x, (8, columns), mode="bilinear", align_corners=False)
    torch.testing.assert_close(Downsample(factor)(x), expected, rtol=0, atol=1e-4)


def test_nearest_upsampling_then_conv_is_one_conv_per_phase():
    weight, x = torch.randn(12, 16, 3, 3), torch.randn(5, 16, 4, 4)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight)
    got = F.pixel_shuffle(F.conv2d(x, _nearest_then_conv(weight)), 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes, applies",
    [
        ({}, True),
        ({"backbone_scale": 0.5}, True),
        ({"backbone_scale": 0.125}, True),
        ({"refine_mode": "thresholding"}, False),
        ({"refine_mode": "full"}, False),
        ({"dynamic": True}, False),
    ],
)
def test_which_configurations_are_deployed(changes, applies, weights):
    config = GOLDEN_CONFIG.replace(**changes)
    assert deploy_applies(build_model(config, weights), config.dynamic) is applies


def test_other_refiners_are_not_deployed(weights):
    model = build_model(GOLDEN_CONFIG, weights)
    for attribute, value in [("kernel_size", 1), ("prevent_oversampling", False)]:
        changed = copy.deepcopy(model)
        setattr(changed.refiner, attribute, value)
        assert not deploy_applies(changed, dynamic=False), attribute


def _both(model, config: ExportConfig, seed: int = 3) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    case = synthetic_case(config.height, config.width, seed=seed)
    src, bgr = (torch.from_numpy(to_model_input(image)) for image in (case.src, case.bgr))
    outputs = ("pha", "fgr", "err_sm", "ref_sm")
    with torch.no_grad():
        return BGRInputs(model, outputs)(src, bgr), DeployRefine(model, outputs)(src, bgr)


@pytest.mark.parametrize(
    "backbone, changes",
    [
        ("mobilenetv2", {}),
        ("mobilenetv2", {"backbone_scale": 0.5}),
        ("mobilenetv2", {"height": 256, "width": 384, "backbone_scale": 0.125}),
        # Every patch refined: the border patches' crops and windows reach into the padding.
        ("mobilenetv2", {"height": 64, "width": 96, "sample_pixels": 64 * 96}),
        ("mobilenetv2", {"height": 128, "width": 192, "backbone_scale": 0.125, "sample_pixels": 128 * 192}),
        # Half-resolution sides of 2 mod 4: the right strip starts at an odd pixel pair.
        ("mobilenetv2", {"height": 100, "width": 100, "sample_pixels": 100 * 100}),
        ("resnet50", {}),
    ],
)
def test_same_numbers_and_same_patches_as_the_plain_graph(backbone, changes, recipe_weights):
    config = GOLDEN_CONFIG.replace(backbone=backbone, **changes)
    plain, deployed = _both(build_model(config, recipe_weights(backbone)), config)
    for name, a, b in zip(("pha", "fgr", "err_sm"), plain, deployed, strict=False):
        torch.testing.assert_close(b, a, rtol=0, atol=FP32_ATOL, msg=name)
    assert torch.equal(deployed[3], plain[3]), "a different set of patches was refined"


@pytest.mark.parametrize("positive", [0.0, 0.2])
def test_patches_without_error_keep_the_coarse_value(positive, weights):
    """prevent_oversampling: with the error map zero but at ``positive`` of the patches
    (fewer than are sampled), the top-k patches include ones whose error is not positive,
    which keep the coarse result."""
    model = build_model(GOLDEN_CONFIG, weights)
    case = synthetic_case(GOLDEN_CONFIG.height, GOLDEN_CONFIG.width, seed=3)
    with torch.no_grad():
        src, bgr = (torch.from_numpy(to_model_input(image))[:, [2, 1, 0]] / 255 for image in (case.src, case.bgr))
        small = F.interpolate(torch.cat([src, bgr], dim=1), scale_factor=0.25, mode="bilinear")
        err = model.coarse(small)[2]
        # Shift the error head's bias so that the top ``positive`` of the map stays above 0.
        shift = torch.quantile(err.flatten(), 1 - positive).item() if positive else 2.0
        model.decoder.conv4.bias[4] -= shift
    plain, deployed = _both(model, GOLDEN_CONFIG)
    refined = int(plain[3].sum())
    assert refined == 0 if not positive else 0 < refined < GOLDEN_CONFIG.patches
    for a, b in zip(plain[:2], deployed[:2], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=FP32_ATOL)
    assert torch.equal(deployed[3], plain[3])


def _full_resolution_data_movement(path: Path, height: int, width: int) -> list[str]:
    """Resizes, pads, transposes, concatenations and gathers whose output is at full
    resolution (or the plain graph's padded full and half resolution): what the deployed
    graph does without, but for the concatenation of ``fgr``'s three planes (each the sum
    of an upsampled plane and the source's plane of the same colour, written by OpenVINO
    into the concatenation's memory: the source's channels are not reversed in a copy)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.value_info, *model.graph.output]
    }
    large = {(height, width), (height + 4, width + 4), (height // 2 + 6, width // 2 + 6)}
    found = []
    for node in model.graph.node:
        shape = shapes.get(node.output[0], [])
        if node.op_type in ("Resize", "Pad", "Transpose", "Concat", "Gather") and tuple(shape[-2:]) in large:
            found.append(f"{node.op_type} {node.name} -> {shape}")
    return found


def test_no_full_resolution_resize_pad_or_copy(golden_onnx):
    found = _full_resolution_data_movement(golden_onnx, GOLDEN_CONFIG.height, GOLDEN_CONFIG.width)
    assert [line.split()[0] for line in found] == ["Concat"] and found[0].endswith("[3, 1, 192, 320]")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(golden_onnx)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    ops = [node.op_type for node in model.graph.node]
    # Besides the decoder's four Resizes, the refiner's resize the coarse maps only on the
    # four strips at the image's edges (conv1 reads the whole coarse map through its row
    # phases); one TopK; no depth-to-space (the phases of conv1, conv3 and the upsampled
    # planes are interleaved a whole row at a time).
    resized = [shapes[n.output[0]][2:] for n in model.graph.node if n.op_type == "Resize" and "/refiner/" in n.name]
    half = (GOLDEN_CONFIG.height // 2, GOLDEN_CONFIG.width // 2)
    assert sorted(resized) == sorted([[8, half[1]], [8, half[1]], [half[0], 8], [half[0], 8]])
    assert ops.count("Resize") == 8 and ops.count("TopK") == 1
    assert "DepthToSpace" not in ops and "ConvTranspose" not in ops


def test_inputs_are_downsampled_by_rows_and_a_column_matrix(golden_onnx):
    """No average pool: each input's two rows are added whole and its columns averaged by a
    constant 32-row matrix, at half resolution and at the backbone's (a 2x2 average pool
    ran at a third of memory speed on the CPU, and each input was converted to bf16 twice)."""
    model = onnx.load(str(golden_onnx))
    constants = {init.name: init.dims for init in model.graph.initializer}
    constants |= {n.output[0]: n.attribute[0].t.dims for n in model.graph.node if n.op_type == "Constant"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert sorted(n.name.split("/")[1] for n in matmuls) == [
        "downsample",
        "downsample_1",
        "downsample_half",
        "downsample_half_1",
    ]
    assert sorted(tuple(constants[n.input[1]]) for n in matmuls) == [(32, 8), (32, 8), (32, 16), (32, 16)]
    assert not any(n.op_type in ("AveragePool", "Resize") and "downsample" in n.name for n in model.graph.node)


def test_patch_selection_does_not_read_the_heads_activation(golden_onnx):
    """err is copied from the head's output (a 1x1 convolution) and clamped on its own: the
    CPU plugin keeps in f32 whatever feeds an output without a convolution between, and the
    patch indices feed the outputs, so a clamp of all 37 channels before the top k ran in
    f32 between two conversions. Walked back to the head's convolution, through the copy."""
    model = onnx.load(str(golden_onnx))
    producer = {out: node for node in model.graph.node for out in node.output}
    (topk,) = [n for n in model.graph.node if n.op_type == "TopK"]
    seen, todo = [], [topk.input[0]]
    while todo:
        node = producer.get(todo.pop())
        if node is None or (node.op_type == "Conv" and not node.name.startswith("/error/")):
            continue
        seen.append(node.op_type)
        todo.extend(node.input)
    assert "Clip" in seen and not {"Min", "Max"} & set(seen), seen


def test_refiner_windows_are_gathered_two_pixels_an_index(golden_onnx):
    """The stage-one windows are gathered as 32-float rows (two pixels of 16 channels), 8
    an index a patch, in one gather from one table: the whole map's pairs, then the four
    strips' at the image's edges (a 16-float row an index ran 7 times slower on the CPU; a
    gather from each with a choice between them cost two more passes over the windows)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(golden_onnx)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.name.startswith("/refiner/")]
    assert [shapes[n.output[0]] for n in gathers] == [[GOLDEN_CONFIG.patches * 8, 32]]
    half = (GOLDEN_CONFIG.height // 2, GOLDEN_CONFIG.width // 2)
    pairs, strips = (half[0] + 2) * (half[1] + 2) // 2, 2 * STRIP * (half[1] + 2) // 2 + 2 * (half[0] + 2) * STRIP // 2
    assert shapes[gathers[0].input[0]] == [pairs + strips, 32]
    windows = [GOLDEN_CONFIG.patches * 8, 32]
    assert not [n.name for n in model.graph.node if n.op_type == "Where" and windows in map(shapes.get, n.input)]


def test_the_structure_check_catches_the_plain_graph(weights, tmp_path):
    plain = export_module(
        BGRInputs(build_model(GOLDEN_CONFIG, weights)).eval(), GOLDEN_CONFIG, "x", tmp_path / "p.onnx"
    )
    found = _full_resolution_data_movement(plain.path, GOLDEN_CONFIG.height, GOLDEN_CONFIG.width)
    assert any(line.startswith("Resize") for line in found) and any(line.startswith("Pad") for line in found)


def test_other_modes_export_the_plain_graph(weights, tmp_path):
    config = GOLDEN_CONFIG.replace(refine_mode="thresholding")
    path = export_onnx(config, weights, tmp_path / "t.onnx").path
    assert _full_resolution_data_movement(path, config.height, config.width)


def test_verify_catches_a_wrong_rearrangement(weights, tmp_path):
    """A mistake of the kind the rearrangement risks, each phase of conv3's nearest
    upsampling written to its mirror position, is caught by verify's FP32 bars."""
    from exporter.verify import verify

    module = DeployRefine(build_model(GOLDEN_CONFIG, weights), GOLDEN_CONFIG.outputs).eval()
    with torch.no_grad():  # conv3[a]'s channel b * 12 + c holds phase (a, b): swap (0, 1) and (1, 0)
        first, second = (conv.weight for conv in module.refiner.conv3)
        first[12:], second[:12] = second[:12].clone(), first[12:].clone()
    broken = export_module(module, GOLDEN_CONFIG, weights.label, tmp_path / "broken.onnx").path
    report = verify([broken], weights, cases=1, inference_precision="f32")
    assert not report.passed
    assert all(not a.outputs["pha"] for a in report.artifacts)
