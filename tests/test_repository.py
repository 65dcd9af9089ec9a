"""bgm-export repository: the layout OpenVINO Model Server and Triton load, checked with their
own schemas (Triton's model_config.proto from tritonclient, the model server's JSON schema),
versions added and never overwritten, and bad input refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.artifact import io_shapes
from exporter.errors import ArtifactError, OutputError, RepositoryError
from exporter.repository import (
    OVMS_CONFIG,
    TRITON_CONFIG,
    add_to_repository,
    check_repository,
    parse_triton_config,
    read_repository,
    tensor_specs,
    validate_ovms_config,
)
from helpers import BACKBONES, GOLDEN_CONFIG

MODEL = "background-matting-mobilenetv2"


def fake_artifact(folder: Path, backbone: str, kind: str, precision: str = "FP32", **changes: object) -> Path:
    """An artifact that carries real bgm-export metadata and the declared inputs and outputs,
    without weights: what the repository reads (its schema checks need no more)."""
    import onnx
    from onnx import TensorProto, helper

    config = GOLDEN_CONFIG.replace(backbone=backbone, precision=precision, **changes)
    metadata = config.metadata("sha256:" + "0" * 64)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{backbone}-{precision.lower()}"
    if kind == ".xml":
        keys = "".join(f'<{key} value="{value}"/>' for key, value in metadata.items())
        stem.with_suffix(".xml").write_text(
            f'<?xml version="1.0"?><net name="fake" version="11"><layers/><edges/>'
            f"<rt_info><model_info>{keys}</model_info></rt_info></net>"
        )
        stem.with_suffix(".bin").write_bytes(b"")  # no constants: an empty .bin is exactly as long
        return stem.with_suffix(".xml")
    shapes = io_shapes(config)
    values = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()}
    outputs = [values[name] for name in config.outputs]
    # One node: a graph of none is what an empty file reads as, and is refused as one.
    nodes = [helper.make_node("Identity", ["src"], ["src_copy"])]
    graph = helper.make_graph(nodes, "fake", [values["src"], values["bgr"]], outputs)
    model = helper.make_model(graph)
    helper.set_model_props(model, metadata)
    onnx.save(model, stem.with_suffix(".onnx"))
    return stem.with_suffix(".onnx")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what "nothing written" compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_golden_artifacts_make_a_repository_both_engines_take(golden_irs, golden_onnx, tmp_path, cli):
    root = tmp_path / "repo"
    result = cli("repository", golden_irs["FP32"], golden_irs["FP16"], golden_onnx, "--out", root)
    assert result.exit_code == 0, result.output
    names = {MODEL: "model.xml", f"{MODEL}-fp16": "model.xml", f"{MODEL}-onnx": "model.onnx"}
    for name, file in names.items():
        assert (root / name / "1" / file).is_file() and (root / name / TRITON_CONFIG).is_file()
        assert f"{name} version 1" in result.output
    assert (root / MODEL / "1" / "model.bin").read_bytes() == golden_irs["FP32"].with_suffix(".bin").read_bytes()

    config = json.loads((root / OVMS_CONFIG).read_text())
    validate_ovms_config(config, root / OVMS_CONFIG)
    entries = {e["config"]["name"]: e["config"] for e in config["model_config_list"]}
    assert entries[MODEL] == {"name": MODEL, "base_path": MODEL, "target_device": "CPU",
                              "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT"}}  # fmt: skip

    triton = parse_triton_config(root / f"{MODEL}-onnx" / TRITON_CONFIG)
    assert (triton.name, triton.backend, triton.max_batch_size) == (f"{MODEL}-onnx", "openvino", 0)
    assert triton.default_model_filename == "model.onnx"
    assert triton.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
    inputs, outputs = tensor_specs(GOLDEN_CONFIG.metadata("x"))
    assert [(t.name, list(t.dims)) for t in triton.input] == [(s.name, list(s.shape)) for s in inputs]
    assert [(t.name, list(t.dims)) for t in triton.output] == [(s.name, list(s.shape)) for s in outputs]
    assert parse_triton_config(root / MODEL / TRITON_CONFIG).default_model_filename == ""  # model.xml
    assert [m.name for m in check_repository(root)] == list(names)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_adding_twice_gives_versions_1_and_2_and_keeps_version_1(golden_irs, tmp_path):
    root = tmp_path / "repo"
    add_to_repository([golden_irs["FP32"]], root)
    before = tree(root / MODEL / "1")
    result = add_to_repository([golden_irs["FP32"]], root)
    assert [(a.name, a.version) for a in result.added] == [(MODEL, 2)]
    assert tree(root / MODEL / "1") == before
    (model,) = check_repository(root)
    assert sorted(model.versions) == [1, 2] and model.latest == 2
    assert len(json.loads((root / OVMS_CONFIG).read_text())["model_config_list"]) == 1


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_precision_and_format_passes_both_schemas(backbone, tmp_path):
    """FP32, FP16, INT8 IRs and the ONNX of each backbone: names, versions, both schemas."""
    artifacts = [fake_artifact(tmp_path / "in", backbone, ".xml", p) for p in ("FP32", "FP16", "INT8")]
    artifacts.append(fake_artifact(tmp_path / "in", backbone, ".onnx"))
    root = tmp_path / "repo"
    result = add_to_repository(artifacts, root)
    name = f"background-matting-{backbone}"
    assert [a.name for a in result.added] == [name, f"{name}-fp16", f"{name}-int8", f"{name}-onnx"]
    models = check_repository(root)  # parses every config.pbtxt, validates config.json
    assert {m.name: sorted(m.versions) for m in models} == {a.name: [1] for a in result.added}
    again = add_to_repository(artifacts[:1], root)
    assert [(a.name, a.version) for a in again.added] == [(name, 2)]
    check_repository(root)


@pytest.mark.parametrize(
    ("changes", "outputs", "dims"),
    [
        ({"model_type": "base"}, ["pha", "fgr", "err", "hid"], [1, 32, 192, 320]),
        ({"extra_outputs": ("err", "ref")}, ["pha", "fgr", "err_sm", "ref_sm"], [1, 1, 48, 80]),
        ({"dynamic": True}, ["pha", "fgr"], [1, 3, -1, -1]),
    ],
)
def test_every_output_the_artifact_states_is_declared(changes, outputs, dims, tmp_path):
    """A base model's, extra outputs, and a dynamic model's free size (-1, for Triton)."""
    artifact = fake_artifact(tmp_path / "in", "mobilenetv2", ".onnx", **changes)
    result = add_to_repository([artifact], tmp_path / "repo")
    (added,) = result.added
    triton = parse_triton_config(tmp_path / "repo" / added.name / TRITON_CONFIG)
    assert [t.name for t in triton.output] == outputs
    assert list(triton.output[-1].dims) == dims
    check_repository(tmp_path / "repo")


def test_existing_entries_are_kept_and_the_hint_is_written_to_both(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    other = {"config": {"name": "someone-else", "base_path": "/models/other", "target_device": "GPU"}}
    (root / OVMS_CONFIG).write_text(json.dumps({"model_config_list": [other]}))
    add_to_repository([fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")], root, hint="LATENCY", device="AUTO")
    entries = json.loads((root / OVMS_CONFIG).read_text())["model_config_list"]
    assert entries[0] == other
    assert entries[1]["config"]["plugin_config"] == {"PERFORMANCE_HINT": "LATENCY"}
    assert entries[1]["config"]["target_device"] == "AUTO"
    assert parse_triton_config(root / MODEL / TRITON_CONFIG).parameters["PERFORMANCE_HINT"].string_value == "LATENCY"


def test_name_gives_another_model_and_another_resolution_needs_one(tmp_path):
    root = tmp_path / "repo"
    add_to_repository([fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")], root)
    other = tmp_path / "other"
    wide = fake_artifact(other, "mobilenetv2", ".xml")
    text = wide.read_text().replace('value="192x320"', 'value="192x384"')
    wide.write_text(text)
    before = tree(root)
    with pytest.raises(RepositoryError, match="must share its inputs and outputs"):
        add_to_repository([wide], root)
    assert tree(root) == before
    result = add_to_repository([wide], root, name="matting-192x384")
    assert [(a.name, a.version) for a in result.added] == [("matting-192x384", 1)]
    assert [m.name for m in check_repository(root)] == [MODEL, "matting-192x384"]


def test_schema_checks_catch_what_the_engines_refuse(tmp_path):
    with pytest.raises(RepositoryError, match="base_path"):
        validate_ovms_config({"model_config_list": [{"config": {"name": "x"}}]}, tmp_path / OVMS_CONFIG)
    with pytest.raises(RepositoryError, match="unexpected"):
        validate_ovms_config({"model_config_list": [{"config": {"name": "x", "base_path": "x", "hint": 1}}]}, tmp_path)
    bad = tmp_path / TRITON_CONFIG
    bad.write_text('name: "x"\nbackend: "openvino"\ninput [ { name: "src" data_type: TYPE_FLOAT32 } ]\n')
    with pytest.raises(RepositoryError, match="does not parse as Triton's ModelConfig"):
        parse_triton_config(bad)
    with pytest.raises(RepositoryError, match="no config.json"):
        read_repository(tmp_path)


# ---- bad input: one error line, exit 2, nothing written ----


def test_artifact_without_metadata_is_refused_and_nothing_written(tmp_path, cli, one_error):
    import onnx
    from onnx import helper

    plain = tmp_path / "plain.onnx"
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain", [x], [y])),
              plain)  # fmt: skip
    good = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")
    one_error(cli("repository", good, plain, "--out", tmp_path / "repo"), "carries no bgm-export metadata")
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ArtifactError):
        add_to_repository([good, plain], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_output_that_is_a_file_is_refused(tmp_path, cli, one_error):
    out = tmp_path / "repo"
    out.write_text("not a folder")
    one_error(cli("repository", fake_artifact(tmp_path / "in", "mobilenetv2", ".xml"), "--out", out), "not a folder")
    assert out.read_text() == "not a folder"
    with pytest.raises(OutputError, match="not a folder"):
        add_to_repository([fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")], out)


def test_version_that_exists_is_refused_and_nothing_written(tmp_path, cli, one_error):
    root = tmp_path / "repo"
    artifact = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")
    fp16 = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml", "FP16")
    assert cli("repository", artifact, "--out", root).exit_code == 0
    before = tree(root)
    one_error(cli("repository", fp16, artifact, "--out", root, "--version", "1"), f"version 1 of {MODEL} exists")
    assert tree(root) == before and not (root / f"{MODEL}-fp16").exists()
    assert cli("repository", artifact, "--out", root, "--version", "5").exit_code == 0
    assert sorted(read_repository(root)[0].versions) == [1, 5]


def test_bad_name_and_no_artifact_are_refused(tmp_path, cli, one_error):
    artifact = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")
    one_error(cli("repository", artifact, "--out", tmp_path / "r", "--name", "../up"), "model name '../up'")
    one_error(cli("repository", tmp_path / "missing.xml", "--out", tmp_path / "r"), "does not exist")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_int8_artifact_is_its_own_model(int8_ir, golden_irs, tmp_path):
    root = tmp_path / "repo"
    result = add_to_repository([golden_irs["FP32"], int8_ir], root)
    assert [a.name for a in result.added] == [MODEL, f"{MODEL}-int8"]
    assert [m.name for m in check_repository(root)] == [MODEL, f"{MODEL}-int8"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_resnet_exports_make_a_repository(backbone, recipe_weights, golden_config, tmp_path):
    from exporter.export.onnx import export_onnx
    from exporter.export.openvino import export_ir

    onnx_path = tmp_path / f"{backbone}.onnx"
    export_onnx(golden_config(backbone), recipe_weights(backbone), onnx_path)
    ir = export_ir(onnx_path, tmp_path / "FP16" / f"{backbone}.xml", "FP16").xml
    result = add_to_repository([ir, onnx_path], tmp_path / "repo")
    name = f"background-matting-{backbone}"
    assert [a.name for a in result.added] == [f"{name}-fp16", f"{name}-onnx"]
    check_repository(tmp_path / "repo")


# ---- one transaction: a lock, and all or nothing ----


def test_concurrent_adds_all_land(tmp_path, monkeypatch):
    """Three adds into one repository at once: each waits for the lock, so config.json lists
    all three models (without it, each replaced the others' config.json: one of three)."""
    import threading
    import time

    from exporter import repository

    copy = repository._copy

    def slow_copy(source: Path, target: Path) -> None:  # every add reads config.json before any writes
        time.sleep(0.3)
        copy(source, target)

    monkeypatch.setattr(repository, "_copy", slow_copy)
    root = tmp_path / "repo"
    artifacts = [fake_artifact(tmp_path / "in", backbone, ".xml") for backbone in BACKBONES]
    failures: list[BaseException] = []

    def add(artifact: Path) -> None:
        try:
            add_to_repository([artifact], root)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(a,)) for a in artifacts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures and not any(t.is_alive() for t in threads)
    assert sorted(m.name for m in check_repository(root)) == sorted(f"background-matting-{b}" for b in BACKBONES)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder, no lock file


def test_a_lock_held_too_long_is_one_error_and_nothing_written(tmp_path, cli, one_error, monkeypatch):
    import fcntl

    from exporter import repository

    monkeypatch.setattr(repository, "LOCK_WAIT_SECONDS", 0.3)
    root = tmp_path / "repo"
    root.mkdir()
    with (root / repository.LOCK_FILE).open("w") as held:  # another run's add, in progress
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli("repository", fake_artifact(tmp_path / "in", "mobilenetv2", ".xml"), "--out", root)
    one_error(result, f"another run has been adding to {root}")
    assert [p.name for p in root.iterdir()] == [repository.LOCK_FILE]


def test_a_version_appearing_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    """The second model's version folder appears during the copy: the first model's folder,
    version and config.pbtxt, already renamed into place, go again (they stayed before)."""
    from exporter import repository

    root = tmp_path / "repo"
    artifacts = [fake_artifact(tmp_path / "in", "mobilenetv2", ".xml", p) for p in ("FP32", "FP16")]
    copy = repository._copy

    def racing_copy(source: Path, target: Path) -> None:
        (root / f"{MODEL}-fp16" / "1").mkdir(parents=True, exist_ok=True)  # someone else's
        copy(source, target)

    monkeypatch.setattr(repository, "_copy", racing_copy)
    with pytest.raises(RepositoryError, match="appeared while writing"):
        add_to_repository(artifacts, root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [f"{MODEL}-fp16", f"{MODEL}-fp16/1"]


# ---- what the engines would not load, refused before anything is written ----


def test_one_model_takes_one_resolution_and_one_kind_of_file(tmp_path, cli, one_error):
    """Two resolutions, or an IR and an ONNX file, as versions of one model: Triton's
    config.pbtxt states one shape and one file name (check_repository refused it afterwards)."""
    root = tmp_path / "repo"
    small = fake_artifact(tmp_path / "a", "mobilenetv2", ".xml")
    wide = fake_artifact(tmp_path / "b", "mobilenetv2", ".xml")
    wide.write_text(wide.read_text().replace('value="192x320"', 'value="192x384"'))
    onnx_file = fake_artifact(tmp_path / "a", "mobilenetv2", ".onnx")
    one_error(cli("repository", small, wide, "--out", root, "--name", "m"), "must share its inputs and outputs")
    one_error(cli("repository", small, onnx_file, "--out", root, "--name", "m"), "separate models")
    assert not root.exists()
    assert cli("repository", small, "--out", root, "--name", "m").exit_code == 0
    before = tree(root)
    one_error(cli("repository", onnx_file, "--out", root, "--name", "m"), "makes Triton load model.xml")
    assert tree(root) == before
    check_repository(root)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--version", str(2**63)], "is not a whole number from 1 to 9223372036854775807"),
        (["--device", ""], "device '' is not an OpenVINO device name"),
        (["--device", "CPU\nGPU"], "device 'CPU\\nGPU' is not an OpenVINO device name"),
        (["--device", "CPU GPU"], "is not an OpenVINO device name"),
        (["--name", "m" * 300], "is not up to 255 letters"),
    ],
)
def test_odd_versions_devices_and_names_are_one_error(options, message, tmp_path, cli, one_error):
    one_error(cli("repository", fake_artifact(tmp_path / "in", "mobilenetv2", ".xml"), "--out", tmp_path / "r",
                  *options), message)  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_devices_the_model_server_takes_are_written(tmp_path):
    root = tmp_path / "repo"
    for device in ("GPU.1", "HETERO:GPU,CPU", "AUTO:-CPU", "BATCH:GPU(4)"):
        add_to_repository([fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")], root / device.replace(":", "_"),
                          device=device)  # fmt: skip
        entries = json.loads((root / device.replace(":", "_") / OVMS_CONFIG).read_text())["model_config_list"]
        assert entries[0]["config"]["target_device"] == device


def test_folders_that_are_no_version_are_ignored(tmp_path):
    """A folder named "²" (str.isdigit() is True, int() refuses it) or beyond int64 is not a
    version to the engines; the next version counts from the real ones."""
    int64_max = 2**63 - 1  # both engines' version type
    root = tmp_path / "repo"
    artifact = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")
    add_to_repository([artifact], root)
    for odd in ("²", "٣", str(int64_max + 1), "0"):
        (root / MODEL / odd).mkdir()
    assert [(a.name, a.version) for a in add_to_repository([artifact], root).added] == [(MODEL, 2)]
    assert sorted(check_repository(root)[0].versions) == [1, 2]
    add_to_repository([artifact], root, version=int64_max)
    with pytest.raises(RepositoryError, match="the last one both engines read"):
        add_to_repository([artifact], root)


# ---- hostile repositories: one error line, nothing written outside ----


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # RecursionError in json.loads, a traceback from repository and serve
        '{"model_config_list": [' + "[" * 5000 + "]" * 5000 + "]}",  # valid JSON, as deep
        '{"model_config_list": [], "x": ' + "[" * 500 + "]" * 500 + "}",  # parses; deeper than a config
    ],
    ids=["100000 brackets", "5000 levels in the list", "500 levels"],
)
def test_a_deeply_nested_config_json_is_one_error(text, tmp_path, cli, one_error):
    from exporter.serve import served_models

    root = tmp_path / "rb"
    root.mkdir()
    (root / OVMS_CONFIG).write_text(text)
    before = tree(root)
    result = cli("repository", fake_artifact(tmp_path / "in", "mobilenetv2", ".xml"), "--out", root)
    one_error(result, f"{root / OVMS_CONFIG} is not readable JSON")
    assert tree(root) == before
    with pytest.raises(RepositoryError, match="is not readable JSON: nested deeper than 64 levels"):
        served_models(root)  # what serve reads a repository with


def test_a_config_json_larger_than_a_configuration_is_refused(tmp_path, monkeypatch):
    from exporter import repository

    monkeypatch.setattr(repository, "OVMS_CONFIG_MAX_BYTES", 64)
    (tmp_path / OVMS_CONFIG).write_text(json.dumps({"model_config_list": []}) + " " * 64)
    with pytest.raises(RepositoryError, match="is not readable JSON: over"):
        read_repository(tmp_path)


def _pbtxt_folder(root: Path) -> list[str]:
    (root / MODEL / TRITON_CONFIG).mkdir(parents=True)
    return []


def _pbtxt_fifo(root: Path) -> list[str]:
    import os

    (root / MODEL).mkdir(parents=True)
    os.mkfifo(root / MODEL / TRITON_CONFIG)  # reading it would wait for a writer
    return []


def _model_path_a_file(root: Path) -> list[str]:
    root.mkdir()
    (root / MODEL).write_text("a file")
    return []


MISLEADING = {
    # each: what is in the repository first, the options, the message ("was" said before)
    "config.pbtxt a folder": (_pbtxt_folder, f"{MODEL}/{TRITON_CONFIG} is not a file"),  # was: appeared while writing
    "config.pbtxt a FIFO": (_pbtxt_fifo, f"{MODEL}/{TRITON_CONFIG} is not a file"),  # was: appeared while writing
    "--version for two of one model": (  # was: version 5 ... exists in rt2 (no such folder)
        lambda root: ["--version", "5"],
        f"--version 5 would give two of the artifacts to version 5 of {MODEL}",
    ),
    "--name config.json": (  # was: cannot write in rc: Is a directory
        lambda root: ["--name", OVMS_CONFIG],
        "model name 'config.json' is the model server's configuration file",
    ),
    "the model folder a file": (_model_path_a_file, f"{MODEL} is not a folder"),  # was: Not a directory
}


@pytest.mark.parametrize("case", list(MISLEADING))
def test_misleading_repository_states_are_named(case, tmp_path, cli, one_error):
    prepare, message = MISLEADING[case]
    artifact = fake_artifact(tmp_path / "in", "mobilenetv2", ".xml")
    root = tmp_path / "r"
    options = prepare(root)
    before = tree(root) if root.exists() else None
    one_error(cli("repository", artifact, artifact, "--out", root, *options), message)
    assert (tree(root) if root.exists() else None) == before
    if case == "config.pbtxt a FIFO":  # check_repository waited for a writer
        with pytest.raises(RepositoryError, match="is missing or not a file"):
            parse_triton_config(root / MODEL / TRITON_CONFIG)


def test_a_lock_file_that_is_a_symlink_is_refused_and_not_followed(tmp_path, cli, one_error):
    from exporter import repository

    root, outside = tmp_path / "repo", tmp_path / "outside"
    root.mkdir()
    (root / repository.LOCK_FILE).symlink_to(outside)
    result = cli("repository", fake_artifact(tmp_path / "in", "mobilenetv2", ".xml"), "--out", root)
    one_error(result, f"{root / repository.LOCK_FILE} is a symbolic link")
    assert not outside.exists() and (root / repository.LOCK_FILE).is_symlink()
