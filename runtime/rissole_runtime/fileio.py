"""Atomic writes, output safety and content hashes.

Everything rissole writes goes to a temporary name beside the destination and is renamed into place
when complete, so an interrupted write never leaves a half file that later opens, and a failed write
never destroys what was there before. What a command may replace at its --out is decided in one place
(`check_replace`): nothing that is not the kind of artefact the command writes, ever; an artefact of
that kind only with --force (or when the command owns it, as a training run owns RUN/checkpoint).

Temporaries are named `.NAME.PID-RANDOM.tmp` (a swapped-out old directory `.NAME.PID-RANDOM.old`), so a
later run can tell its own stale leftovers (a dead PID) from another live process's and from files that
are not rissole's. Writers of one destination take an exclusive lock (`.NAME.lock`, fcntl.flock), so a
second writer into the same --out fails at once instead of racing the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rissole_runtime.progress import progress_bar

from rissole_runtime.errors import DataError

# Kinds of artefact a command writes, and how to recognise one on disk (see artefact_kind).
DATABASE, BUNDLE, CHECKPOINT, INDEX = "block database", "edge bundle", "checkpoint", "search index"
LATENTS, PNG, NPY, JSON = "latents file", "PNG image", ".npy array", "JSON results file"
CONFIG = "training config (YAML)"  # a .yaml / .yml mapping with a top-level `model` (e.g. `rissole budget --out`)
DIR_KINDS = (DATABASE, BUNDLE, CHECKPOINT, INDEX)
REGENERABLE = (PNG, NPY, JSON)  # pictures, sample arrays, metric results: replaced by the next run without --force
_PNG_MAGIC, _NPY_MAGIC = b"\x89PNG\r\n\x1a\n", b"\x93NUMPY"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library (safetensors, onnx) wraps it in its own exception type."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)
    return not isinstance(exc, DataError) and ("No space left on device" in text or "os error 28" in text)


def file_umask() -> int:
    """The process umask (read without changing it): files written here get the mode a plain open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ what is at a path
def _yaml_keys(path: Path) -> set[str]:
    """The top-level keys of a YAML mapping file (empty when it is none). Read with PyYAML where it is installed
    (the training package); the runtime distribution has no YAML parser and reads the unindented `key:` lines,
    which is all the kind checks need."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return set()
    try:
        import yaml
    except ImportError:
        return {line.split(":", 1)[0] for line in text.splitlines() if line and not line[0].isspace() and ":" in line}
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        return set()
    return {str(k) for k in cfg} if isinstance(cfg, dict) else set()


def _is_checkpoint_config(path: Path) -> bool:
    """Whether `path` is a rissole checkpoint's config.yaml (top-level `kind` and `format_version` keys)."""
    return {"kind", "format_version"} <= _yaml_keys(path)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def artefact_kind(path: str | os.PathLike) -> str | None:
    """The kind of rissole artefact at `path` (DATABASE, BUNDLE, CHECKPOINT, LATENTS, PNG, NPY), "empty" for an
    empty directory, None for anything else (or nothing)."""
    path = Path(path)
    if path.is_symlink():
        return None
    if path.is_dir():
        manifest = _json(path / "manifest.json")
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if fmt == "rissole-block-db":
            return DATABASE
        if fmt == "rissole-edge-bundle":
            return BUNDLE
        if _is_checkpoint_config(path / "config.yaml"):
            return CHECKPOINT
        if isinstance(_json(path / "searcher.json"), dict):
            return INDEX
        return "empty" if not any(path.iterdir()) else None
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(_NPY_MAGIC):
            manifest = _json(path.with_suffix(".json"))
            if isinstance(manifest, dict) and manifest.get("format") == "rissole-latents":
                return LATENTS
            return NPY
        if head == _PNG_MAGIC:
            return PNG
        if path.suffix == ".json" and isinstance(_json(path), dict):
            return JSON
        if path.suffix in (".yaml", ".yml") and "model" in _yaml_keys(path):
            return CONFIG
    return None


def describe(path: Path) -> str:
    """What is at `path`, in words, for an error message."""
    if path.is_symlink():
        return f"a symlink to {os.readlink(path)}"
    if path.is_dir():
        n = sum(1 for _ in path.iterdir())
        return f"a directory with {n} entr{'y' if n == 1 else 'ies'} that is not a rissole {'artefact'}"
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes that is not a rissole artefact of this kind"
    return "something that is neither a file nor a directory"


def check_replace(dest: str | os.PathLike, kind: str, force: bool = False, owned: bool = False) -> None:
    """Refuse to write a `kind` at `dest` when that would destroy something: anything not of this kind is never
    replaced (not even with --force); an artefact of this kind only with `force` (or `owned`: the command wrote it,
    as a training run its own checkpoint; or REGENERABLE kinds, which the next run replaces)."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    found = artefact_kind(dest)
    if found == "empty" and kind in DIR_KINDS:
        return
    if found == kind:
        if force or owned or kind in REGENERABLE:
            return
        raise DataError(f"{dest}: a {kind} is already there. Pass --force to replace it, or choose another --out.")
    what = f"a rissole {found}" if found and found != "empty" else describe(dest)
    raise DataError(f"{dest}: expected nothing there or a {kind} to replace, found {what}. rissole never replaces "
                    "that, even with --force: choose another --out, or move it away yourself.")


def check_sidecars(dest: str | os.PathLike, kind: str, sidecars: list[Path]) -> None:
    """Files written beside `dest` (a latents file's .json and .labels.npy) may be replaced only as part of the
    `kind` at `dest` they belong to; one lying there without it is something else, and is refused."""
    dest = Path(dest)
    if artefact_kind(dest) == kind:
        return
    for p in sidecars:
        if p.exists() or p.is_symlink():
            raise DataError(f"{p}: expected nothing there (it is written beside {dest.name}), found {describe(p)}. "
                            "rissole never replaces that, even with --force: choose another --out, or move it away.")


# ------------------------------------------------------------------ locks and stale temporaries
def _temp_name(dest: Path, ending: str) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}{ending}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(dest: str | os.PathLike) -> list[Path]:
    """Remove this tool's own leftovers beside `dest` from a killed run (`.NAME.PID-RANDOM.tmp|.old` whose PID is
    no longer alive). Call with the destination's lock held. A stale `.old` is the previous complete version
    of `dest`: it is put back when `dest` itself is missing (a crash between the two renames of a swap). Safe
    without the lock too: a temporary whose process is alive is never touched."""
    dest = Path(dest)
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(\d+)-[0-9a-f]{{8}}(?:\.[A-Za-z0-9]+)?(\.tmp|\.old)$")
    removed = []
    if not dest.parent.is_dir():
        return removed
    for p in sorted(dest.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if m.group(2) == ".old" and not dest.exists():
            os.replace(p, dest)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


_held: dict[str, int] = {}  # lock files this process holds -> depth (a writer may call another on one dest)


@contextlib.contextmanager
def output_lock(dest: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on `dest` (the file `.NAME.lock` beside it) for as long as a command writes it; a second
    writer fails at once, naming the PID holding it. Stale temporaries are cleaned once the lock is held."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = dest.with_name(f".{dest.name}.lock")
    key = str(lock.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~file_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(f"{dest}: another rissole command (pid {holder}) is writing here right now ({lock} is "
                            "locked). Wait for it to finish, or choose another --out.") from None
        try:  # the previous holder may have unlinked the file between our open and flock: lock the live one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = 1
    try:
        clean_stale(dest)
        yield
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


# ------------------------------------------------------------------ disk space
def disk_full_error(dest: Path, exc: OSError) -> DataError:
    free = free_bytes(dest.parent)
    return DataError(f"{dest}: no space left on device while writing ({getattr(exc, 'strerror', None) or exc}; "
                     f"{free / 2**20:.1f} MiB free "
                     f"in {dest.parent}). The temporary was removed and what was at {dest} before is unchanged; "
                     "free some space and run the command again.")


def free_bytes(folder: str | os.PathLike) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def check_free_space(path: str | os.PathLike, nbytes: int, what: str, shown: str | os.PathLike | None = None) -> None:
    """Refuse to start writing `nbytes` into the folder of `path` when the disk does not hold them (the message
    names `shown`, the destination, rather than the temporary `path`)."""
    folder = Path(path).parent
    free = free_bytes(folder)
    if nbytes > free:
        raise DataError(f"{shown or path}: {what} needs {nbytes / 2**20:.1f} MiB, but only {free / 2**20:.1f} MiB are "
                        "free there. Free some space or write elsewhere; nothing was written.")


def create_memmap(path: str | os.PathLike, dtype: Any, shape: tuple[int, ...], what: str,
                  shown: str | os.PathLike | None = None) -> np.memmap:
    """A new .npy memmap of known size with its blocks reserved on disk first (posix_fallocate): a disk that
    cannot hold it fails here with a clear error, never later with SIGBUS while the map is written."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    check_free_space(path, nbytes + 4096, what, shown)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as exc:
        del arr
        if exc.errno in _DISK_FULL:
            raise disk_full_error(Path(shown or path), exc) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        return np.lib.format.open_memmap(path, mode="r+")  # no fallocate here: the free-space check must do
    return arr


# ------------------------------------------------------------------ atomic writers
@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "", kind: str | None = None,
                force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only on success.

    With `kind` (a file a command writes at a user's --out) `dest` is locked and checked by check_replace first."""
    dest = Path(dest)
    with output_lock(dest) if kind else contextlib.nullcontext():
        if kind:
            check_replace(dest, kind, force)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not kind:
            clean_stale(dest)  # (output_lock has cleaned already)
        tmp_path = _temp_name(dest, suffix + ".tmp")
        fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666 & ~file_umask())
        os.close(fd)
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, dest)
        except Exception as exc:
            tmp_path.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full_error(dest, exc) from exc
            raise
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, kind: str = CHECKPOINT, force: bool = False,
               owned: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; swap it in for `dest` only on success.

    `dest` is locked for the whole write and checked by check_replace before anything is done. The previous
    directory is moved to a unique `.NAME.PID-RANDOM.old` until the new one is in place, so a crash at any point
    leaves either the old or the new complete directory (the next writer puts a stranded old one back), and no
    path this call did not create is ever deleted."""
    dest = Path(dest)
    with output_lock(dest):
        check_replace(dest, kind, force, owned)
        tmp = _temp_name(dest, ".tmp")
        tmp.mkdir(mode=0o777 & ~file_umask())
        try:
            yield tmp
            old = None
            if dest.exists() or dest.is_symlink():
                old = _temp_name(dest, ".old")
                os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                if old is not None:
                    os.replace(old, dest)
                raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full_error(dest, exc) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_text_atomic(dest: str | os.PathLike, text: str, kind: str | None = None) -> None:
    with atomic_path(dest, kind=kind) as tmp:
        tmp.write_text(text)


def write_json_atomic(dest: str | os.PathLike, obj: Any, kind: str | None = None) -> None:
    """`kind` (JSON) when `dest` is a user's output: then only a JSON file there is replaced."""
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n", kind)


def write_yaml_atomic(dest: str | os.PathLike, obj: Any) -> None:
    import yaml  # the training package's dependency; the runtime writes no YAML

    write_text_atomic(dest, yaml.safe_dump(obj, sort_keys=False))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22, progress: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (works on files larger than RAM)."""
    h = hashlib.sha256()
    with open(path, "rb") as f, progress_bar(os.path.getsize(path), "sha256", "B", not progress, unit_scale=True) as bar:
        while block := f.read(chunk):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
