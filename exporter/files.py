"""Writing artifacts so that a failed or interrupted export never leaves a partial file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.artifact import artifact_files
from exporter.errors import OutputError

# Free space below which a failed write is put down to a full disk (the half-written
# temporary file is still there when the reason is asked).
FULL_DISK_BYTES = 16 << 20

__all__ = [
    "atomic_outputs",
    "check_not_input",
    "check_writable",
    "remove_empty",
    "sha256_of",
    "staging_folder",
    "writable_dir",
    "write_failure",
    "write_json",
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_dir(path: Path) -> list[Path]:
    """Create ``path``'s parent if needed and return the folders created, deepest first;
    raise ``OutputError`` if it cannot hold ``path``."""
    path = Path(path)
    _check_replaceable(path)
    parent = path.parent
    missing = [folder for folder in (parent, *parent.parents) if not folder.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable")
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are still empty: a failed command leaves no
    folder it created."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_not_input(output: Path | None, *inputs: object) -> None:
    """Raise ``OutputError`` if ``output`` is one of the files of ``inputs`` (paths; an IR's
    ``.xml`` stands for its ``.bin`` too, ``artifact_files``; other values, such as the
    synthetic weights' name, are skipped), symbolic links resolved."""
    if output is None:
        return
    target = Path(output).resolve()
    for item in inputs:
        if not isinstance(item, (str, Path)):
            continue
        for file in artifact_files(Path(item)):
            if file.exists() and file.resolve() == target:
                what = f"the input {item}" if file == Path(item) else f"{file}, the weights of the input {item}"
                raise OutputError(f"output {output} is {what}; refusing to overwrite it")


def _check_replaceable(path: Path) -> None:
    """Raise ``OutputError`` if ``path`` exists (links followed) and is not a regular file.

    Outputs are written beside and renamed into place: over a device (``/dev/null``, a
    terminal) or a FIFO that would replace the node itself with a file, and writing into it
    instead would be neither atomic nor safe (``/dev/full``). So only a regular file is
    replaced; ``--json /dev/stdout`` is refused unless standard output is a file."""
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there (or a dangling link): a new file
        return
    if stat.S_ISDIR(mode):
        raise OutputError(f"output {path} is a directory; give a file path")
    if not stat.S_ISREG(mode):
        raise OutputError(
            f"output {path} exists and is not a regular file (a device, FIFO or socket); give a file path"
        )


def _final(path: Path) -> Path:
    # A link's target is what gets replaced, the link kept (as `>` writes through it): renaming
    # over the link would put a file where it was (/dev/stdout as root).
    return path.resolve() if path.is_symlink() else path


def check_writable(path: Path) -> None:
    """Raise ``OutputError`` if ``path`` could not be written, creating nothing: for checks
    made before long work whose own writer creates the folders. The rules are
    :func:`atomic_outputs`' (an existing ``path`` must be a regular file)."""
    path = Path(path)
    _check_replaceable(path)
    path = _final(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create output folder {path.parent}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {ancestor} is not writable")
    # Permission bits do not tell a read-only mount, /proc, or root's view: try for real.
    try:
        handle, probe = tempfile.mkstemp(prefix=".bgm-export-probe-", dir=ancestor)
    except OSError as exc:
        raise OutputError(f"cannot write in {ancestor}: {_reason(exc)}") from None
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; on success rename them into place.

    The temporaries share one stem (an IR's ``.xml`` finds its ``.bin`` by stem). On any
    exception, or an interrupt, they are removed and existing files are left untouched.
    An existing path must be a regular file (links followed; a directory, device, FIFO or
    socket raises ``OutputError``); a symbolic link stays, the file it names is replaced.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        _check_replaceable(path)
    paths = [_final(p) for p in paths]
    created = writable_dir(paths[0])
    parent, stem = paths[0].parent, paths[0].stem
    done = False
    try:
        try:
            workdir = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise OutputError(f"cannot write in {parent}: {exc.strerror}") from None
        temporaries = [workdir / (stem + p.suffix) for p in paths]
        try:
            yield temporaries
            # The .xml goes last: it is what readers open, so its pair is in place first.
            for temporary, final in reversed(list(zip(temporaries, paths, strict=True))):
                created += writable_dir(final)
                os.replace(temporary, final)
            done = True
        except OSError as exc:
            raise OutputError(f"cannot write {paths[0]}: {_reason(exc)}") from None
        finally:
            for temporary in temporaries:
                temporary.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                workdir.rmdir()
    finally:
        if not done:
            remove_empty(created)


@contextlib.contextmanager
def staging_folder(root: Path, prefix: str) -> Iterator[Path]:
    """A folder inside ``root`` (so that moving out of it is a rename), made with ``root`` and
    its parents where missing. It is always removed; on failure (the caller's exception, an
    interrupt) so are the folders it made, and ``root`` is as it was."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputError(f"output {root} exists and is not a folder")
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-", suffix=".partial", dir=root))
    except OSError as exc:
        remove_empty(created)
        raise OutputError(f"cannot write in {root}: {exc.strerror}") from None
    done = False
    try:
        yield staging
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            remove_empty(created)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def write_failure(folder: Path, exc: Exception) -> str:
    """Why a library (OpenVINO, whose message is ``basic_ios::clear: iostream error``) could
    not write into ``folder``: a full disk if it is one, else the library's first line."""
    if isinstance(exc, OSError):
        return _reason(exc)
    try:
        full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        full = False
    return "no space left on the device" if full else str(exc).splitlines()[0]


def write_json(data: object, path: Path) -> None:
    """``data`` as indented JSON at ``path``, atomically: ``path`` is new or a regular file
    (:func:`atomic_outputs`), never a device or FIFO, which would be replaced by a file."""
    with atomic_outputs(Path(path)) as (temporary,):
        temporary.write_text(json.dumps(data, indent=2) + "\n")
