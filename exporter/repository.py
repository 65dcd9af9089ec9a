"""A model repository that OpenVINO Model Server and Triton's OpenVINO backend both load
unchanged, written from the artifacts' own metadata.

Layout (each engine reads its own file and ignores the other's)::

    DIR/config.json                       OpenVINO Model Server: model_config_list
    DIR/<model>/config.pbtxt              Triton: backend "openvino", inputs, outputs, hint
    DIR/<model>/<version>/model.xml+.bin  an IR (model.onnx for an ONNX artifact)

The model name is the artifact's (``background-matting-mobilenetv2``, ...); the FP32 IR keeps
it, another precision or format is another model (``-fp16``, ``-int8``, ``-onnx``). Adding an
artifact adds the next version of its model and never touches an existing version.

Checked, not hoped: every ``config.pbtxt`` is parsed with Triton's own ``model_config.proto``
(the generated module ``tritonclient`` ships) and ``config.json`` is validated against the
model server's published JSON schema (``exporter/schemas/ovms_config.schema.json``, vendored
with its licence). Everything is written into a staging folder and checked there first, so
a refused addition leaves the repository as it was. Torch-free.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter.artifact import INPUT_NAMES, artifact_files, artifact_kind, artifact_metadata, io_shapes
from exporter.config import ExportConfig
from exporter.errors import OutputError, RepositoryError
from exporter.files import staging_folder

__all__ = [
    "OVMS_CONFIG",
    "PERFORMANCE_HINTS",
    "TRITON_CONFIG",
    "RepositoryModel",
    "RepositoryResult",
    "TensorSpec",
    "add_to_repository",
    "check_repository",
    "read_repository",
    "served_name",
    "tensor_specs",
]

OVMS_CONFIG = "config.json"
TRITON_CONFIG = "config.pbtxt"
SCHEMA = Path(__file__).parent / "schemas" / "ovms_config.schema.json"
# OpenVINO's PERFORMANCE_HINT, as both engines pass it to compile_model: THROUGHPUT for a
# server (many clients, several requests in flight), LATENCY for one client at a time.
PERFORMANCE_HINTS = ("THROUGHPUT", "LATENCY")
# The file names both engines look for in a version folder, per artifact kind.
MODEL_FILES = {".xml": ("model.xml", "model.bin"), ".onnx": ("model.onnx",)}
# Model name suffix per (kind, precision): the FP32 IR is the model itself.
NAME_SUFFIXES = {(".xml", "FP32"): "", (".xml", "FP16"): "-fp16", (".xml", "INT8"): "-int8"}
ONNX_SUFFIX = "-onnx"
# A name both engines take as a folder name and in URLs.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The V2 datatype of every input and output (the export's graph is float32 end to end) and
# its Triton ModelConfig name.
DATATYPE = "FP32"
TRITON_TYPES = {"FP32": "TYPE_FP32"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the Open Inference Protocol's metadata states it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def tensor_specs(metadata: dict[str, str], free_size: bool = False) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of the artifact with ``metadata`` (a base model's and extra
    outputs too): names, datatypes, shapes at the size it states. ``free_size``: a dynamic
    model's height and width as -1, the protocol's variable size."""
    config = ExportConfig.from_metadata(metadata)
    shapes = io_shapes(config)

    def shape(name: str) -> tuple[int, ...]:
        dims = shapes[name]
        return (*dims[:2], -1, -1) if free_size and config.dynamic else dims

    outputs = [name for name in shapes if name not in INPUT_NAMES]
    return [TensorSpec(n, DATATYPE, shape(n)) for n in INPUT_NAMES], [
        TensorSpec(n, DATATYPE, shape(n)) for n in outputs
    ]


def served_name(path: Path, metadata: dict[str, str]) -> str:
    """The model name an artifact is served under: its own, with ``-fp16``/``-int8`` for
    other IR precisions and ``-onnx`` for an ONNX file."""
    config = ExportConfig.from_metadata(metadata)
    suffix = ONNX_SUFFIX if Path(path).suffix == ".onnx" else NAME_SUFFIXES[(".xml", config.precision)]
    return config.model_name + suffix


def triton_config(name: str, metadata: dict[str, str], kind: str, hint: str) -> str:
    """``config.pbtxt`` for Triton's OpenVINO backend (no batching: the batch of one is part
    of the dims, as the artifact states them)."""
    inputs, outputs = tensor_specs(metadata, free_size=True)  # Triton's backend takes a dynamic IR's -1

    def tensors(specs: list[TensorSpec]) -> str:
        return ",\n".join(
            f'  {{\n    name: "{s.name}"\n    data_type: {TRITON_TYPES[s.datatype]}\n'
            f"    dims: [ {', '.join(map(str, s.shape))} ]\n  }}"
            for s in specs
        )

    lines = [
        f"# Triton Inference Server, OpenVINO backend; written by bgm-export from {name}'s metadata.",
        f'name: "{name}"',
        'backend: "openvino"',
        "max_batch_size: 0",
    ]
    if kind == ".onnx":  # the backend reads model.xml unless told otherwise
        lines.append('default_model_filename: "model.onnx"')
    lines += [
        f"input [\n{tensors(inputs)}\n]",
        f"output [\n{tensors(outputs)}\n]",
        "instance_group [ { count: 1, kind: KIND_CPU } ]",
        f'parameters: {{ key: "PERFORMANCE_HINT", value: {{ string_value: "{hint}" }} }}',
    ]
    return "\n".join(lines) + "\n"


def ovms_entry(name: str, device: str, hint: str) -> dict:
    """One ``model_config_list`` entry: ``base_path`` relative to ``config.json``."""
    return {"config": {"name": name, "base_path": name, "target_device": device,
                       "plugin_config": {"PERFORMANCE_HINT": hint}}}  # fmt: skip


# ---- the engines' own checks ----


@functools.cache
def _model_config_pb2() -> object:
    """Triton's ``model_config_pb2`` as ``tritonclient`` ships it, loaded on its own: the
    ``tritonclient.grpc`` package would also register Triton's service protocol, whose
    message names clash with KServe's in one process."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or spec.origin is None:
        raise RepositoryError("checking config.pbtxt needs tritonclient: pip install -e '.[serve]'")
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_bgm_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def parse_triton_config(path: Path) -> object:
    """``config.pbtxt`` parsed into Triton's ``inference.ModelConfig``."""
    from google.protobuf import text_format

    config = _model_config_pb2().ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (text_format.ParseError, OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} does not parse as Triton's ModelConfig: {exc}") from None
    return config


@functools.cache
def _ovms_validator() -> object:
    import jsonschema

    # The model server validates with RapidJSON (draft 04), which tolerates the schema's
    # misplaced "additionalProperties": false; so is the validator here, unchecked.
    return jsonschema.Draft4Validator(json.loads(SCHEMA.read_text()))


def validate_ovms_config(config: object, where: Path) -> None:
    """``RepositoryError`` naming the first place ``config`` breaks the model server's schema."""
    errors = sorted(_ovms_validator().iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        at = "/".join(map(str, error.absolute_path)) or "the top level"
        raise RepositoryError(f"{where} breaks OpenVINO Model Server's schema at {at}: {error.message}")


def _read_ovms_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} is not readable JSON: {exc}") from None
    validate_ovms_config(config, path)
    return config


def _check_triton_config(path: Path, name: str, metadata: dict[str, str]) -> None:
    """The parsed ``config.pbtxt`` names ``name``, the OpenVINO backend, and exactly the
    artifact's inputs and outputs."""
    config = parse_triton_config(path)
    if config.name != name or config.backend != "openvino":
        raise RepositoryError(f"{path} is for model {config.name!r}, backend {config.backend!r}; expected {name!r}")
    inputs, outputs = tensor_specs(metadata, free_size=True)
    expected = [(s.name, TRITON_TYPES[s.datatype], list(s.shape)) for s in (*inputs, *outputs)]
    types = _model_config_pb2().DataType
    found = [(t.name, types.Name(t.data_type), list(t.dims)) for t in (*config.input, *config.output)]
    if found != expected:
        raise RepositoryError(
            f"{path} declares {found}, but the artifact has {expected}: versions of one model must share "
            "its inputs and outputs (another resolution is another model: pass --name)"
        )


# ---- reading a repository ----


@dataclass
class RepositoryModel:
    """One model of a repository: its versions' artifacts (``model.xml`` or ``model.onnx``)."""

    name: str
    folder: Path
    versions: dict[int, Path] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return max(self.versions)


def _versions(folder: Path) -> dict[int, Path]:
    versions: dict[int, Path] = {}
    if not folder.is_dir():
        return versions
    for child in folder.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            found = [child / files[0] for files in MODEL_FILES.values() if (child / files[0]).is_file()]
            versions[int(child.name)] = found[0] if found else child
    return versions


def read_repository(root: Path) -> list[RepositoryModel]:
    """The models ``root/config.json`` lists, with their version folders (as the model server
    reads them); ``RepositoryError`` if there is no valid ``config.json``."""
    root = Path(root)
    path = root / OVMS_CONFIG
    if not path.is_file():
        raise RepositoryError(f"{root} has no {OVMS_CONFIG}: it is not a model repository (bgm-export repository)")
    models = []
    for entry in _read_ovms_config(path)["model_config_list"]:
        name, base = entry["config"]["name"], Path(entry["config"]["base_path"])
        folder = base if base.is_absolute() else root / base
        models.append(RepositoryModel(name, folder, _versions(folder)))
    return models


def check_repository(root: Path) -> list[RepositoryModel]:
    """Every check both engines make before serving, here and now: ``config.json`` against
    the model server's schema, each model's ``config.pbtxt`` with Triton's ``ModelConfig``
    against the metadata of each version's artifact, and version folders that hold one."""
    models = read_repository(root)
    for model in models:
        if not model.versions:
            raise RepositoryError(f"model {model.name} has no version folder (1, 2, ...) in {model.folder}")
        for version, artifact in sorted(model.versions.items()):
            if artifact.is_dir():
                raise RepositoryError(
                    f"version {version} of {model.name} ({artifact}) holds no model.xml or model.onnx"
                )
            _check_triton_config(model.folder / TRITON_CONFIG, model.name, artifact_metadata(artifact))
    return models


# ---- adding artifacts ----


@dataclass
class Added:
    """One artifact added: the model name, its version and the files now in the repository."""

    artifact: Path
    name: str
    version: int
    files: list[Path]


@dataclass
class RepositoryResult:
    root: Path
    added: list[Added]

    def lines(self) -> list[str]:
        lines = [f"  {a.name} version {a.version}: {a.files[0]}  (from {a.artifact})" for a in self.added]
        return [*lines, f"  {self.root / OVMS_CONFIG}: OpenVINO Model Server; <model>/{TRITON_CONFIG}: Triton"]


@dataclass
class _Plan:
    artifact: Path
    kind: str
    metadata: dict[str, str]
    name: str
    version: int = 0


def _plan(artifacts: Sequence[Path], root: Path, name: str | None, version: int | None) -> list[_Plan]:
    """Each artifact's model name and version, every check made before anything is written."""
    plans = []
    for artifact in map(Path, artifacts):
        kind = artifact_kind(artifact)
        metadata = artifact_metadata(artifact)  # refuses a file without bgm-export's metadata
        plans.append(_Plan(artifact, kind, metadata, name or served_name(artifact, metadata)))
    taken: dict[str, set[int]] = {}
    for plan in plans:
        existing = taken.setdefault(plan.name, set(_versions(root / plan.name)))
        if version is not None:
            if version in existing:
                raise RepositoryError(
                    f"version {version} of {plan.name} exists in {root / plan.name}; a version is never overwritten "
                    f"(leave --version out to add version {max(existing) + 1})"
                )
            plan.version = version
        else:
            plan.version = max(existing, default=0) + 1
        existing.add(plan.version)
    return plans


def _copy(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None


def add_to_repository(
    artifacts: Sequence[Path],
    root: Path,
    *,
    device: str = "CPU",
    hint: str = "THROUGHPUT",
    version: int | None = None,
    name: str | None = None,
) -> RepositoryResult:
    """Add each artifact as the next version of its model (``version``: that version instead,
    refused if it exists) to the repository at ``root``, creating it if needed: the model
    files, the model's ``config.pbtxt`` and ``config.json``'s entry (both kept as they are
    when the model is already there), every file checked against the engines' own schemas
    before anything is moved into place. ``name``: the model name for every artifact instead
    of its own (another resolution of the same network, for example)."""
    root = Path(root)
    if hint not in PERFORMANCE_HINTS:
        raise RepositoryError(f"performance hint {hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
    if not artifacts:
        raise RepositoryError("no artifact to add: give .xml or .onnx files")
    if name is not None and not MODEL_NAME.fullmatch(name):
        raise RepositoryError(
            f"model name {name!r} is not letters, digits, '.', '_' and '-' (starting with one of the first two)"
        )
    if version is not None and version < 1:
        raise RepositoryError(f"version {version} is not a positive whole number")
    if root.exists() and not root.is_dir():
        raise OutputError(f"output {root} exists and is not a folder")
    plans = _plan(artifacts, root, name, version)
    config_path = root / OVMS_CONFIG
    config = _read_ovms_config(config_path) if config_path.is_file() else {"model_config_list": []}
    listed = {entry["config"]["name"] for entry in config["model_config_list"]}
    for plan in plans:
        pbtxt = root / plan.name / TRITON_CONFIG
        if pbtxt.is_file():  # a new version must fit the model's declared inputs and outputs
            _check_triton_config(pbtxt, plan.name, plan.metadata)
    added = []
    with staging_folder(root, "repository") as staging:
        for plan in plans:
            folder = staging / plan.name / str(plan.version)
            folder.mkdir(parents=True)
            files = [folder / name for name in MODEL_FILES[plan.kind]]
            for source, target in zip(artifact_files(plan.artifact), files, strict=True):
                _copy(source, target)
            artifact_metadata(files[0])  # the copy is whole (an IR's .bin as long as its .xml expects)
            pbtxt = staging / plan.name / TRITON_CONFIG
            if not (root / plan.name / TRITON_CONFIG).is_file() and not pbtxt.is_file():
                pbtxt.write_text(triton_config(plan.name, plan.metadata, plan.kind, hint))
                _check_triton_config(pbtxt, plan.name, plan.metadata)
            if plan.name not in listed:
                config["model_config_list"].append(ovms_entry(plan.name, device, hint))
                listed.add(plan.name)
            added.append(Added(plan.artifact, plan.name, plan.version, [root / plan.name / str(plan.version) / f.name
                                                                         for f in files]))  # fmt: skip
        staged_config = staging / OVMS_CONFIG
        staged_config.write_text(json.dumps(config, indent=2) + "\n")
        validate_ovms_config(json.loads(staged_config.read_text()), config_path)
        _commit(staging, root, plans)
    return RepositoryResult(root, added)


def _commit(staging: Path, root: Path, plans: list[_Plan]) -> None:
    """Move the staged version folders, new ``config.pbtxt`` files and ``config.json`` into
    ``root``: renames within one file system, the configuration last."""
    try:
        for plan in plans:
            (root / plan.name).mkdir(exist_ok=True)
            target = root / plan.name / str(plan.version)
            if target.exists():
                raise RepositoryError(f"{target} appeared while writing; nothing was overwritten")
            os.rename(staging / plan.name / str(plan.version), target)
            pbtxt = staging / plan.name / TRITON_CONFIG
            if pbtxt.is_file():
                os.replace(pbtxt, root / plan.name / TRITON_CONFIG)
        os.replace(staging / OVMS_CONFIG, root / OVMS_CONFIG)
    except OSError as exc:
        raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
