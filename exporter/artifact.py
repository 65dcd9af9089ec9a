"""What an exported artifact carries, shared by the export and the deployment sides: its
input and output names and its metadata (ONNX ``metadata_props``, IR ``rt_info``).

Torch-free on purpose: ``matte``, ``runtime`` and ``info`` read artifacts without the
export machinery (STYLE.md, "Dependency direction").
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter.config import EXTRA_OUTPUTS, MODEL_TYPES, ExportConfig
from exporter.errors import ArtifactError

__all__ = [
    "INPUT_NAMES",
    "IO_NAMES",
    "OUTPUT_NAMES",
    "RT_INFO_SECTION",
    "artifact_files",
    "artifact_kind",
    "artifact_metadata",
    "check_io",
    "io_shapes",
    "op_histogram",
    "read_ir",
    "read_ir_metadata",
    "read_onnx_metadata",
]

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = ("pha", "fgr")
# Every name an input or output of ours can have (either model type, any extra output).
IO_NAMES = frozenset(INPUT_NAMES).union(*MODEL_TYPES.values(), EXTRA_OUTPUTS.values())
# Where Open Model Zoo tools look for a model's facts in an IR's rt_info.
RT_INFO_SECTION = "model_info"


def _load_onnx(path: Path) -> object:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, without loading its weights."""
    return _onnx_metadata(_load_onnx(path))


def _onnx_metadata(model: object) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _onnx_io(model: object) -> tuple[dict[str, list], dict[str, list]]:
    """Declared input and output shapes of an ``onnx.ModelProto``, by name."""

    def shapes(values: Sequence) -> dict[str, list]:
        return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in values}  # fmt: skip

    return shapes(model.graph.input), shapes(model.graph.output)


def _ir_root(xml: Path) -> object:
    import xml.etree.ElementTree as ElementTree

    try:
        return ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise ArtifactError(f"{xml} is not a readable OpenVINO IR: {exc}") from None


def _ir_metadata(root: object) -> dict[str, str]:
    section = root.find(f"rt_info/{RT_INFO_SECTION}")
    if section is None:
        return {}
    return {child.tag: child.attrib.get("value", "") for child in section}


def read_ir_metadata(xml: Path) -> dict[str, str]:
    """The ``model_info`` rt_info of an IR, read from its ``.xml`` only."""
    return _ir_metadata(_ir_root(xml))


def read_ir(xml: Path) -> dict[str, str]:
    """``read_ir_metadata`` (possibly empty), after checking that the ``.bin`` beside ``xml``
    is there and exactly as long as the constants the ``.xml`` lists: ``ArtifactError``
    naming the cause otherwise (OpenVINO itself names none). The ``.xml`` is parsed once."""
    bin_path = artifact_files(xml)[1]
    if not bin_path.is_file():
        raise ArtifactError(f"{bin_path} is missing: an IR's weights live beside its .xml (re-run `bgm-export ir`)")
    root = _ir_root(xml)
    needed = max(
        (int(data.get("offset", 0)) + int(data.get("size", 0)) for data in root.iterfind("layers/layer/data")
         if "offset" in data.attrib),
        default=0,
    )  # fmt: skip
    size = bin_path.stat().st_size
    if size < needed:
        raise ArtifactError(
            f"{bin_path} is {size:,} bytes, smaller than the {needed:,} its .xml expects: it is truncated "
            "or belongs to another IR (re-run `bgm-export ir`)"
        )
    # OpenVINO writes the constants back to back, the last ending the file (FP32, FP16 and
    # INT8 alike), so a longer .bin is another IR's: an INT8 .xml beside the FP32 .bin would
    # otherwise fail in OpenVINO with a message that names neither file.
    if size > needed:
        raise ArtifactError(
            f"{bin_path} is {size:,} bytes, larger than the {needed:,} its .xml expects: the .bin does not "
            f"belong to this .xml (another precision's or model's?; re-run `bgm-export ir`)"
        )
    return _ir_metadata(root)


def io_shapes(config: ExportConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every input and output of an artifact made at ``config``."""
    h, w = config.height, config.width
    small = (math.floor(h * config.backbone_scale), math.floor(w * config.backbone_scale))
    shapes = {"src": (1, 3, h, w), "bgr": (1, 3, h, w), "pha": (1, 1, h, w), "fgr": (1, 3, h, w),
              "err": (1, 1, h, w), "hid": (1, 32, h, w),  # MattingBase
              "err_sm": (1, 1, *small), "ref_sm": (1, 1, h // 4, w // 4)}  # --extra-outputs  # fmt: skip
    return {name: shapes[name] for name in (*INPUT_NAMES, *config.outputs)}


def _fits(found: Sequence[int | str], expected: tuple[int, ...], dynamic: bool) -> bool:
    """A declared shape is the expected one; in a dynamic graph, height and width may be
    free (a name, or OpenVINO's unknown) instead."""
    if len(found) != len(expected):
        return False
    return all(
        f == e or (dynamic and i >= 2 and not (isinstance(f, int) and f > 0))
        for i, (f, e) in enumerate(zip(found, expected, strict=True))
    )


def check_io(
    path: Path,
    inputs: Mapping[str, Sequence[int]],
    outputs: Mapping[str, Sequence[int]],
    metadata: dict[str, str],
    resolution: tuple[int, int] | None = None,
) -> None:
    """``ArtifactError`` unless the graph's inputs and outputs, by name and shape, are those its
    ``metadata`` describes (metadata copied from another model is caught here); a dynamic
    model's at ``resolution`` (default: the metadata's), or free."""
    config = ExportConfig.from_metadata(metadata)
    if resolution is not None:
        config = config.replace(height=resolution[0], width=resolution[1])
    if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(config.outputs):
        raise ArtifactError(
            f"{path} has inputs {list(inputs)} and outputs {list(outputs)}; a matting model has "
            f"{list(INPUT_NAMES)} and {list(config.outputs)} (as its metadata describes it)"
        )
    expected = io_shapes(config)
    for kind, found in (("takes inputs", inputs), ("gives outputs", outputs)):
        for name, shape in found.items():
            if not _fits(tuple(shape), expected[name], config.dynamic):
                raise ArtifactError(
                    f"{path} {kind} of shape {list(shape)} ({name}), but its metadata says "
                    f"{list(expected[name])}: the metadata was copied from another model"
                )


def artifact_files(path: Path) -> list[Path]:
    """The files an artifact consists of: an ``.xml`` and the ``.bin`` beside it (whether or
    not it exists yet), any other path alone. What an output must never overwrite."""
    path = Path(path)
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path]


def artifact_kind(path: Path) -> str:
    """``.onnx`` or ``.xml``: the suffix of a regular file that can be an artifact;
    ``ArtifactError`` saying what ``path`` is otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"artifact {path} is a directory; give an .onnx or .xml file")
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist")
    if not path.is_file():
        raise ArtifactError(f"artifact {path} is not a regular file")
    if path.suffix not in (".onnx", ".xml"):
        raise ArtifactError(f"artifact {path} is neither .onnx nor .xml")
    return path.suffix


def artifact_metadata(path: Path) -> dict[str, str]:
    """The bgm-export metadata of an ``.onnx`` or ``.xml``; ``ArtifactError`` if it has none.
    An ``.onnx`` (parsed whole here anyway) also has its declared inputs and outputs checked
    against it; an IR's are checked where it is compiled (``exporter.runtime``), and its
    ``.bin`` here (``read_ir``)."""
    if artifact_kind(path) == ".xml":
        metadata = read_ir(path)
    else:
        model = _load_onnx(path)
        metadata = _onnx_metadata(model)
        if metadata:
            check_io(path, *_onnx_io(model), metadata)
    if not metadata:
        raise ArtifactError(f"{path} carries no bgm-export metadata; was it made by bgm-export?")
    return metadata


def op_histogram(model: object) -> dict[str, int]:
    """Node count per op type of an ``onnx.ModelProto``, most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
