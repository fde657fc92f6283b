"""NIfTI reading (scaled, with geometry) and atomic writing of any output file."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np


_UMASK = os.umask(0o022)
os.umask(_UMASK)


class VolumeError(ValueError):
    """A file that cannot be used as a 3D volume; the message names the file and the reason."""


@dataclass(frozen=True)
class Volume:
    """A 3D volume in its stored voxel order, with scaling (scl_slope/scl_inter) applied."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    stored_dtype: np.dtype

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the stored axes."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``LPS`` or ``RAS`` (nibabel convention)."""
        return "".join(nib.aff2axcodes(self.affine))


def read_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily; VolumeError names the file when it cannot be parsed, is not 3D, or its header's
    own voxel spacing is missing or invalid (``header_spacing_problems``)."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for a corrupt file
        raise VolumeError(f"{path}: unreadable NIfTI file ({exc})") from exc
    if len(img.shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {img.shape}")
    problems = header_spacing_problems(path, type(img.header))
    if problems:
        raise VolumeError(f"{path}: {'; '.join(problems)}. Readers silently replace such a spacing with 1 mm, so the case would be "
                          "resampled and trained at an invented geometry; re-export it with its true voxel spacing")
    return img


AXES = ("i (x)", "j (y)", "k (z, slices)")  # the stored voxel axes, as pixdim[1..3] and the affine's columns name them


def header_spacing_problems(path: str | os.PathLike[str], header_class: type = nib.Nifti1Header) -> list[str]:
    """What is wrong with the voxel spacing the header itself stores, read without nibabel's repairs (it sets a
    zero pixdim to 1 and logs that only): a zero, negative or non-finite ``pixdim[1..3]``; with ``qform_code`` set,
    non-finite quaternion parameters; with ``sform_code`` set, an sform axis of zero or non-finite length."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as handle:
        header = header_class.from_fileobj(handle, check=False)
    problems = []
    for axis, value in zip(AXES, np.asarray(header["pixdim"][1:4], dtype=float)):
        if not np.isfinite(value) or value <= 0:
            problems.append(f"voxel spacing of axis {axis} is {value:g} in the header (pixdim)")
    if int(header["qform_code"]) > 0:
        quaternion = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
        if not np.all(np.isfinite(quaternion)):
            problems.append(f"the qform (code {int(header['qform_code'])}) holds non-finite parameters {quaternion}")
    if int(header["sform_code"]) > 0:
        rows = np.stack([np.asarray(header[k], dtype=float)[:3] for k in ("srow_x", "srow_y", "srow_z")])
        for axis, length in zip(AXES, np.sqrt((rows ** 2).sum(axis=0))):
            if not np.isfinite(length) or length <= 0:
                problems.append(f"voxel spacing of axis {axis} is {length:g} in the sform (code {int(header['sform_code'])})")
    return problems


def check_complete(path: Path) -> nib.Nifti1Image:
    """``read_header``, then one pass over the whole file: a gzip stream must reach its end-of-stream marker
    with a matching CRC, and the data block must be as long as the header says.

    A download or copy cut short is named here. SimpleITK (nnU-Net's reader) reads such a file without
    an error and zero-fills what is missing.
    """
    path = Path(path)
    img = read_header(path)
    expected = int(getattr(img.dataobj, "offset", 0)) + int(np.prod(img.shape)) * img.header.get_data_dtype().itemsize
    size = 0
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as handle:
            while block := handle.read(1 << 22):
                size += len(block)
    except (EOFError, OSError, zlib.error) as exc:
        raise VolumeError(f"{path}: incomplete or corrupt file ({exc}); copy or download it again") from exc
    if size < expected:
        raise VolumeError(f"{path}: truncated: {size} bytes of data, the header needs {expected}; copy or download it again")
    return img


def load_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D NIfTI as float32 with its scaling applied."""
    path = Path(path)
    img = read_header(path)
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip, short data block, ...
        raise VolumeError(f"{path}: unreadable voxel data ({exc})") from exc
    return Volume(path=path, data=data, affine=img.affine.copy(), stored_dtype=img.header.get_data_dtype())


TEMPORARY_PREFIX = ".tmp."  # atomic_path's unfinished files: hidden, and named so that nothing else matches


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (.nii.gz) so writers that dispatch on the extension still work
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{target.name}.", suffix="".join(target.suffixes) or ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if not os.path.islink(tmp):  # mkstemp makes 0600 files; give them the usual permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


class LockedError(RuntimeError):
    """Another process holds the lock; the message names the lock file and what its holder wrote into it."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], wait: bool = True, holder: str = "") -> Iterator[None]:
    """An exclusive lock on ``path`` (``fcntl.flock``), for the block; the system releases it if the process dies.

    ``wait=False`` raises LockedError at once when another process holds it. ``holder`` (who, since
    when) is written into the file so that the message can say who has it. POSIX only; elsewhere the
    block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fcntl = _fcntl()
    if fcntl is None:  # Windows: no advisory locks here
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise LockedError(f"{path}: locked by another process ({handle.read().strip() or 'no details'})") from None
        try:
            if holder:
                handle.truncate(0)
                handle.write(holder + "\n")
                handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove that a file can be written there; OSError names the folder and the reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"{folder}: cannot write here ({exc.strerror or exc}); free some space, fix its permissions, or choose another folder") from exc
    return folder


def _fcntl():
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def is_temporary(path: Path) -> bool:
    """An unfinished ``atomic_path`` file (``.tmp.<target name>.<random><suffixes>``): never a result."""
    return path.name.startswith(TEMPORARY_PREFIX)


STALE_AFTER_S = 3600.0  # a temporary this old was left by a killed run; a live writer's is seconds old


def remove_stale_temporaries(folder: str | os.PathLike[str], older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete what killed runs left in ``folder``: ``atomic_path`` temporaries older than ``older_than_s`` (a
    concurrent process's fresh ones stay; other hidden files, locks included, are never touched). Returns what was removed."""
    import time

    now, removed = time.time(), []
    for path in Path(folder).glob(f"{TEMPORARY_PREFIX}*"):
        try:
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process finished or removed it meanwhile
            pass
    return removed


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, indented, keeping key order (nnU-Net reads label order from dataset.json)."""
    write_text(target, json.dumps(obj, indent=2, default=str) + "\n")


def update_text(target: str | os.PathLike[str], text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it; True if it wrote."""
    path = Path(target)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def write_benchmark(target: str | os.PathLike[str], result: Any, markdown: str) -> None:
    """A benchmark's JSON at ``target`` and its Markdown table beside it (``.md``), each atomically; prints the table."""
    target = Path(target)
    write_json(target, result)
    write_text(target.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {target} and {target.with_suffix('.md')}")
