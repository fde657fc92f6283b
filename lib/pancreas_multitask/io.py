"""NIfTI reading (scaled, with geometry) and atomic writing of any output file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
    """Open a NIfTI file lazily; VolumeError names the file when it cannot be parsed or is not 3D."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for a corrupt file
        raise VolumeError(f"{path}: unreadable NIfTI file ({exc})") from exc
    if len(img.shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {img.shape}")
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (.nii.gz) so writers that dispatch on the extension still work
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix="".join(target.suffixes) or ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if not os.path.islink(tmp):  # mkstemp makes 0600 files; give them the usual permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


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
