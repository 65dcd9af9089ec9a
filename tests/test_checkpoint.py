"""Checkpoint loading: accepted layouts, weight resolution, and every bad input."""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from exporter.checkpoint import (
    build_model,
    default_checkpoint,
    detect_backbone,
    filter_checkpoint,
    read_checkpoint,
    resolve_weights,
)
from exporter.config import ExportConfig
from exporter.errors import CheckpointError
from exporter.files import sha256_of


@pytest.fixture(scope="module")
def official(tmp_path_factory, weights) -> Path:
    """A file laid out like the official pytorch_mobilenetv2.pth: a plain state_dict."""
    path = tmp_path_factory.mktemp("ckpt") / "pytorch_mobilenetv2.pth"
    torch.save(weights.state_dict, path)
    return path


def same_tensors(a, b) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model_state_dict": sd},
        lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        lambda sd: {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
    ],
    ids=["plain", "state_dict", "model_state_dict", "module-prefix", "wrapped-and-prefixed"],
)
def test_accepted_layouts(wrap, weights, tmp_path):
    path = tmp_path / "c.pth"
    torch.save(wrap(weights.state_dict), path)
    assert same_tensors(read_checkpoint(path), weights.state_dict)


def test_filter_checkpoint_strips_only_module_prefix(weights):
    out = filter_checkpoint({"module.a.module.b": torch.zeros(1)})
    assert list(out) == ["a.module.b"]


def test_explicit_checkpoint_is_hashed_and_loads_strictly(official, weights):
    resolved = resolve_weights(official)
    assert resolved.label == f"sha256:{sha256_of(official)}" and not resolved.synthetic
    model = build_model(ExportConfig(), resolved)
    assert same_tensors(model.state_dict(), weights.state_dict)


def test_default_path_is_used_when_present(official, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = default_checkpoint()
    assert default == Path("checkpoints/pytorch_mobilenetv2.pth")
    default.parent.mkdir()
    os.symlink(official, default)
    assert resolve_weights(None).source == str(default)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory, recipe_weights) -> Path:
    """A file laid out like the official pytorch_resnet50.pth."""
    path = tmp_path_factory.mktemp("ckpt") / "pytorch_resnet50.pth"
    torch.save(recipe_weights("resnet50").state_dict, path)
    return path


def test_backbone_is_read_from_the_checkpoint(resnet50_file, recipe_weights):
    resolved = resolve_weights(resnet50_file)
    assert resolved.backbone == "resnet50" and not resolved.synthetic
    model = build_model(ExportConfig(backbone="resnet50"), resolved)
    assert same_tensors(model.state_dict(), recipe_weights("resnet50").state_dict)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50", "resnet101"])
def test_detect_backbone(backbone, recipe_weights):
    # ResNet-50's keys are a subset of ResNet-101's: detection must not take one for the other.
    assert detect_backbone(recipe_weights(backbone).state_dict) == backbone


def test_default_path_per_backbone(resnet50_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = default_checkpoint("resnet50")
    assert default == Path("checkpoints/pytorch_resnet50.pth")
    default.parent.mkdir()
    os.symlink(resnet50_file, default)
    assert resolve_weights(None, "resnet50").source == str(default)
    assert resolve_weights(None).synthetic  # MobileNetV2 users' default is unchanged


def test_backbone_option_must_agree_with_checkpoint(official, resnet50_file):
    with pytest.raises(CheckpointError, match="holds the MobileNetV2 model, but --backbone resnet50 was given"):
        resolve_weights(official, "resnet50")
    with pytest.raises(CheckpointError, match="holds the ResNet-50 model, but --backbone resnet101 was given"):
        resolve_weights(resnet50_file, "resnet101")
    assert resolve_weights(resnet50_file, "resnet50").backbone == "resnet50"


def test_unknown_backbone_is_refused():
    with pytest.raises(CheckpointError, match="backbone 'vgg16' is not one of mobilenetv2, resnet50, resnet101"):
        resolve_weights(None, "vgg16")


def test_weights_of_another_backbone_do_not_build(weights):
    with pytest.raises(CheckpointError, match="holds the MobileNetV2 model, not the ResNet-101 model"):
        build_model(ExportConfig(backbone="resnet101"), weights)


def test_synthetic_fallback_warns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = resolve_weights(None)
    assert resolved.synthetic and resolved.label == "synthetic bgmv2-synthetic-v1 seed 0"
    assert "mean nothing for real images" in resolved.warning


def test_synthetic_fallback_per_backbone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = resolve_weights(None, "resnet101")
    assert resolved.synthetic and resolved.backbone == "resnet101"
    assert resolved.label == "synthetic bgmv2-synthetic-v1 seed 0 resnet101"
    assert "checkpoints/pytorch_resnet101.pth" in resolved.warning and "ResNet-101" in resolved.warning


class Exploit:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def partial_resnet50_state_dict() -> dict[str, torch.Tensor]:
    keys = ["backbone.conv1.weight", "backbone.bn1.weight", "aspp.convs.0.0.weight"]
    keys += [f"backbone.layer3.{i}.conv1.weight" for i in range(6)]
    return {k: torch.zeros(1) for k in keys}


def _with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor.view(-1)[0] = float("nan")
    return tensor


# Numerically broken weights: kind -> (the key broken, how, what the message must say).
BROKEN_VALUES = {
    "nan": ("decoder.conv1.weight", _with_nan, "has NaN or infinite values in 1 tensor: decoder.conv1.weight"),
    "inf": (
        "refiner.conv4.bias",
        lambda t: torch.full_like(t, float("inf")),
        "has NaN or infinite values in 1 tensor: refiner.conv4.bias",
    ),
    "integer-weights": (
        "aspp.project.0.weight",
        lambda t: t.to(torch.int32),
        "has aspp.project.0.weight of type int32; weights must be floating point",
    ),
    "bool-weights": (
        "decoder.bn1.weight",
        lambda t: t > 0,
        "has decoder.bn1.weight of type bool; weights must be floating point",
    ),
    "complex-weights": (
        "refiner.conv1.weight",
        lambda t: t.to(torch.complex64),
        "has refiner.conv1.weight of type complex64; weights must be floating point",
    ),
    "meta-tensor": (
        "decoder.conv2.weight",
        lambda t: torch.empty(t.shape, device="meta"),
        "holds no values for decoder.conv2.weight (a meta-device tensor)",
    ),
    "sparse-tensor": (
        "decoder.conv4.bias",
        lambda t: t.to_sparse(),
        "has a sparse tensor decoder.conv4.bias; weights must be dense",
    ),
}


def with_data_pkl(path: Path, data_pkl: bytes) -> Path:
    """A torch.save archive whose data.pkl is ``data_pkl``."""
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as archive:
        for name in source.namelist():
            archive.writestr(name, data_pkl if name.endswith("data.pkl") else source.read(name))
    return path


# Damaged data.pkl -> what torch's weights_only unpickler raised before (a traceback, exit 1).
DAMAGED_PICKLES = {
    "pickle-underflow": b"\x80\x02s.",  # IndexError: pop from empty list
    "pickle-missing-memo": b"\x80\x02h\x07.",  # KeyError: 7
    "pickle-memo-255": b"\x80\x02h\xff\xff",  # KeyError: 255
    "pickle-unhashable-key": b"\x80\x02}]K\x01s.",  # TypeError: unhashable type: 'list'
    "pickle-storage-type-int": (  # AttributeError: 'int' object has no attribute 'dtype'
        b"\x80\x02}X\x01\x00\x00\x00a(X\x07\x00\x00\x00storageK\x05X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQs."
    ),
    "pickle-no-mark": b"\x80\x02}K\x01K\x02u.",  # SETITEMS without a MARK: IndexError
    "pickle-short-int": b"\x80\x02J\x00",  # struct.error: unpack requires a buffer of 4 bytes
}
# Protocols torch.save writes on request that torch.load(weights_only=True) cannot read;
# before: "refused: it holds Python objects or code (Unsupported operand 149)", after two
# lines of UserWarning.
UNREADABLE_PROTOCOLS = {"pickle-protocol-0": 0, "pickle-protocol-1": 1, "pickle-protocol-4": 4, "pickle-protocol-5": 5}


def make_bad(kind: str, tmp: Path, official: Path, weights) -> tuple[Path, str]:
    """Write one bad checkpoint; return its path and a fragment the message must carry."""
    path = tmp / f"{kind}.pth"
    sd = OrderedDict(weights.state_dict)
    if kind == "missing":
        return tmp / "nope.pth", "does not exist"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "truncated":
        path.write_bytes(official.read_bytes()[:5_000_000])
        return path, "truncated or corrupt"
    if kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
        return path, "looks like a PNG image"
    if kind == "onnx":
        path.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(100))  # a damaged ONNX file
        return path, "is not a readable ONNX model"
    if kind == "text":
        path.write_text("hello")
        return path, "is not a PyTorch file: its first bytes match no known format"
    if kind == "pickle-with-code":
        torch.save({"x": Exploit(tmp / "pwned")}, path)
        return path, "refused: it holds Python objects or code"
    if kind == "legacy-pickle-with-code":  # the pre-1.6 torch.save format, a bare pickle
        path.write_bytes(pickle.dumps({"x": Exploit(tmp / "pwned")}, protocol=2))
        return path, "refused: it holds Python objects or code"
    if kind == "not-a-dict":
        torch.save([torch.zeros(1)], path)
        return path, "not-a-dict.pth holds a list, not a state_dict"
    if kind == "partial-resnet50":  # detected as ResNet-50, then found wanting key by key
        torch.save(partial_resnet50_state_dict(), path)
        return path, "not a BackgroundMattingV2 ResNet-50 state_dict: 385 missing keys: backbone.bn1.bias"
    if kind == "mixed":  # a MobileNetV2 state_dict with a ResNet stem grafted on
        sd["backbone.conv1.weight"] = torch.zeros(64, 6, 7, 7)
        torch.save(sd, path)
        return path, "not a BackgroundMattingV2 MobileNetV2 state_dict: 1 unexpected key: backbone.conv1.weight"
    if kind == "base-only":
        torch.save(OrderedDict((k, v) for k, v in sd.items() if not k.startswith("refiner.")), path)
        return path, "no refiner weights"
    if kind == "missing-keys":
        del sd["decoder.conv1.weight"], sd["aspp.project.0.weight"]
        torch.save(sd, path)
        return path, "2 missing keys: aspp.project.0.weight, decoder.conv1.weight"
    if kind == "unexpected-keys":
        sd["extra.weight"] = torch.zeros(1)
        torch.save(sd, path)
        return path, "1 unexpected key: extra.weight"
    if kind == "shape-mismatch":
        sd["refiner.conv1.weight"] = torch.zeros(24, 42, 1, 1)
        torch.save(sd, path)
        return path, "1 shape mismatch: refiner.conv1.weight [24, 42, 1, 1] (expected [24, 42, 3, 3])"
    if kind in BROKEN_VALUES:
        key, broken, fragment = BROKEN_VALUES[kind]
        sd[key] = broken(sd[key].clone())
        torch.save(sd, path)
        return path, fragment
    if kind in ("zip-entry-outside", "zip-entry-twice"):  # torch's reader and zipfile differ on these
        torch.save(sd, path)
        with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
            name = "../x" if kind == "zip-entry-outside" else archive.namelist()[0]
            archive.writestr(name, b"x")
        return path, "outside the archive" if kind == "zip-entry-outside" else "has two archive entries named"
    if kind in DAMAGED_PICKLES:
        return with_data_pkl(path, DAMAGED_PICKLES[kind]), "is truncated or corrupt (a damaged pickle: "
    if kind in UNREADABLE_PROTOCOLS:
        protocol = UNREADABLE_PROTOCOLS[kind]
        torch.save(sd, path, pickle_protocol=protocol)
        return path, f"was saved with pickle protocol {protocol if protocol > 1 else '0 or 1'}, which torch.load"
    if kind == "name-too-long":  # Path.exists() raises ENAMETOOLONG instead of answering
        return tmp / f"{'a' * 300}.pth", "cannot be read: File name too long"
    if kind == "zip-not-torch":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("hello.txt", "hi")
        return path, "is a zip archive but not a readable PyTorch checkpoint"
    raise AssertionError(kind)


BAD_KINDS = [
    "missing",
    "directory",
    "empty",
    "truncated",
    "png",
    "onnx",
    "text",
    "pickle-with-code",
    "legacy-pickle-with-code",
    "not-a-dict",
    "partial-resnet50",
    "mixed",
    "base-only",
    "missing-keys",
    "unexpected-keys",
    "shape-mismatch",
    "zip-not-torch",
    "zip-entry-outside",
    "zip-entry-twice",
    *BROKEN_VALUES,
    *DAMAGED_PICKLES,
    *UNREADABLE_PROTOCOLS,
    "name-too-long",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_is_a_clear_error(kind, tmp_path, official, weights):
    path, fragment = make_bad(kind, tmp_path, official, weights)
    with pytest.raises(CheckpointError) as info:
        resolve_weights(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_cli_exit_code_two(kind, tmp_path, official, weights, cli, one_error):
    path, fragment = make_bad(kind, tmp_path, official, weights)
    result = cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx")
    one_error(result, fragment)
    assert result.stderr.startswith("error: checkpoint") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_load_and_say_so(dtype, weights, tmp_path):
    path = tmp_path / "half.pth"
    torch.save(
        OrderedDict((k, v.to(dtype) if v.is_floating_point() else v) for k, v in weights.state_dict.items()), path
    )
    resolved = resolve_weights(path)
    name = str(dtype).removeprefix("torch.")
    assert resolved.label == f"sha256:{sha256_of(path)} ({name} weights cast to float32)"
    assert all(v.dtype == torch.float32 for k, v in resolved.state_dict.items() if "num_batches" not in k)
    model = build_model(ExportConfig(), resolved)
    assert model.decoder.conv1.weight.dtype == torch.float32


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        resolve_weights(fifo)


def test_read_checkpoint_alone_names_a_torchscript_archive(tmp_path):
    # resolve_weights reads TorchScript archives of the original (test_weight_formats.py);
    # the plain state_dict reader still says what such a file is.
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "scripted.pth"
    torch.jit.save(scripted, str(path))
    with pytest.raises(CheckpointError, match="is a TorchScript archive .torch.jit.save., which holds code; give"):
        read_checkpoint(path)


def test_protocol_3_loads_without_the_librarys_warning(weights, tmp_path):
    # torch.load reads protocol 3 but warned about it on stderr (two lines before our output).
    path = tmp_path / "protocol3.pth"
    torch.save(weights.state_dict, path, pickle_protocol=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(read_checkpoint(path)) == list(weights.state_dict)


@pytest.mark.parametrize("key", ["k" * (1 << 20), "x\ninjected: a line of its own"])
def test_a_key_from_the_file_is_shown_short_and_on_one_line(key, weights, tmp_path, cli, one_error):
    # Before: the whole key went into the message (a megabyte, or a line of its own).
    path = tmp_path / "key.pth"
    torch.save({**weights.state_dict, key: torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="1 unexpected key: ") as info:
        resolve_weights(path)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)
    one_error(cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx"), "1 unexpected key: ")
