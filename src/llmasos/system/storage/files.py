"""An app's file area: a directory the app can read and write but never leave.

Every path an app passes goes through `FileArea.resolve`, the one place that decides what is allowed. It
works on the text first (no absolute paths, no `..`, no `~`, even disguised by URL-encoding or backslashes)
and then on the disk (no symlink anywhere on the way, checked with `lstat`). Files are also opened with
O_NOFOLLOW. The area can only be changed through this class, which never creates symlinks, so the gap
between the check and the use cannot be exploited through it.

Paths are used literally: `a%20b.txt` names a file called `a%20b.txt`. Decoding is only done to recognise
traversal attempts, which are refused in every spelling.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from llmasos.system.errors import InvalidRequest, NotFound, PermissionDenied, QuotaExceeded, SystemCallError

MAX_PATH_LENGTH = 1024
MAX_COMPONENT_BYTES = 255
# Names of in-flight (or crash-orphaned) atomic writes; hidden from listings, counted in the quota.
_TMP_PREFIX = ".filearea-tmp-"
_MAX_DECODE_ROUNDS = 8
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Opening a FIFO for reading would block until a writer shows up; non-blocking makes it fail the S_ISREG check.
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _shown(path: str) -> str:
    return repr(path if len(path) <= 80 else path[:77] + "...")


def _leaves(path: str, why: str) -> PermissionDenied:
    return PermissionDenied(f"path {_shown(path)} leaves the app's file area ({why})", param="path")


def _not_allowed(path: str, why: str) -> PermissionDenied:
    return PermissionDenied(f"path {_shown(path)} is not allowed ({why})", param="path")


def _spellings(path: str) -> list[str]:
    """The path and every form it takes under repeated URL-decoding and Unicode compatibility folding,
    so `%252e%252e` and fullwidth dots are judged as the `..` they can turn into somewhere downstream."""
    forms = [path]
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    else:
        raise _not_allowed(path, "too many layers of URL-encoding")
    return forms + [unicodedata.normalize("NFKC", form) for form in forms]


def _check_spelling(path: str, form: str) -> None:
    if "\x00" in form:
        raise _not_allowed(path, "NUL byte")
    if _CONTROL.search(form):
        raise _not_allowed(path, "control character")
    if form.startswith(("/", "\\")):
        raise _leaves(path, "absolute path")
    if _DRIVE.match(form):
        raise _leaves(path, "drive-qualified path")
    if form.startswith("~"):
        raise _leaves(path, "home-directory expansion")
    for part in re.split(r"[/\\]", form):
        # Windows treats '...' like '..'; no real file needs a name made only of dots.
        if len(part) >= 2 and set(part) == {"."}:
            raise _leaves(path, "'..' component")
    if "\\" in form:
        raise _not_allowed(path, "backslash; use '/' as the separator")


def _components(path: str) -> list[str]:
    """The path's components after the text-level checks; '' and '.' components are dropped."""
    if not isinstance(path, str):
        raise InvalidRequest("path must be a string", param="path")
    if not path.strip():
        raise _not_allowed(path, "empty path")
    if len(path) > MAX_PATH_LENGTH:
        raise _not_allowed(path, f"longer than {MAX_PATH_LENGTH} characters")
    for form in _spellings(path):
        _check_spelling(path, form)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise _not_allowed(path, "names no file")
    for part in parts:
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            raise _not_allowed(path, "not valid Unicode text") from None
        if size > MAX_COMPONENT_BYTES:
            raise _not_allowed(path, f"a component is longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


class FileArea:
    def __init__(self, root: Path | str, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise InvalidRequest("max_bytes must not be negative", param="max_bytes")
        Path(root).mkdir(parents=True, exist_ok=True)
        # The root is chosen by the OS, not the app, so resolving symlinks above it is fine.
        self.root = Path(root).resolve(strict=True)
        self.max_bytes = max_bytes
        # Serialises quota check + write within this process, so two writes cannot both fit the last bytes.
        self._lock = threading.Lock()

    # -- the single place that validates --------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The absolute location of `path` inside the area, or `PermissionDenied` if it would leave the area
        or is not allowed. The file need not exist."""
        parts = _components(path)
        current = self.root
        for part in parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing further exists, so nothing further can be a symlink
            if stat.S_ISLNK(mode):
                raise _leaves(path, "symlinks are not allowed")
        return self.root.joinpath(*parts)

    # -- operations -------------------------------------------------------------------------------------

    def write(self, path: str, data: bytes | str) -> int:
        """Atomically replace (or create) the file; returns the bytes written."""
        target = self.resolve(path)
        if isinstance(data, str):
            payload = data.encode("utf-8")
        elif isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
        else:
            raise InvalidRequest("data must be bytes or str", param="data")
        with self._lock:
            self._check_quota(path, target, len(payload))
            created = self._make_parents(path, target)
            try:
                self._replace(target, payload)
            except BaseException as exc:
                # A failed write leaves the area as it was: no temp file, no directories it made.
                for directory in reversed(created):
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)
                if isinstance(exc, OSError):
                    raise self._os_error(path, exc) from exc
                raise
        return len(payload)

    def read(self, path: str) -> bytes:
        target = self.resolve(path)
        try:
            fd = os.open(target, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no file {_shown(path)} in the app's file area", param="path") from None
        except OSError as exc:
            raise self._os_error(path, exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidRequest(f"{_shown(path)} is not a file", param="path")
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def read_text(self, path: str) -> str:
        try:
            return self.read(path).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{_shown(path)} is not UTF-8 text", param="path") from None

    def delete(self, path: str) -> None:
        target = self.resolve(path)
        try:
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode):
                raise InvalidRequest(f"{_shown(path)} is a directory, not a file", param="path")
            os.unlink(target)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no file {_shown(path)} in the app's file area", param="path") from None
        except OSError as exc:
            raise self._os_error(path, exc) from exc

    def exists(self, path: str) -> bool:
        target = self.resolve(path)
        try:
            os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self._walk(include_temp=True))

    def list(self, prefix: str = "") -> list[dict]:
        """Files whose area-relative path starts with `prefix`, sorted: `{"path", "size", "modified"}`
        with `modified` in seconds since the epoch. Symlinks are never listed."""
        wanted = ""
        if prefix:
            # Validated like any path; the trailing '/' matters ('a/' must not match 'ab.txt').
            wanted = self.resolve(prefix).relative_to(self.root).as_posix() + (
                "/" if prefix.endswith("/") else ""
            )
        entries = [
            {"path": rel, "size": size, "modified": modified}
            for rel, size, modified in self._walk(include_temp=False)
            if rel.startswith(wanted)
        ]
        return sorted(entries, key=lambda entry: entry["path"])

    # -- helpers ----------------------------------------------------------------------------------------

    def _walk(self, *, include_temp: bool) -> Iterator[tuple[str, int, float]]:
        """(relative path, size, mtime) of every regular file, never following symlinks."""
        pending = [(self.root, "")]
        while pending:
            directory, rel = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            for entry in entries:
                child = f"{rel}{entry.name}"
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), child + "/"))
                elif entry.is_file(follow_symlinks=False) and (
                    include_temp or not entry.name.startswith(_TMP_PREFIX)
                ):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield child, info.st_size, info.st_mtime

    def _check_quota(self, path: str, target: Path, size: int) -> None:
        try:
            current = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            current = None
        if current is not None and stat.S_ISDIR(current.st_mode):
            raise InvalidRequest(f"{_shown(path)} is a directory, not a file", param="path")
        if self.max_bytes is None:
            return
        replaced = current.st_size if current is not None and stat.S_ISREG(current.st_mode) else 0
        total = self.used_bytes() - replaced + size
        if total > self.max_bytes:
            raise QuotaExceeded(
                f"writing {size} bytes to {_shown(path)} would bring the app's file area to {total} bytes, "
                f"over its quota of {self.max_bytes}"
            )

    def _make_parents(self, path: str, target: Path) -> list[Path]:
        """Create the missing directories between the root and `target`; returns those it created."""
        created: list[Path] = []
        current = self.root
        for part in target.relative_to(self.root).parts[:-1]:
            current = current / part
            try:
                os.mkdir(current)
                created.append(current)
            except FileExistsError:
                mode = os.lstat(current).st_mode
                if stat.S_ISLNK(mode):
                    raise _leaves(path, "symlinks are not allowed") from None
                if not stat.S_ISDIR(mode):
                    raise InvalidRequest(
                        f"{_shown(path)}: {part!r} is a file, not a directory", param="path"
                    ) from None
            except OSError as exc:
                raise self._os_error(path, exc) from exc
        return created

    def _replace(self, target: Path, payload: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
            # rename() replaces a symlink at the target rather than following it, so this cannot escape.
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        self._sync_directory(target.parent)

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        """Make the rename itself durable; best effort, as not every platform can fsync a directory."""
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _os_error(path: str, exc: OSError) -> SystemCallError:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink that appeared after resolve()
            return _leaves(path, "symlinks are not allowed")
        if exc.errno == errno.EISDIR:
            return InvalidRequest(f"{_shown(path)} is a directory, not a file", param="path")
        return SystemCallError(f"file area operation on {_shown(path)} failed: {exc.strerror}")
