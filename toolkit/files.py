"""Files the toolkit writes: atomically (a unique temporary beside the target, fsync, rename), so
a crash, a full disk or a second process never leaves a partial or mixed file; and the lock that
keeps two runs out of one run directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from toolkit.errors import ToolkitError

#: ``.<name>.<pid>.<random>.tmp``; the older ``.<name>.tmp`` too (written before the names were unique)
_TEMPORARY = re.compile(r"^\.(?P<target>.+?)(\.\d+\.[0-9a-f]+)?\.tmp$")


def temporary_path(path: Path) -> Path:
    """A name beside ``path`` for writing it, unique to this process and this write: two
    processes (or two writes in one) writing the same file never share a temporary."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def temporary_target(name: str) -> str | None:
    """The name of the file that the temporary ``name`` (of :func:`temporary_path`) was writing, else None."""
    match = _TEMPORARY.match(name)
    return match["target"] if match else None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (:func:`temporary_path`) for a writer that opens the file
    by its name, such as a library's; when the block ends without error the file is fsynced and
    replaces ``path``. On any failure, an interrupt included, the temporary is removed and
    ``path`` keeps what it held. An ``OSError`` naming no file (a full disk fails a write, not an
    open) names ``path``."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)  # fsync reaches what any descriptor wrote
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(temporary)):
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file whose content replaces ``path`` when the block ends without error, as
    :func:`atomic_path`'s."""
    with atomic_path(path) as temporary, open(temporary, mode) as handle:
        yield handle


def write_text(path: str | Path, text: str) -> None:
    """``path`` holding ``text``, written by :func:`atomic_write`."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file the toolkit wrote; a damaged one is an error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ToolkitError(f"{path}: not valid JSON ({error}); the file is damaged") from None


@contextlib.contextmanager
def directory_lock(directory: Path, what: str = "run") -> Iterator[None]:
    """Hold ``directory`` for this process for the length of the block: a second holder fails at
    once, naming the first one's pid. An flock on a file inside it, so the lock dies with the
    process (a killed run leaves nothing that stops its resumption); the file itself stays."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise ToolkitError(f"{directory}: in use by another {what}{by}; wait for it to end, or choose "
                               f"another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
