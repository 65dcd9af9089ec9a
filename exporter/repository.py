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

import contextlib
import errno
import fcntl
import functools
import importlib.util
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter.artifact import INPUT_NAMES, artifact_files, artifact_kind, artifact_metadata, io_shapes
from exporter.config import ExportConfig
from exporter.errors import OutputError, RepositoryError
from exporter.files import remove_empty, staging_folder

__all__ = [
    "OVMS_CONFIG",
    "PERFORMANCE_HINTS",
    "TRITON_CONFIG",
    "RepositoryModel",
    "RepositoryResult",
    "TensorSpec",
    "add_to_repository",
    "check_repository",
    "read_ovms_config",
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
# Names a model folder may not take: the repository's own files beside the model folders.
RESERVED_NAMES = frozenset({OVMS_CONFIG})
# The name is one folder name: NAME_MAX, 255 bytes on Linux's file systems (ASCII: characters).
MODEL_NAME_MAX = 255
# Both engines read a version folder's name as a signed 64-bit integer (Triton's int64
# model versions, the model server's model_version_t): ASCII digits only, 1 to INT64_MAX.
VERSION_FOLDER = re.compile(r"[0-9]+")
MAX_VERSION = 2**63 - 1
# An OpenVINO device as the model server's target_device takes it: CPU, GPU.1, NPU, AUTO,
# AUTO:-CPU, HETERO:GPU,CPU, MULTI:GPU.0,GPU.1, BATCH:GPU(4). One line of printable ASCII.
DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9_.]*(:[A-Za-z0-9_.,()-]+)?")
DEVICE_MAX = 200
# The lock every add holds on its repository from reading it to its last rename: config.json
# is read, extended and replaced, so two adds at once would keep only one's entries. The
# holder removes the file as it lets go (a waiter that then holds a removed file tries again).
LOCK_FILE = ".bgm-export.lock"
# How long an add waits for another run's: an add copies at most a ResNet-101 FP32 IR and its
# ONNX (about 0.7 GB), seconds on a local disk; a minute covers a few queued adds on a slow
# one, and past it the other run is more likely stuck (a full disk, a hung mount) than busy.
LOCK_WAIT_SECONDS = 60.0
# How often a waiting add tries again: short next to an add, and a sleep that Ctrl-C ends.
LOCK_POLL_SECONDS = 0.05
# config.json as the model server writes and documents it is a few levels deep
# (model_config_list / config / plugin_config; a pipeline's nodes and their inputs: under 10).
# Deeper is no configuration: Python's JSON parser and the schema check recurse per level
# (RecursionError at about a thousand), so the depth is bounded first. The size likewise: an
# entry is about 200 bytes, and 16 MiB is tens of thousands of models.
OVMS_CONFIG_MAX_DEPTH = 64
OVMS_CONFIG_MAX_BYTES = 16 << 20
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

    if not path.is_file():  # a folder is no config, and reading a FIFO would wait for a writer
        raise RepositoryError(f"{path} is missing or not a file: Triton reads the model's configuration from it")
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


def _depth(document: object) -> int:
    """How deeply ``document``'s lists and objects nest (without recursion)."""
    deepest, level = 0, [(document, 1)]
    while level:
        value, depth = level.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if depth <= OVMS_CONFIG_MAX_DEPTH:  # past it the answer is known
                level.extend((child, depth + 1) for child in children)
    return deepest


def read_ovms_config(path: Path) -> dict:
    """``config.json`` parsed and validated against the model server's schema: the one reading
    of it, for ``repository`` and ``serve``. ``RepositoryError`` for anything else, including
    a file too large or too deeply nested to be a configuration."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(OVMS_CONFIG_MAX_BYTES + 1)
        if len(data) > OVMS_CONFIG_MAX_BYTES:
            raise RepositoryError(
                f"{path} is not readable JSON: over {OVMS_CONFIG_MAX_BYTES >> 20} MiB, more than a configuration takes"
            )
        config = json.loads(data.decode())
        too_deep = _depth(config) > OVMS_CONFIG_MAX_DEPTH
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} is not readable JSON: {exc}") from None
    except RecursionError:  # the parser's own bound, beyond ours
        too_deep = True
    if too_deep:
        raise RepositoryError(f"{path} is not readable JSON: nested deeper than {OVMS_CONFIG_MAX_DEPTH} levels")
    validate_ovms_config(config, path)
    return config


def _check_triton_config(path: Path, name: str, metadata: dict[str, str], kind: str) -> None:
    """The parsed ``config.pbtxt`` names ``name``, the OpenVINO backend, the file name of a
    ``kind`` artifact (``.xml``, ``.onnx``), and exactly the artifact's inputs and outputs."""
    config = parse_triton_config(path)
    if config.name != name or config.backend != "openvino":
        raise RepositoryError(f"{path} is for model {config.name!r}, backend {config.backend!r}; expected {name!r}")
    reads = config.default_model_filename or MODEL_FILES[".xml"][0]  # the backend's default
    if reads != MODEL_FILES[kind][0]:
        raise RepositoryError(
            f"{path} makes Triton load {reads} from every version of {name}, and this version is a "
            f"{MODEL_FILES[kind][0]}: an ONNX file and an IR are separate models (pass another --name)"
        )
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
        # str.isdigit() takes "²", which int() refuses; the engines read ASCII digits only.
        if child.is_dir() and VERSION_FOLDER.fullmatch(child.name) and 0 < int(child.name) <= MAX_VERSION:
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
    for entry in read_ovms_config(path)["model_config_list"]:
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
            metadata = artifact_metadata(artifact)
            _check_triton_config(model.folder / TRITON_CONFIG, model.name, metadata, artifact.suffix)
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


def _read_artifacts(artifacts: Sequence[Path], name: str | None) -> list[_Plan]:
    """Each artifact's kind, metadata and model name: what needs no look at the repository."""
    plans = []
    for artifact in map(Path, artifacts):
        kind = artifact_kind(artifact)
        metadata = artifact_metadata(artifact)  # refuses a file without bgm-export's metadata
        plans.append(_Plan(artifact, kind, metadata, name or served_name(artifact, metadata)))
    return plans


def _number_versions(plans: list[_Plan], root: Path, version: int | None) -> None:
    """Each plan's version: ``version``, or the next of its model's (under the lock)."""
    taken: dict[str, set[int]] = {}
    for plan in plans:
        existing = taken.setdefault(plan.name, set(_versions(root / plan.name)))
        if version is not None:
            if version in existing and any(other.name == plan.name and other.version for other in plans):
                raise RepositoryError(
                    f"--version {version} would give two of the artifacts to version {version} of {plan.name}: "
                    "add them one at a time, or leave --version out"
                )
            if version in existing:
                raise RepositoryError(
                    f"version {version} of {plan.name} exists in {root / plan.name}; a version is never overwritten "
                    f"(leave --version out to add version {max(existing) + 1})"
                )
            plan.version = version
        else:
            plan.version = max(existing, default=0) + 1
            if plan.version > MAX_VERSION:
                raise RepositoryError(f"{plan.name} has version {MAX_VERSION}, the last one both engines read")
        existing.add(plan.version)


def _copy(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}") from None


@contextlib.contextmanager
def repository_lock(root: Path) -> Iterator[None]:
    """Hold ``root``'s lock (``fcntl.flock`` on ``LOCK_FILE``), waiting for another run's up
    to ``LOCK_WAIT_SECONDS`` (``RepositoryError`` past it; Ctrl-C ends the wait)."""
    path = root / LOCK_FILE
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            # O_NOFOLLOW: a symbolic link planted as the lock would create its target anywhere.
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RepositoryError(f"{path} is a symbolic link, not this repository's lock: remove it") from None
            raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            if time.monotonic() >= deadline:
                raise RepositoryError(
                    f"another run has been adding to {root} for over {LOCK_WAIT_SECONDS:.0f} s (it holds "
                    f"{path}); try again when it has finished"
                ) from None
            time.sleep(LOCK_POLL_SECONDS)
            continue
        except OSError as exc:  # a file system without locks
            os.close(handle)
            raise OutputError(f"cannot lock {path}: {exc.strerror}") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(handle)
        if not stat.S_ISREG(held.st_mode):
            os.close(handle)
            raise RepositoryError(f"{path} is not a file, not this repository's lock: remove it")
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(handle)  # the previous holder removed the file it locked: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(handle)


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
    of its own (another resolution of the same network, for example).

    One transaction: the repository's lock is held throughout (concurrent adds wait their
    turn), and on any failure or interrupt the repository is as it was."""
    root = Path(root)
    if hint not in PERFORMANCE_HINTS:
        raise RepositoryError(f"performance hint {hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
    if not artifacts:
        raise RepositoryError("no artifact to add: give .xml or .onnx files")
    if name is not None and not (MODEL_NAME.fullmatch(name) and len(name) <= MODEL_NAME_MAX):
        raise RepositoryError(
            f"model name {name[:80]!r}{'...' if len(name) > 80 else ''} is not up to {MODEL_NAME_MAX} letters, "
            "digits, '.', '_' and '-' (starting with one of the first two)"
        )
    if name in RESERVED_NAMES:
        raise RepositoryError(f"model name {name!r} is the model server's configuration file in the repository")
    if not (DEVICE.fullmatch(device) and len(device) <= DEVICE_MAX):
        raise RepositoryError(
            f"device {device[:80]!r} is not an OpenVINO device name (CPU, GPU, GPU.1, NPU, AUTO, HETERO:GPU,CPU, ...)"
        )
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise RepositoryError(f"version {version} is not a whole number from 1 to {MAX_VERSION} (both engines' int64)")
    if root.exists() and not root.is_dir():
        raise OutputError(f"output {root} exists and is not a folder")
    plans = _read_artifacts(artifacts, name)
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    done = False
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
        with repository_lock(root):
            added = _add(plans, root, device, hint, version)
        done = True
    finally:
        if not done:
            remove_empty(created)
    return RepositoryResult(root, added)


def _add(plans: list[_Plan], root: Path, device: str, hint: str, version: int | None) -> list[Added]:
    """The add itself, under the lock: number the versions, stage and check every file, commit."""
    _number_versions(plans, root, version)
    config_path = root / OVMS_CONFIG
    config = read_ovms_config(config_path) if config_path.is_file() else {"model_config_list": []}
    listed = {entry["config"]["name"] for entry in config["model_config_list"]}
    added = []
    with staging_folder(root, "repository") as staging:
        try:
            for plan in plans:
                # Every version of a model fits its config.pbtxt (the one there, or the one this
                # add writes): one resolution, one kind of file.
                pbtxt, staged = root / plan.name / TRITON_CONFIG, staging / plan.name / TRITON_CONFIG
                if os.path.lexists(root / plan.name) and not (root / plan.name).is_dir():
                    raise RepositoryError(f"{root / plan.name} is not a folder: model {plan.name} cannot go there")
                if os.path.lexists(pbtxt) and not pbtxt.is_file():
                    raise RepositoryError(f"{pbtxt} is not a file: Triton could not read model {plan.name}'s config")
                if not pbtxt.is_file():
                    if not staged.is_file():
                        staged.parent.mkdir()
                        staged.write_text(triton_config(plan.name, plan.metadata, plan.kind, hint))
                    pbtxt = staged
                _check_triton_config(pbtxt, plan.name, plan.metadata, plan.kind)
                folder = staging / plan.name / str(plan.version)
                folder.mkdir(parents=True)
                files = [folder / name for name in MODEL_FILES[plan.kind]]
                for source, target in zip(artifact_files(plan.artifact), files, strict=True):
                    _copy(source, target)
                artifact_metadata(files[0])  # the copy is whole (an IR's .bin as long as its .xml expects)
                if plan.name not in listed:
                    config["model_config_list"].append(ovms_entry(plan.name, device, hint))
                    listed.add(plan.name)
                final = root / plan.name / str(plan.version)
                added.append(Added(plan.artifact, plan.name, plan.version, [final / f.name for f in files]))
            staged_config = staging / OVMS_CONFIG
            staged_config.write_text(json.dumps(config, indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
        validate_ovms_config(json.loads(staged_config.read_text()), config_path)
        _commit(staging, root, plans)
    return added


def _commit(staging: Path, root: Path, plans: list[_Plan]) -> None:
    """Move the staged version folders, new ``config.pbtxt`` files and ``config.json`` into
    ``root``: renames within one file system, the configuration last. All or nothing: on any
    failure (or interrupt) what was moved goes back, and the folders made are removed."""
    moved: list[tuple[Path, Path]] = []
    made: list[Path] = []
    try:
        for plan in plans:
            folder = root / plan.name
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
            target = folder / str(plan.version)
            if os.path.lexists(target):
                raise RepositoryError(f"{target} appeared while writing; nothing was added")
            # Noted before the rename: an interrupt between the two still undoes it.
            moved.append((staging / plan.name / str(plan.version), target))
            os.rename(staging / plan.name / str(plan.version), target)
            pbtxt = staging / plan.name / TRITON_CONFIG
            if pbtxt.is_file():
                if os.path.lexists(folder / TRITON_CONFIG):
                    raise RepositoryError(f"{folder / TRITON_CONFIG} appeared while writing; nothing was added")
                moved.append((pbtxt, folder / TRITON_CONFIG))
                os.rename(pbtxt, folder / TRITON_CONFIG)
        os.replace(staging / OVMS_CONFIG, root / OVMS_CONFIG)
    except BaseException as exc:
        for source, target in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(target, source)
        remove_empty(made[::-1])
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
        raise
