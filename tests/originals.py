"""Builders of the original repository's other published files, made here from our model at
small sizes (no downloaded model in the repository):

- ``torchscript_archive``: what ``export_torchscript.py`` writes: ``torch.jit.script`` of a
  wrapper holding the network as ``model`` with the refine settings hoisted as attributes,
  every module's attributes in data.pkl (lists, optionals) as a scripted original has them;
  fp32 or fp16.
- ``original_onnx``: what ``export_onnx.py`` writes: inputs ``src``/``bgr`` RGB 0..1, RoiAlign
  crops, a pixel-wise ScatterElements, NonZero, opset 12, dynamic batch/height/width, the six
  outputs (``pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm``) or Open Model Zoo's fork's two.
"""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exporter.checkpoint import Weights
from exporter.export.upstream import UpstreamRefiner
from exporter.model import MattingRefine

SIX_OUTPUTS = ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm")


def refine_model(weights: Weights, **kwargs: object) -> MattingRefine:
    model = MattingRefine(weights.backbone, **kwargs)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


# The torch.nn modules the original builds its network from; torch.jit.script compiles them as
# they are, so their attributes (Conv2d's ``_reversed_padding_repeated_twice`` List[int],
# BatchNorm2d's Optional ``momentum``, ...) reach data.pkl as in the original's archive.
_TORCH_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Dropout, nn.AdaptiveAvgPool2d, nn.MaxPool2d,
                 nn.Identity)  # fmt: skip
_PLAIN = (bool, int, float, str, type(None))


class ScriptedNode(nn.Module):
    """One module of the original's tree as ``torch.jit.script`` saves it: the same children,
    parameters, buffers and plain attributes (ints, floats, strings, None, tuples of them)."""


def scripted_tree(module: nn.Module) -> nn.Module:
    """``module`` rebuilt so that ``torch.jit.script`` takes it (our encoders slice Sequentials,
    which TorchScript cannot compile; the original's index them): the data an original archive
    holds, whose code we never run."""
    if isinstance(module, _TORCH_LEAVES):
        return module
    node = ScriptedNode()
    for name, value in vars(module).items():
        plain = isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))
        if plain and not name.startswith("_") and name != "training":
            setattr(node, name, value)
    for name, parameter in module._parameters.items():
        node.register_parameter(name, parameter)
    for name, buffer in module._buffers.items():
        node.register_buffer(name, buffer)
    for name, child in module._modules.items():
        setattr(node, name, None if child is None else scripted_tree(child))
    return node


class TorchScriptWrapper(nn.Module):
    """The original's ``export_torchscript.py`` wrapper: the scripted network as ``model``, its
    refine settings hoisted to the top so a user can change them before saving."""

    def __init__(self, source: MattingRefine) -> None:
        super().__init__()
        self.model = scripted_tree(source)
        self.backbone_scale = float(source.backbone_scale)
        self.refine_mode = str(source.refiner.mode)
        self.refine_sample_pixels = int(source.refiner.sample_pixels)
        self.refine_threshold = float(source.refiner.threshold)
        self.refine_prevent_oversampling = bool(source.refiner.prevent_oversampling)

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return src, bgr  # the archive is read for its data, never run


def torchscript_archive(
    weights: Weights, path: Path, *, half: bool = False, prevent_oversampling: bool = True, **kwargs: object
) -> Path:
    """``torchscript_<backbone>_fp32.pth`` (or ``_fp16``), from ``weights``: ``torch.jit.script``
    of the original's wrapper, as ``export_torchscript.py`` does, then ``half()`` for fp16."""
    source = refine_model(weights, refine_sample_pixels=kwargs.pop("refine_sample_pixels", 256), **kwargs)
    wrapper = TorchScriptWrapper(source)
    wrapper.refine_prevent_oversampling = prevent_oversampling
    for parameter in wrapper.parameters():
        parameter.requires_grad = False
    scripted = torch.jit.script(wrapper)
    if half:
        scripted = scripted.half()
    scripted.save(str(path))
    return path


class OriginalOnnx(nn.Module):
    """The original ``MattingRefine.forward`` as its ONNX export computes it: RGB 0..1 in,
    separate resizes of src and bgr, ``UpstreamRefiner`` (NonZero, RoiAlign, ScatterElements)."""

    def __init__(self, model: MattingRefine, outputs: int) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scale = self.model.backbone_scale
        src_sm = F.interpolate(
            src, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )
        bgr_sm = F.interpolate(
            bgr, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )
        pha_sm, fgr_sm, err_sm, hid_sm = self.model.coarse(torch.cat([src_sm, bgr_sm], dim=1))
        pha, fgr, ref_sm = self.model.refiner(torch.cat([src, bgr], dim=1), pha_sm, fgr_sm, err_sm, hid_sm)
        out = (pha.clamp(0.0, 1.0), (fgr + src).clamp(0.0, 1.0), pha_sm, (fgr_sm + src_sm).clamp(0.0, 1.0), err_sm,
               ref_sm)  # fmt: skip
        return out[: self.outputs]


def original_onnx(
    weights: Weights,
    path: Path,
    *,
    outputs: int = 6,
    opset: int = 12,
    dynamic: bool = True,
    size: tuple[int, int] = (192, 320),
    sample_pixels: int = 16_000,
    backbone_scale: float = 0.25,
) -> Path:
    """``onnx_mobilenetv2_hd.onnx`` (six outputs) or Open Model Zoo's ``bgm_mobilenetv2.onnx``
    (two), from ``weights``."""
    model = refine_model(weights, backbone_scale=backbone_scale, refine_sample_pixels=sample_pixels)
    refiner = UpstreamRefiner("sampling", sample_pixels, 0.1)
    refiner.load_state_dict(model.refiner.state_dict())
    model.refiner = refiner.eval()
    names = list(SIX_OUTPUTS[:outputs])
    example = torch.rand(1, 3, *size)
    axes = {"batch": 0, "height": 2, "width": 3}
    dynamic_axes = {n: {i: a for a, i in axes.items()} for n in ["src", "bgr", *names]} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OriginalOnnx(model, outputs).eval(),
            (example, example.clone()),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["src", "bgr"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path


# --- Hand-made archives: what no tool writes, but a file from the internet may hold ----------


def op_string(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]  # the int's opcode alone (no memo for ints)


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_tensor(
    key: str, numel: int, size: tuple, stride: tuple, offset: int = 0, storage: str = "FloatStorage"
) -> bytes:
    """A tensor record as TorchScript's pickler writes it (``_rebuild_tensor_v2``)."""
    pid = op_tuple([op_string("storage"), op_global("torch", storage), op_string(key), op_string("cpu"), op_int(numel)])
    hooks = op_global("collections", "OrderedDict") + b")R"
    args = [pid + b"Q", op_int(offset), op_tuple([op_int(n) for n in size]), op_tuple([op_int(s) for s in stride]),
            b"\x89", hooks]  # fmt: skip
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(args) + b"R"


def op_module(attributes: dict[str, bytes], name: str = "M") -> bytes:
    """A ``__torch__`` object with ``attributes`` (each an opcode string), as the pickler writes one."""
    items = b"".join(op_string(key) + value for key, value in attributes.items())
    return op_global("__torch__", name) + b")\x81}(" + items + b"ub"


def script_pickle(root: bytes) -> bytes:
    return b"\x80\x02" + root + b"."


def script_archive(
    path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, deflate: bool = False
) -> Path:
    """A TorchScript-shaped zip: ``archive/data.pkl``, a ``code/`` entry, ``data/<key>`` entries."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/code/__torch__.py", "")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def set_declared_size(path: Path, name: str, size: int) -> None:
    """Make the local and central headers of entry ``name`` declare ``size`` inflated bytes."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at : start + name_at + len(encoded)] == encoded:
                data[start + size_at : start + size_at + 4] = struct.pack("<I", size)
            start += 4
    path.write_bytes(bytes(data))
