"""File plumbing shared by every saved artefact: atomic writes, sha256 fingerprints, format headers, workdir locks.

* :func:`atomic_file` / :func:`write_text_atomic` and :func:`atomic_directory`: write into a temporary sibling and
  ``os.replace`` it into place, so a reader (or a crash) never sees a half-written file or directory.
* :func:`sha256_file`, :func:`params_sha256`: the identity of a file and of a parameter tree.
* :func:`header`, :func:`check_header`, :func:`read_json`: every JSON header carries ``{"format": NAME,
  "version": N}``; a reader refuses another format, a newer version and unreadable JSON with one message that
  names the file.
* :func:`workdir_lock`: one process at a time per training workdir (``fcntl.flock``; a lock whose process died is
  taken over).

NumPy and the standard library only.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import pathlib
import shutil
import socket
import tempfile

import numpy as np

from .errors import BadFileError, WorkdirLockedError

LOCK_NAME = ".lock"


# ------------------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary sibling directory of ``path``; on success it replaces ``path`` (a reader never sees a
    half-written directory), on any error it is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary sibling path of ``path`` to write; on success it replaces ``path``, on error it is
    removed (the previous ``path``, if any, is untouched)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> pathlib.Path:
    """Write a text file atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return pathlib.Path(path)


# ------------------------------------------------------------------------------------------------ fingerprints
def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten_params(params, prefix="") -> dict[str, np.ndarray]:
    """A nested params dict -> {"a/b/c": array}."""
    flat = {}
    for key, value in params.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(flatten_params(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b/c": array} -> a nested params dict."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def params_sha256(params) -> str:
    """sha256 over a params tree's paths, shapes and float32 bytes (device arrays are fetched): the identity of a
    saved model's parameters and of the base model that adapters and search heads were trained on."""
    digest = hashlib.sha256()
    for key, value in sorted(flatten_params(params).items()):
        arr = np.ascontiguousarray(np.asarray(value, np.float32))
        digest.update(key.encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ headers
def header(fmt: str, version: int, **fields) -> dict:
    """The first keys of a JSON header: ``{"format": fmt, "version": version, **fields}``."""
    return {"format": fmt, "version": version, **fields}


def check_header(doc, fmt: str, version: int, path) -> dict:
    """Refuse a header that is not ``fmt`` or is newer than ``version`` (BadFileError naming ``path``)."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BadFileError(f"{path}: not a {fmt} file (format {found!r}, expected {fmt!r})")
    found = doc.get("version", 0)
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise BadFileError(f"{path}: {fmt} version must be a positive integer, got {found!r}")
    if found > version:
        raise BadFileError(f"{path}: {fmt} version {found} is newer than this stellarfm_jax reads ({version}); "
                           f"update stellarfm_jax")
    return doc


def read_json(path, fmt: str | None = None, version: int | None = None) -> dict:
    """A JSON file (BadFileError naming it when it is not JSON); with ``fmt``, its header is checked too."""
    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadFileError(f"{path}: not readable JSON ({err})") from None
    if fmt is not None:
        check_header(doc, fmt, version, path)
    return doc


# ------------------------------------------------------------------------------------------------ workdir lock
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path) -> dict | None:
    """The holder record of a workdir lock file (pid, host, started), or None when there is none."""
    try:
        text = (pathlib.Path(path) / LOCK_NAME).read_text()
        record = json.loads(text) if text.strip() else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def workdir_lock(path, log=None):
    """Hold the lock of a training workdir (``PATH/.lock``, created with the directory) while the block runs.

    Another process holding it -> :class:`~stellarfm_jax.cli.WorkdirLockedError` naming its pid, host and start
    time. The lock is an ``fcntl.flock`` on the file, so the kernel releases it when its process ends, however it
    ends (kill -9 included): the record a dead process leaves behind is taken over (and ``log``ged). Yields the
    record written (pid, host, started)."""
    import fcntl

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = read_lock(path) or {}
            raise WorkdirLockedError(
                f"workdir {path} is in use by another run (pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to finish, stop it, "
                f"or use another --workdir") from None
        previous = read_lock(path)
        if previous and log is not None:
            same_host = previous.get("host") == socket.gethostname()
            gone = same_host and isinstance(previous.get("pid"), int) and not _process_alive(previous["pid"])
            log(f"taking over the lock of {path} left by pid {previous.get('pid')} on {previous.get('host')} "
                f"(started {previous.get('started')}{', no longer running' if gone else ''})")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        try:
            yield record
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no holder record
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
