"""What an exported artifact carries, shared by the export and the deployment sides: its
input and output names and its metadata (ONNX ``metadata_props``, IR ``rt_info``).

Torch-free on purpose: ``matte``, ``runtime`` and ``info`` read artifacts without the
export machinery (STYLE.md, "Dependency direction").
"""

from __future__ import annotations

import collections
from pathlib import Path

from exporter.errors import ArtifactError

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "RT_INFO_SECTION",
    "artifact_metadata",
    "op_histogram",
    "read_ir_metadata",
    "read_onnx_metadata",
]

INPUT_NAMES = ("src", "bgr")
OUTPUT_NAMES = ("pha", "fgr")
# Where Open Model Zoo tools look for a model's facts in an IR's rt_info.
RT_INFO_SECTION = "model_info"


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    return {p.key: p.value for p in model.metadata_props}


def read_ir_metadata(xml: Path) -> dict[str, str]:
    """The ``model_info`` rt_info of an IR, read from its ``.xml`` only."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise ArtifactError(f"{xml} is not a readable OpenVINO IR: {exc}") from None
    section = root.find(f"rt_info/{RT_INFO_SECTION}")
    if section is None:
        return {}
    return {child.tag: child.attrib.get("value", "") for child in section}


def artifact_metadata(path: Path) -> dict[str, str]:
    """The bgm-export metadata of an ``.onnx`` or ``.xml``; ``ArtifactError`` if it has none."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"artifact {path} is a directory; give an .onnx or .xml file")
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    if path.suffix == ".onnx":
        metadata = read_onnx_metadata(path)
    elif path.suffix == ".xml":
        metadata = read_ir_metadata(path)
    else:
        raise ArtifactError(f"artifact {path} is neither .onnx nor .xml")
    if not metadata:
        raise ArtifactError(f"{path} carries no bgm-export metadata; was it made by bgm-export?")
    return metadata


def op_histogram(model: object) -> dict[str, int]:
    """Node count per op type of an ``onnx.ModelProto``, most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
