"""What an exported artifact carries, shared by the export and the deployment sides: its
input and output names and its metadata (ONNX ``metadata_props``, IR ``rt_info``).

Torch-free on purpose: ``matte``, ``runtime`` and ``info`` read artifacts without the
export machinery (STYLE.md, "Dependency direction").
"""

from __future__ import annotations

import collections
import math
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from exporter.config import EXTRA_OUTPUTS, MODEL_TYPES, ONNX_WEIGHTS, ExportConfig
from exporter.errors import ArtifactError, shown

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
    "load_onnx",
    "op_histogram",
    "read_ir",
    "read_ir_metadata",
    "read_onnx_metadata",
    "stored_weights",
]

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = ("pha", "fgr")
# Every name an input or output of ours can have (either model type, any extra output).
IO_NAMES = frozenset(INPUT_NAMES).union(*MODEL_TYPES.values(), EXTRA_OUTPUTS.values())
# Where Open Model Zoo tools look for a model's facts in an IR's rt_info.
RT_INFO_SECTION = "model_info"
# An offset or a size in an IR's .xml, or an ONNX external data field: plain ASCII digits
# (``str.isdigit`` takes "²", which ``int`` refuses), no more than an int64 holds.
_BYTE_COUNT = re.compile(r"[0-9]{1,19}")


def _mode(path: Path) -> int | None:
    """``stat``'s mode of ``path``; None if there is nothing there. ``ArtifactError`` for what
    ``Path.exists()`` raises instead of answering (a name over 255 bytes, a loop of links)."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ArtifactError(f"artifact {path} cannot be read: {exc.strerror}") from None


def _load_onnx(path: Path) -> object:
    """An ONNX model without its external data, checked to be a model (a graph with inputs
    and nodes) whose external data, if any, lies in regular files inside its own folder."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"{path} is not a readable ONNX model: {shown(first)}") from None
    if not model.graph.node or not model.graph.input:
        # Protobuf reads any bytes as a message of defaults: an empty file is a model of nothing.
        what = "no nodes" if not model.graph.node else "no inputs"
        raise ArtifactError(f"{path} is not an ONNX model: its graph has {what} (an empty or damaged file?)")
    _check_external_data(model, Path(path))
    return model


def load_onnx(path: Path, external_data: bool = False) -> object:
    """``_load_onnx``, with the external data read too (from the model's folder) when asked."""
    model = _load_onnx(path)
    if external_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(Path(path).parent))
        except Exception as exc:  # onnx raises ValueError, OSError, ... for data it cannot read
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"{path} has external data that cannot be read: {shown(first)}") from None
    return model


def _tensors(graph: object) -> Iterator[object]:
    """Every tensor of ``graph`` and its subgraphs that can keep its data outside the file
    (what ``onnx.load`` would read), walked without recursion."""
    graphs = [graph]
    while graphs:
        current = graphs.pop()
        yield from current.initializer
        yield from (sparse.values for sparse in current.sparse_initializer)
        for node in current.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _check_external_data(model: object, path: Path) -> None:
    """The checkpoint side's rules (``weight_formats._OnnxValues.external``) for an artifact:
    external data only in regular files inside the model's own folder (never the current one),
    with offsets and lengths that are numbers inside the file. Checked before a runtime or a
    converter opens them: a FIFO would block it forever, ``/dev/zero`` fill memory."""
    from onnx import TensorProto

    folder = path.parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        name, where = shown(repr(tensor.name)), shown(location)
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not location or "\x00" in location or location.startswith(("/", "\\")) or ".." in parts or ":" in location:
            raise ArtifactError(
                f"{path} keeps the data of {name} at {shown(repr(location))}, outside the model's folder"
            )
        try:
            real = (folder / location).resolve(strict=True)
            mode = real.stat().st_mode
        except (OSError, RuntimeError):
            raise ArtifactError(
                f"{path} keeps the data of {name} in {where}, which is not in the model's folder"
            ) from None
        if not real.is_relative_to(folder.resolve()):
            raise ArtifactError(f"{path} keeps the data of {name} in {where}, a link that leaves the model's folder")
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{path} keeps the data of {name} in {where}, which is not a regular file")
        fields = {key: info.get(key, "0") for key in ("offset", "length")}
        if not all(_BYTE_COUNT.fullmatch(value) for value in fields.values()):
            raise ArtifactError(f"{path} gives {name} an external data offset or length that is not a number")
        end = int(fields["offset"]) + int(fields["length"])
        if end > real.stat().st_size:
            raise ArtifactError(
                f"{path} reads the data of {name} up to byte {end} of {where}, which holds {real.stat().st_size}"
            )


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
    mode = _mode(bin_path)
    if mode is None or not stat.S_ISREG(mode):
        raise ArtifactError(f"{bin_path} is missing: an IR's weights live beside its .xml (re-run `bgm-export ir`)")
    root = _ir_root(xml)
    needed = 0
    for data in root.iterfind("layers/layer/data"):
        if "offset" not in data.attrib:
            continue
        fields = {key: data.get(key, "0") for key in ("offset", "size")}
        if not all(_BYTE_COUNT.fullmatch(value) for value in fields.values()):
            raise ArtifactError(
                f"{xml} gives a constant the offset {shown(fields['offset'])} and size {shown(fields['size'])}, "
                "which are not byte counts: the .xml is damaged (re-run `bgm-export ir`)"
            )
        needed = max(needed, int(fields["offset"]) + int(fields["size"]))
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


# How a reduced storage shows in a graph (exporter.export.weights_storage writes them): an
# initializer of this type read by this op, which turns it back into float32.
_STORED_AS = {"FP16": ("FLOAT16", "Cast"), "INT8": ("INT8", "DequantizeLinear")}


def stored_weights(model: object) -> str:
    """How an ``onnx.ModelProto`` stores its weights, read from its graph, not its metadata:
    ``FP16`` (float16 initializers into a Cast), ``INT8`` (int8 initializers into a
    DequantizeLinear), ``FP32`` (neither, as traced), or both joined by ``+`` (which bgm-export
    never writes). Reads the initializers' types only, never their data."""
    from onnx import TensorProto

    types = {t.name: t.data_type for t in model.graph.initializer}
    readers = {(getattr(TensorProto, dtype), op): storage for storage, (dtype, op) in _STORED_AS.items()}
    found = {
        readers[key]
        for node in model.graph.node
        if node.input and (key := (types.get(node.input[0]), node.op_type)) in readers
    }
    return "+".join(storage for storage in ONNX_WEIGHTS if storage in found) or "FP32"


def _check_storage(path: Path, model: object, metadata: dict[str, str]) -> None:
    """``ArtifactError`` when the metadata's ``onnx_weights`` (absent: FP32) is not what the
    graph stores: ``ir`` would convert half weights as FP32 ones, ``verify`` judge by the
    wrong precision's bars."""
    stated = metadata.get("onnx_weights", "FP32")
    stored = stored_weights(model)
    if stored != stated:
        raise ArtifactError(
            f"{path}: its metadata says its weights are stored as {shown(stated)}, but the graph stores "
            f"{stored}: the metadata was edited or copied from another model (re-export it with `bgm-export onnx`)"
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
    mode = _mode(path)
    if mode is None:
        raise ArtifactError(f"artifact {path} does not exist")
    if stat.S_ISDIR(mode):
        raise ArtifactError(f"artifact {path} is a directory; give an .onnx or .xml file")
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"artifact {path} is not a regular file")
    if path.suffix not in (".onnx", ".xml"):
        raise ArtifactError(f"artifact {path} is neither .onnx nor .xml")
    return path.suffix


def artifact_metadata(path: Path) -> dict[str, str]:
    """The bgm-export metadata of an ``.onnx`` or ``.xml``; ``ArtifactError`` if it has none.
    An ``.onnx`` (parsed whole here anyway) also has its declared inputs and outputs, and how
    its graph stores its weights, checked against it; an IR's are checked where it is compiled
    (``exporter.runtime``), and its ``.bin`` here (``read_ir``)."""
    if artifact_kind(path) == ".xml":
        metadata = read_ir(path)
        if metadata.get("onnx_weights", "FP32") != "FP32":  # verify would judge it by that storage's bars
            raise ArtifactError(
                f"{path}: its metadata says its ONNX weights are stored as {shown(metadata['onnx_weights'])}, "
                "but an IR is made from FP32 weights only: the metadata was edited or copied from another model"
            )
    else:
        model = _load_onnx(path)
        metadata = _onnx_metadata(model)
        if metadata:
            check_io(path, *_onnx_io(model), metadata)
            _check_storage(path, model, metadata)
    if not metadata:
        raise ArtifactError(f"{path} carries no bgm-export metadata; was it made by bgm-export?")
    return metadata


def op_histogram(model: object) -> dict[str, int]:
    """Node count per op type of an ``onnx.ModelProto``, most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
