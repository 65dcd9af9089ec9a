"""Writing artifacts so that a failed or interrupted export never leaves a partial file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.artifact import artifact_files
from exporter.errors import OutputError, shown

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
    replaced, and never one named through ``/dev`` or ``/proc`` (``--json /dev/stdout`` with
    standard output redirected to a file would replace that file)."""
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
    if _through_descriptor(path):
        # /dev/stdout redirected to a file: the file would be replaced whole, and what the
        # command printed to it before lost.
        raise OutputError(f"output {path} is a stream or descriptor, not a file of its own; give a file path")


# A process's descriptors and standard streams, by name: /dev/stdout, /dev/fd/1, /proc/self/fd/1.
_DESCRIPTOR = re.compile(r"/(dev/(fd/|stdin$|stdout$|stderr$)|proc/[^/]+/fd/)")


def _through_descriptor(path: Path) -> bool:
    """Whether ``path``, or a link on the way to its file, names a descriptor or a standard stream."""
    current = os.path.normpath(os.path.abspath(path)).replace("//", "/")
    for _ in range(40):  # as many links as the kernel follows
        if _DESCRIPTOR.match(current):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def _final(path: Path) -> Path:
    # A link's target is what gets replaced, the link kept (as `>` writes through it): renaming
    # over the link would put a file where it was (/dev/stdout as root).
    try:
        return path.resolve() if path.is_symlink() else path
    except OSError as exc:  # a name too long for the file system, a loop of links
        raise OutputError(f"output {path}: {_reason(exc)}") from None


# What atomic_outputs adds to an output's stem for the folder it writes in:
# ".{stem}." + mkdtemp's 8 random characters + ".partial".
_PARTIAL_EXTRA = len("..") + 8 + len(".partial")


def _check_name(path: Path, folder: Path) -> None:
    """Raise ``OutputError`` if ``path``'s name, or the name of the folder it is written in
    first, is longer than ``folder``'s file system allows: found before the work, not
    after it."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(os.fsencode(path.name)), len(os.fsencode(path.stem)) + _PARTIAL_EXTRA)
    if longest > limit:
        raise OutputError(
            f"output name {shown(path.name[:40])}... is too long: its stem is {len(os.fsencode(path.stem))} bytes, "
            f"at most {limit - _PARTIAL_EXTRA} here (the file system's {limit} for a name, less "
            f"{_PARTIAL_EXTRA} for the folder it is written in first)"
        )


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself (no lock file is left behind): concurrent runs
    replacing the same pair of files (an IR's .xml and .bin) each rename their pair whole,
    never one file of each."""
    import fcntl

    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a folder that cannot be opened for reading: renames still work
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on folders (NFS): renames still work
            pass
        yield
    finally:
        os.close(handle)


def _existing_ancestor(path: Path) -> Path:
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def check_writable(path: Path) -> None:
    """Raise ``OutputError`` if ``path`` could not be written, creating nothing: for checks
    made before long work whose own writer creates the folders. The rules are
    :func:`atomic_outputs`' (an existing ``path`` must be a regular file)."""
    path = Path(path)
    _check_replaceable(path)
    path = _final(path)
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"cannot create output folder {path.parent}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {ancestor} is not writable")
    _check_name(path, ancestor)
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
    _check_name(paths[0], _existing_ancestor(paths[0]))
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
            with _folder_lock(parent) if len(paths) > 1 else contextlib.nullcontext():
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
