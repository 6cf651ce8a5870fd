"""Writing a model folder so that nothing is lost: OUT_DIR is claimed, not checked.

`OutputFolder(out_dir, overwrite, sources)` is made before the (long) build: it refuses a target
that is a source, that exists without --overwrite, or whose parent cannot take a folder (a file,
read-only, no permission, too little space), and removes the temporary folders of dead runs.
`write(fill)` then fills a fresh temporary sibling, syncs it, and claims OUT_DIR in one atomic
step (Linux renameat2):

- without --overwrite, RENAME_NOREPLACE: whatever appeared at OUT_DIR meanwhile (another writer's
  result, a user's folder) is kept, and this run fails with one sentence, its output removed;
- with --overwrite, RENAME_EXCHANGE swaps the new folder in for the one seen at the start, so
  OUT_DIR holds the old or the new folder at every instant; if another writer replaced it in
  between, the swap is undone and this run fails.

Where renameat2 is missing (macOS, Windows, old kernels, some filesystems), a no-replace claim
takes an flock on a `.OUT_DIR.lock` sibling, and --overwrite is two renames (old folder aside to
`.OUT_DIR.old-<pid>-*`, new one in); a run killed between them leaves the old folder in its
`.old-` sibling, which the next run targeting OUT_DIR moves back.

Temporary siblings are named `.OUT_DIR.tmp-<pid>-<random>`; one is removed only when its process
is gone and it is older than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_edge.errors import UserError
from modernbert_edge.manifest import MANIFEST

if TYPE_CHECKING:
    import onnx

EXTERNAL_DATA_ABOVE = 1_800_000_000  # bytes; protobuf cannot hold more than 2 GB

STALE_AFTER_S = 60.0  # a dead run's temporary folder is removed once it is this old
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
_AT_FDCWD = -100
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


MANIFEST_PACKAGES = ("modernbert-edge", "onnx", "onnxruntime", "numpy", "tokenizers", "torch", "transformers")


def package_versions(packages: Sequence[str] = MANIFEST_PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` (those not installed are left out); by default the packages a
    model folder's results depend on (for its manifest)."""
    import importlib.metadata as md

    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def _renameat2_function():  # noqa: ANN202
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _renameat2_function()


def rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False when this system or filesystem does not offer it.
    Raises OSError (EEXIST for a taken dst under RENAME_NOREPLACE) like os.rename."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at path now. A folder deleted and made again can get the old one's inode
    number back, and is then taken for it (--overwrite replaces it as it would have the old one)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside it."""
    return a == b or b in a.parents


def _sync_tree(folder: Path) -> None:
    """fsync every file of folder and the folder itself, so a rename publishes complete data."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return True  # unreadable: not ours to replace


class OutputFolder:
    """A model folder to be written at out_dir; see the module docstring for the guarantees."""

    def __init__(
        self,
        out_dir: str | Path,
        overwrite: bool,
        sources: Iterable[str | Path] = (),
        need_bytes: int = 0,
        marker: str | None = MANIFEST,
    ) -> None:
        """marker: the file that makes an existing, non-empty OUT_DIR one --overwrite may replace (a model
        folder's manifest.json), so that a mistyped OUT_DIR never takes a folder of other files with it."""
        self.path = Path(out_dir).expanduser().absolute()
        self.overwrite = overwrite
        self.sources = [Path(s).expanduser().resolve() for s in sources]
        self._check_not_a_source()
        self._prepare_parent()
        self.recover_and_clean()
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise UserError(f"{self.path} exists and is not a folder (a file or a link); choose another OUT_DIR.")
        self.seen = _identity(self.path)  # what --overwrite may replace: the folder there now
        if self.seen is not None and not overwrite:
            raise UserError(f"{self.path} already exists; pass --overwrite to replace it.")
        if (
            self.seen is not None
            and marker is not None
            and not (self.path / marker).is_file()
            and _has_entries(self.path)
        ):
            raise UserError(
                f"{self.path} holds files but no {marker}, so it is not a model folder --overwrite may replace; "
                "remove it yourself or choose another OUT_DIR."
            )
        self._probe(need_bytes)

    def _check_not_a_source(self) -> None:
        target = self.path.resolve()
        for src in self.sources:
            if _inside(target, src) or _inside(src, target):
                where = "is" if target == src else ("is inside" if _inside(target, src) else "contains")
                raise UserError(f"{self.path} {where} the source folder {src}; write the model folder elsewhere.")

    def _prepare_parent(self) -> None:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{self.path} cannot be created: a parent of it is a file, not a folder.") from None
        except OSError as e:
            raise UserError(f"{parent} cannot be created ({e.strerror}).") from None
        if not parent.is_dir():
            raise UserError(f"{self.path} cannot be created: {parent} is not a folder.")

    def _temp_name(self, kind: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")

    def _siblings(self, kind: str) -> list[tuple[Path, int]]:
        prefix = f".{self.path.name}.{kind}-"
        out = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path.parent):
                if entry.name.startswith(prefix):
                    pid = entry.name[len(prefix) :].split("-")[0]
                    if pid.isdigit():
                        out.append((Path(entry.path), int(pid)))
        return out

    def recover_and_clean(self) -> None:
        """Move back an old folder a killed two-step --overwrite left aside; remove dead runs' temporaries."""
        now = time.time()

        def dead(path: Path, pid: int) -> bool:
            try:
                old_enough = now - os.lstat(path).st_mtime > STALE_AFTER_S
            except OSError:
                return False
            return old_enough and not _alive(pid)

        for path, pid in self._siblings("old"):
            if dead(path, pid):
                try:  # OUT_DIR missing: the run died between its two renames, so the old folder goes back
                    self._claim_new(path)
                except (UserError, OSError):  # OUT_DIR holds the newer folder: this one is garbage
                    shutil.rmtree(path, ignore_errors=True)
        for path, pid in self._siblings("tmp"):
            if dead(path, pid):
                shutil.rmtree(path, ignore_errors=True)

    def _probe(self, need_bytes: int) -> None:
        """Create (and remove) a temporary folder with a file in it now, before the build."""
        probe = self._temp_name("tmp")
        try:
            probe.mkdir()
            try:
                (probe / "probe").write_bytes(b"\0" * 4096)
            finally:
                shutil.rmtree(probe, ignore_errors=True)
        except OSError as e:
            raise UserError(f"{self.path} cannot be written ({e.strerror}).") from None
        free = shutil.disk_usage(self.path.parent).free
        if need_bytes > free:
            raise UserError(
                f"{self.path} needs about {need_bytes / 1e6:.0f} MB and its filesystem has {free / 1e6:.0f} MB free."
            )

    def write(self, fill: Callable[[Path], None]) -> None:
        """fill(tmp) a fresh temporary sibling, then claim self.path with it; on any failure remove it."""
        tmp = self._temp_name("tmp")
        try:
            tmp.mkdir()
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)
            fill(tmp)
            _sync_tree(tmp)
            self._claim(tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in _WRITE_ERRORS:
                raise UserError(f"{self.path} could not be written ({e.strerror}); nothing was written.") from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _sync_dir(self.path.parent)

    def _taken(self) -> UserError:
        return UserError(
            f"{self.path} was created by someone else during this run; it was kept, and nothing was written."
        )

    def _claim(self, tmp: Path) -> None:
        if self.seen is None:
            self._claim_new(tmp)
            return
        try:
            exchanged = rename2(tmp, self.path, RENAME_EXCHANGE)
        except FileNotFoundError:  # the old folder went away meanwhile: claim the name afresh
            self._claim_new(tmp)
            return
        if exchanged:
            if _identity(tmp) != self.seen:  # another writer replaced it meanwhile: give it back
                rename2(tmp, self.path, RENAME_EXCHANGE)
                raise UserError(f"{self.path} was replaced by someone else during this run; it was kept.")
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            return
        self._replace_two_step(tmp)

    def _claim_new(self, tmp: Path) -> None:
        try:
            if rename2(tmp, self.path, RENAME_NOREPLACE):
                return
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise self._taken() from None
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise self._taken() from None
            raise
        with self._lock():
            if os.path.lexists(self.path):
                raise self._taken()
            os.rename(tmp, self.path)

    def _replace_two_step(self, tmp: Path) -> None:
        """--overwrite without RENAME_EXCHANGE: old folder aside, new one in (recover_and_clean undoes a kill)."""
        with self._lock():
            if _identity(self.path) != self.seen:
                raise UserError(f"{self.path} was replaced by someone else during this run; it was kept.")
            old = self._temp_name("old")
            os.rename(self.path, old)
            os.rename(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self):  # noqa: ANN202
        """An exclusive flock on `.OUT_DIR.lock` (held by this process only while it lives)."""
        try:
            import fcntl
        except ImportError:  # Windows: os.rename never replaces, which is what the callers need
            yield
            return
        lock = self.path.with_name(f".{self.path.name}.lock")
        with open(lock, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """model.onnx, with its weights in model.onnx_data (optimum's name) when the file would pass protobuf's 2 GB."""
    import importlib.metadata as md

    import onnx

    model.producer_name, model.producer_version = "modernbert-edge", md.version("modernbert-edge")
    if model.ByteSize() > EXTERNAL_DATA_ABOVE:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + "_data")
    else:
        onnx.save_model(model, str(path))
