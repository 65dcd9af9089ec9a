"""The original's other published forms of the weights as ``--checkpoint``: TorchScript
archives (fp32, fp16) and ONNX exports (six outputs or the fork's two), built here small from
our model (``originals.py``), and every file that must be refused."""

from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import pytest
import torch
from originals import (
    op_global,
    op_int,
    op_module,
    op_string,
    op_tensor,
    op_tuple,
    original_onnx,
    script_archive,
    script_pickle,
    set_declared_size,
    torchscript_archive,
)

from exporter.checkpoint import build_model, resolve_weights
from exporter.errors import CheckpointError
from exporter.files import sha256_of
from exporter.weight_formats import read_torchscript
from helpers import BACKBONES, GOLDEN_CONFIG


@pytest.fixture(scope="module")
def originals(tmp_path_factory, weights) -> dict[str, Path]:
    """The MobileNetV2 synthetic weights in each published form."""
    root = tmp_path_factory.mktemp("originals")
    return {
        "torchscript_fp32": torchscript_archive(weights, root / "torchscript_mobilenetv2_fp32.pth"),
        "torchscript_fp16": torchscript_archive(weights, root / "torchscript_mobilenetv2_fp16.pth", half=True),
        "onnx_six": original_onnx(weights, root / "onnx_mobilenetv2_hd.onnx", outputs=6),
        "onnx_two": original_onnx(weights, root / "bgm_mobilenetv2.onnx", outputs=2, opset=11, dynamic=False),
    }


def outputs_of(weights, config=GOLDEN_CONFIG) -> list[torch.Tensor]:
    torch.manual_seed(1)
    src, bgr = torch.rand(1, 3, config.height, config.width), torch.rand(1, 3, config.height, config.width)
    with torch.no_grad():
        return list(build_model(config, weights)(src, bgr))


@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six", "onnx_two"])
def test_every_form_gives_the_same_model(form, originals, weights):
    resolved = resolve_weights(originals[form])
    kind = form.split("_")[0]
    assert resolved.kind == kind and resolved.backbone == "mobilenetv2" and not resolved.synthetic
    assert resolved.label.startswith(f"sha256:{sha256_of(originals[form])} ({kind}")
    for ours, theirs in zip(outputs_of(resolved), outputs_of(weights), strict=True):
        assert float((ours - theirs).abs().max()) < 1e-5


def test_torchscript_fp32_holds_exactly_the_state_dict(originals, weights):
    resolved = resolve_weights(originals["torchscript_fp32"])
    assert set(resolved.state_dict) == set(weights.state_dict)
    assert all(torch.equal(resolved.state_dict[k], weights.state_dict[k]) for k in weights.state_dict)


def test_torchscript_fp16_is_cast_and_labelled(originals, weights):
    resolved = resolve_weights(originals["torchscript_fp16"])
    assert "float16 weights cast to float32" in resolved.label
    assert all(v.dtype != torch.float16 for v in resolved.state_dict.values())
    for ours, theirs in zip(outputs_of(resolved)[:2], outputs_of(weights)[:2], strict=True):
        assert float((ours - theirs).abs().mean()) < 3e-3  # the FP16 bar's mean |d|


@pytest.mark.slow
def test_torchscript_settings_are_the_exports_defaults(originals, tmp_path, weights, cli):
    path = torchscript_archive(
        weights, tmp_path / "t.pth", backbone_scale=0.125, refine_mode="thresholding", refine_threshold=0.2
    )
    resolved = resolve_weights(path)
    assert resolved.settings == {
        "backbone_scale": 0.125, "refine_mode": "thresholding", "sample_pixels": 256, "threshold": 0.2
    }  # fmt: skip
    assert "used as this export's defaults" in resolved.warning
    result = cli("onnx", "--checkpoint", path, "--height", 128, "--width", 128, "--threshold", 0.3,
                 "--output", tmp_path / "m.onnx", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert (metadata["backbone_scale"], metadata["refine_mode"], metadata["threshold"]) == (
        "0.125",
        "thresholding",
        "0.3",
    )
    assert metadata["checkpoint_format"] == "torchscript" and metadata["checkpoint"] == resolved.label
    assert "states backbone scale 0.125" in result.stderr


@pytest.mark.parametrize("form", ["onnx_six", "onnx_two"])
def test_onnx_settings_are_read_from_the_graph(form, originals):
    resolved = resolve_weights(originals[form])
    assert resolved.settings == {"backbone_scale": 0.25, "refine_mode": "sampling", "sample_pixels": 16_000}
    assert "batch norms folded" in resolved.label


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_backbone_is_detected_from_a_torchscript_archive(backbone, recipe_weights, tmp_path):
    path = torchscript_archive(recipe_weights(backbone), tmp_path / f"torchscript_{backbone}_fp32.pth")
    assert resolve_weights(path).backbone == backbone


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six"])
def test_cli_exports_from_each_form_and_names_it(form, originals, tmp_path, cli):
    out = tmp_path / "m.onnx"
    result = cli("onnx", "--checkpoint", originals[form], "--height", 64, "--width", 64, "--sample-pixels", 256,
                 "--output", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["checkpoint_format"] == form.split("_")[0]
    assert metadata["checkpoint"].startswith(f"sha256:{sha256_of(originals[form])}")


# --- refusals ------------------------------------------------------------------------------


def code_in_data_pkl(tmp_path: Path) -> Path:
    """A TorchScript-looking archive whose data.pkl would run a shell command."""

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/code/__torch__.py", "")
        archive.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
    return path


def another_torchscript(tmp_path: Path) -> Path:
    path = tmp_path / "linear.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def another_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "other.onnx"
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    torch.onnx.export(conv.eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, input_names=["x"])
    return path


def two_inputs_other_net(tmp_path: Path) -> Path:
    """Two inputs like ours, the right number of convolutions, one of the wrong shape."""
    path = tmp_path / "close.onnx"
    model = onnx.load(str(tmp_path.parent / "originals0" / "onnx_mobilenetv2_hd.onnx"))
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == first.input[1])
    array = onnx.numpy_helper.to_array(weight)[:, :, :1, :1].copy()  # a 1x1 stem instead of 3x3
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path))
    return path


def prevent_oversampling_off(tmp_path: Path, weights) -> Path:
    return torchscript_archive(weights, tmp_path / "no-prevent.pth", prevent_oversampling=False)


def truncated_torchscript(tmp_path: Path, originals) -> Path:
    path = tmp_path / "cut.pth"
    path.write_bytes(originals["torchscript_fp32"].read_bytes()[:100_000])
    return path


REFUSED = {
    "code-in-data-pkl": (code_in_data_pkl, "was refused: its TorchScript data holds more than modules and tensors"),
    "torchscript-of-another-network": (another_torchscript, "is not a BackgroundMattingV2 MobileNetV2 TorchScript"),
    "onnx-of-another-network": (another_onnx, "is an ONNX model with inputs ['x'], not BackgroundMattingV2's"),
    "onnx-with-a-wrong-conv": (two_inputs_other_net, "does not match the BackgroundMattingV2 MobileNetV2 at backbone"),
    "prevent-oversampling-off": (prevent_oversampling_off, "sets refine_prevent_oversampling = False"),
    "truncated-torchscript": (truncated_torchscript, "is truncated or corrupt"),
}


def make_refused(kind, tmp_path, originals, weights) -> tuple[Path, str]:
    build, fragment = REFUSED[kind]
    params = build.__code__.co_varnames[: build.__code__.co_argcount]
    extra = {"weights": weights, "originals": originals}
    return build(tmp_path, *(extra[p] for p in params[1:])), fragment


@pytest.mark.parametrize("kind", REFUSED)
def test_a_file_of_another_kind_is_refused_with_one_line(kind, tmp_path, originals, weights, cli, one_error):
    path, fragment = make_refused(kind, tmp_path, originals, weights)
    with pytest.raises(CheckpointError, match=None) as info:
        resolve_weights(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    result = cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx")
    one_error(result, fragment)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pwned").exists()


def test_an_artifact_of_this_project_is_pointed_to_ir(golden_onnx, tmp_path, cli, one_error):
    result = cli("onnx", "--checkpoint", golden_onnx, "--output", tmp_path / "m.onnx")
    one_error(
        result, f"is an artifact of bgm-export, not a checkpoint: convert it with `bgm-export ir --onnx {golden_onnx}`"
    )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six"])
def test_the_wrong_backbone_option_is_refused(form, originals, tmp_path, cli, one_error):
    result = cli("onnx", "--checkpoint", originals[form], "--backbone", "resnet50", "--output", tmp_path / "m.onnx")
    one_error(result, "holds the MobileNetV2 model, but --backbone resnet50 was given")
    assert not (tmp_path / "m.onnx").exists()


def test_the_builders_make_what_the_original_publishes(originals):
    six, two = (onnx.load(str(originals[k])) for k in ("onnx_six", "onnx_two"))
    assert [o.name for o in six.graph.output] == ["pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"]
    assert [o.name for o in two.graph.output] == ["pha", "fgr"]
    assert six.opset_import[0].version == 12 and two.opset_import[0].version == 11
    assert {"RoiAlign", "ScatterElements", "NonZero"} <= {n.op_type for n in six.graph.node}
    assert six.graph.input[0].type.tensor_type.shape.dim[2].dim_param  # dynamic height
    assert np.all([d.HasField("dim_value") for d in two.graph.input[0].type.tensor_type.shape.dim])


# --- 720p parity (the bar): slow ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six", "onnx_two"])
def test_each_form_exports_to_the_fp32_bars_at_720p(form, weights, tmp_path):
    from exporter.config import PRESETS
    from exporter.export.onnx import export_onnx
    from exporter.verify import verify

    build = {
        "torchscript_fp32": lambda p: torchscript_archive(weights, p, refine_sample_pixels=80_000),
        "onnx_six": lambda p: original_onnx(weights, p, size=(288, 512), sample_pixels=80_000),
        "onnx_two": lambda p: original_onnx(weights, p, outputs=2, opset=11, dynamic=False, size=(720, 1280),
                                            sample_pixels=80_000),
    }[form]  # fmt: skip
    source = resolve_weights(build(tmp_path / f"{form}.{'onnx' if 'onnx' in form else 'pth'}"))
    config = PRESETS["720p"].replace(**source.settings)
    assert config == PRESETS["720p"]  # the file states the HD settings it was made with
    artifact = export_onnx(config, source, tmp_path / "m.onnx").path
    report = verify([artifact], weights, cases=1, inference_precision="f32")  # the eager model of the original
    assert report.passed, [(a.name, a.outputs) for a in report.artifacts]


@pytest.mark.slow
def test_the_fp16_torchscript_meets_the_fp16_bars(originals, weights, tmp_path):
    from exporter.export.openvino import export_ir_from_weights
    from exporter.verify import verify

    source = resolve_weights(originals["torchscript_fp16"])
    xml = export_ir_from_weights(GOLDEN_CONFIG, source, tmp_path / "FP16" / "m.xml", "FP16").xml
    report = verify([xml], weights, cases=1, inference_precision="f32")
    assert report.passed and {a.precision for a in report.artifacts} == {"FP16"}


def test_the_built_original_onnx_computes_the_originals_goldens(originals, golden, golden_rgb):
    import onnxruntime as ort

    from exporter.verify.compare import BARS, compare_output

    session = ort.InferenceSession(str(originals["onnx_six"]), providers=["CPUExecutionProvider"])
    pha, fgr, _, _, err_sm, ref_sm = session.run(None, {"src": golden_rgb[0].numpy(), "bgr": golden_rgb[1].numpy()})
    for name, got, key in (("pha", pha, "sampling_pha"), ("fgr", fgr, "sampling_fgr"), ("err_sm", err_sm, "coarse_err"),
                           ("ref_sm", ref_sm, "sampling_ref")):  # fmt: skip
        assert compare_output(name, golden[key], got, BARS["FP32"]).passed, name


# --- hostile and real-world files (issue 27: HOSTILE.md section 2) --------------------------


class TypedAttributes(torch.nn.Module):
    """Every attribute type a scripted module writes with a typed-list or type-tag global."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("row", self.lin.weight.detach()[0])  # shares the weight's storage
        # Attribute types given as objects: this file's annotations are strings, which TorchScript cannot read.
        typed = {
            "ints": ([1, 2], list[int]), "floats": ([0.5], list[float]), "flags": ([True, False], list[bool]),
            "pair": ((1, 2.0, "x"), tuple[int, float, str]), "counts": ({"a": 1}, dict[str, int]),
            "maybe": (3, Optional[int]), "nothing": (None, Optional[int]),
            "tensors": ([torch.ones(2), torch.zeros(3)], list[torch.Tensor]),
        }  # fmt: skip
        for name, (value, kind) in typed.items():
            setattr(self, name, torch.jit.Attribute(value, kind))
        self.scale = 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_a_scripted_module_with_every_attribute_type_is_read(tmp_path):
    # Refused before: "Unsupported global: GLOBAL torch.jit._pickle.build_intlist".
    path = tmp_path / "typed.pth"
    module = TypedAttributes().eval()
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = read_torchscript(path)
    assert set(loaded.state_dict) == {"lin.weight", "lin.bias", "row"}  # list attributes are not weights
    assert torch.equal(loaded.state_dict["lin.weight"], module.lin.weight)
    assert torch.equal(loaded.state_dict["row"], module.lin.weight[0])


def test_the_torchscript_builder_writes_what_a_scripted_original_does(originals):
    # torch.jit.script of the original's modules writes typed lists (Conv2d's padding) and
    # the hoisted settings; a traced inner model, as this builder made before, writes neither.
    with zipfile.ZipFile(originals["torchscript_fp32"]) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert "torch.jit._pickle build_intlist" in found
    assert all(name.encode() in data for name in ("refine_prevent_oversampling", "refine_sample_pixels"))
    assert b"_reversed_padding_repeated_twice" in data and b"_is_full_backward_hook" in data  # a List, an Optional


def nested(depth: int) -> bytes:
    root = op_module({})
    for _ in range(depth):
        root = op_module({"child": root})
    return script_pickle(root)


def a_cycle() -> bytes:
    # The module is memoized (BINPUT 0) and named as its own child (BINGET 0).
    return script_pickle(op_global("__torch__", "M") + b")\x81q\x00}(" + op_string("child") + b"h\x00ub")


def with_global(module: str, name: str) -> bytes:
    return script_pickle(op_module({"x": op_global(module, name) + op_tuple([op_string("id")]) + b"R"}))


def one_tensor(numel: int, size: tuple, stride: tuple, offset: int = 0) -> bytes:
    return script_pickle(op_module({"weight": op_tensor("0", numel, size, stride, offset)}))


# kind -> (data.pkl, storages, deflated, what the one error line says)
HOSTILE_ARCHIVES = {
    "5000-nested-objects": (nested(5000), {}, False, "nests objects over 64 deep"),
    "a-module-that-holds-itself": (a_cycle(), {}, False, "nests objects over 64 deep"),
    "os-system": (with_global("os", "system"), {}, False, "Unsupported global: GLOBAL os.system"),
    "builtins-eval": (with_global("builtins", "eval"), {}, False, "Unsupported global: GLOBAL builtins.eval"),
    "builtins-getattr": (with_global("builtins", "getattr"), {}, False, "GLOBAL builtins.getattr"),
    "torch-load": (with_global("torch", "load"), {}, False, "Unsupported global: GLOBAL torch.load"),
    "quantized-tensor": (with_global("torch._utils", "_rebuild_qtensor"), {}, False, "a quantized tensor"),
    "storage-larger-than-its-tensor": (
        one_tensor(16 << 20, (2, 3), (3, 1)), {"0": bytes(64 << 20)}, True,
        "has a storage 0 of 16777216 elements where its tensors reach 6",
    ),
    "tensor-beyond-its-storage": (
        one_tensor(6, (2, 3), (3, 1), offset=3), {"0": bytes(24)}, False,
        "a tensor of size [2, 3] that reaches element 9 of storage 0, which holds 6",
    ),
    "gigabytes-claimed": (
        one_tensor(750_000_000, (750_000_000,), (1,)), {"0": bytes(24)}, False, "claims 6.0 GB of tensors",
    ),
    "negative-size": (one_tensor(6, (-2, 3), (3, 1)), {"0": bytes(24)}, False, "not a tuple of non-negative"),
    "entry-shorter-than-its-tensor": (
        one_tensor(6, (2, 3), (3, 1)), {"0": bytes(20)}, False, "entry archive/data/0 holds 20 bytes, not the 24",
    ),
    "storage-key-with-a-path": (
        script_pickle(op_module({"w": op_tensor("../data.pkl", 1, (1,), (1,))})), {}, False, "plain key",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE_ARCHIVES)
def test_a_hostile_torchscript_archive_is_one_error_line(kind, tmp_path, cli, one_error, monkeypatch):
    data_pkl, storages, deflate, fragment = HOSTILE_ARCHIVES[kind]
    path = script_archive(tmp_path / f"{kind}.pth", data_pkl, storages, deflate)
    inflated = []
    read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, n=-1: inflated.append(read(self, n)) or inflated[-1])
    with pytest.raises(CheckpointError) as info:
        resolve_weights(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert sum(map(len, inflated)) < 1 << 20  # refused before a storage is inflated
    monkeypatch.undo()
    one_error(cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx"), fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_an_entry_whose_header_lies_about_its_size_is_refused(tmp_path):
    # The header says the 24 bytes the tensor needs; the entry inflates to 64 MB. Reading stops
    # at what the header said, and the entry's checksum gives the lie away.
    path = script_archive(tmp_path / "lie.pth", one_tensor(6, (2, 3), (3, 1)), {"0": bytes(64 << 20)}, deflate=True)
    set_declared_size(path, "archive/data/0", 24)
    with pytest.raises(CheckpointError, match="is a damaged TorchScript archive: BadZipFile"):
        resolve_weights(path)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "data.pkl"])
def test_archive_entries_outside_or_twice_are_refused(name, tmp_path, originals):
    path = tmp_path / "entries.pth"
    path.write_bytes(originals["torchscript_fp32"].read_bytes())
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        if name == "data.pkl":  # a second data.pkl: zip readers differ on which one counts
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        archive.writestr(name, b"x")
    fragment = "two archive entries named" if name.endswith("data.pkl") else "outside the archive"
    with pytest.raises(CheckpointError, match=fragment):
        resolve_weights(path)


def with_setting(archive: Path, path: Path, attribute: str, value: bytes) -> Path:
    """``archive`` with the value of its top module's ``attribute`` replaced by the opcodes ``value``."""
    with zipfile.ZipFile(archive) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    data = entries[name]
    ops = list(pickletools.genops(data))
    at = next(i for i, (op, arg, _) in enumerate(ops) if op.name == "BINUNICODE" and arg == attribute) + 1
    while ops[at][0].name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):  # the name's memo entry
        at += 1
    start, end = ops[at][2], ops[at + 1][2]
    entries[name] = data[:start] + value + data[end:]
    with zipfile.ZipFile(path, "w") as target:
        for entry, content in entries.items():
            target.writestr(entry, content)
    return path


# Settings a wrapper may state that the original never does: before, 10**5000 was a
# traceback where the warning printed it (ValueError: Exceeds the limit (4300 digits)), a
# 5 MB refine mode was printed whole, the others went on to fail later or not at all.
STATED = {
    "sample-pixels-10**5000": ("refine_sample_pixels", op_int(10**5000), "states sample pixels <an integer of"),
    "sample-pixels-negative": ("refine_sample_pixels", op_int(-16), "states sample pixels -16, which is not a whole"),
    "sample-pixels-a-string": ("refine_sample_pixels", op_string("256"), "states sample pixels 256, which is not"),
    "scale-nan": ("backbone_scale", pickle.dumps(float("nan"), 2)[2:-1], "states backbone scale nan, which is not"),
    "scale-huge-int": ("backbone_scale", op_int(10**5000), "states backbone scale <an integer of"),
    "threshold-2": ("refine_threshold", op_int(2), "states threshold 2, which is not a number in [0.0, 1.0]"),
    "refine-mode-5MB": ("refine_mode", op_string("m" * (5 << 20)), "(5,242,880 characters), which is not one of"),
}  # fmt: skip


@pytest.mark.parametrize("kind", STATED)
def test_a_stated_setting_out_of_range_is_one_short_error_line(kind, originals, tmp_path, cli, one_error):
    attribute, value, fragment = STATED[kind]
    path = with_setting(originals["torchscript_fp32"], tmp_path / "stated.pth", attribute, value)
    with pytest.raises(CheckpointError) as info:
        resolve_weights(path)
    assert fragment in str(info.value) and len(str(info.value)) < 500, str(info.value)[:500]
    one_error(cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx"), fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_the_rewritten_setting_is_the_one_read(originals, tmp_path):
    # The helper above changes the value it names, and only it (else its tests prove nothing).
    path = with_setting(originals["torchscript_fp32"], tmp_path / "stated.pth", "refine_sample_pixels", op_int(4096))
    assert read_torchscript(path).settings["sample_pixels"] == 4096
    assert read_torchscript(originals["torchscript_fp32"]).settings["sample_pixels"] == 256


@pytest.mark.parametrize(("method", "fragment"), [(zipfile.ZIP_DEFLATED, "zlib: "), (zipfile.ZIP_LZMA, "LZMAError: ")])
def test_a_corrupt_compressed_entry_is_one_error_line(method, fragment, tmp_path, cli, one_error):
    # Before: zlib.error / _lzma.LZMAError tracebacks from inflating data.pkl.
    path = tmp_path / "corrupt.pth"
    data_pkl = script_pickle(op_module({"x": op_string("".join(map(str, range(3000))))}))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl, compress_type=method)
        archive.writestr("archive/code/__torch__.py", "")
        header = archive.getinfo("archive/data.pkl").header_offset
    data = bytearray(path.read_bytes())
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    for i in range(start + 30, start + 80):  # inside the compressed stream, past its header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"is a damaged TorchScript archive: {fragment}"):
        resolve_weights(path)
    one_error(cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx"), "is a damaged TorchScript archive")


# --- ONNX with external data -----------------------------------------------------------------


@pytest.fixture(scope="module")
def external(originals, tmp_path_factory) -> Path:
    """The six-output original with its weights in ``weights.bin`` beside it."""
    folder = tmp_path_factory.mktemp("external")
    model = onnx.load(str(originals["onnx_six"]))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return folder / "model.onnx"


def copy_of(external: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "weights.bin"):
        (folder / name).write_bytes((external.parent / name).read_bytes())
    return folder / "model.onnx"


def test_external_data_is_read_from_the_models_folder_not_the_current_one(external, weights, tmp_path, monkeypatch):
    # Before: run from elsewhere it tracebacked; with a same-named file in the current folder it
    # exported that file's weights and exited 0.
    decoy = tmp_path / "elsewhere"
    decoy.mkdir()
    (decoy / "weights.bin").write_bytes(bytes(len((external.parent / "weights.bin").read_bytes())))
    monkeypatch.chdir(decoy)
    resolved = resolve_weights(external)
    for ours, theirs in zip(outputs_of(resolved), outputs_of(weights), strict=True):
        assert float((ours - theirs).abs().max()) < 1e-5
    data_sha = sha256_of(external.parent / "weights.bin")
    assert resolved.label.startswith(f"sha256:{sha256_of(external)} (onnx, ")
    assert f"external data weights.bin sha256:{data_sha}" in resolved.label


def test_another_data_file_beside_the_same_onnx_changes_the_label(external, tmp_path):
    model = copy_of(external, tmp_path / "changed")
    data = bytearray((model.parent / "weights.bin").read_bytes())
    data[-4:] = np.float32(0.5).tobytes()
    (model.parent / "weights.bin").write_bytes(bytes(data))
    assert sha256_of(model) == sha256_of(external)
    assert resolve_weights(model).label != resolve_weights(external).label


def point_first_initializer(model_path: Path, **fields: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {e.key: e.value for e in tensor.external_data} | fields
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    model_path.write_bytes(model.SerializeToString())


EXTERNAL_REFUSALS = {
    "absolute": ({"location": "/etc/passwd"}, "outside the model's folder"),
    "parent": ({"location": "../../x"}, "outside the model's folder"),
    "missing": ({"location": "nowhere.bin"}, "which is not in the model's folder"),
    "link-outside": ({"location": "link.bin"}, "a link that leaves the model's folder"),
    "offset-beyond": ({"offset": str(1 << 40)}, "which holds"),
    "length-wrong": ({"length": "4"}, "4 bytes of external data where its dims need"),
    "offset-not-a-number": ({"offset": "²"}, "offset or length that is not a number"),
}


@pytest.mark.parametrize("kind", EXTERNAL_REFUSALS)
def test_external_data_outside_the_folder_or_the_file_is_refused(kind, external, tmp_path, cli, one_error):
    fields, fragment = EXTERNAL_REFUSALS[kind]
    model = copy_of(external, tmp_path / "m")
    (tmp_path / "outside.bin").write_bytes((external.parent / "weights.bin").read_bytes())
    (model.parent / "link.bin").symlink_to(tmp_path / "outside.bin")
    point_first_initializer(model, **fields)
    with pytest.raises(CheckpointError) as info:
        resolve_weights(model)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    one_error(cli("onnx", "--checkpoint", model, "--output", tmp_path / "out.onnx"), fragment)


@pytest.mark.parametrize(
    ("dims", "fragment"),
    [([100000, 100000, 3, 3], "(360 GB), beyond the 1.1 GB"), ([-1, 3, 3, 3], "a negative dimension"),
     ([16, 6, 3, 4], "whose data does not fill them")],
)  # fmt: skip
def test_an_initializer_whose_dims_its_data_does_not_fill_is_refused(
    dims, fragment, originals, tmp_path, cli, one_error
):
    # Before: ValueError traceback (cannot reshape array of size 0 into shape ...).
    model = onnx.load(str(originals["onnx_six"]))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    del weight.dims[:]
    weight.dims.extend(dims)
    if dims[0] == 100000:
        weight.ClearField("raw_data")
    path = tmp_path / "dims.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError) as info:
        resolve_weights(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    one_error(cli("onnx", "--checkpoint", path, "--output", tmp_path / "out.onnx"), fragment)


def test_a_long_conv_name_is_shown_short_with_the_file(originals, tmp_path):
    # Before: "Conv node <5 MB of name> has no constant weight", without the file's name.
    model = onnx.load(str(originals["onnx_six"]))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.name, conv.input[1] = "n" * (1 << 20), "none"
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError, match=f"checkpoint {path} has a Conv node n+\\.\\.\\. ") as info:
        resolve_weights(path)
    assert len(str(info.value)) < 500
