"""Synthetic CT phantom in the exact quiz layout (deterministic by seed), calibrated to the real quiz.

Each case is an abdominal crop around a pancreas-like curved organ with a lesion, amid distractors
(liver, vessels, kidneys, spine, bowel with air and oral contrast). What is drawn from the real
quiz's 281 public masks (``REAL_QUIZ``, measured from ``real_stats/quiz_label_stats.csv``):

* the lesion's share of the foreground, per subtype, from the real quantiles (median 0.076 / 0.108
  / 0.123); the median and upper half are the real ones, the lower half is mapped onto
  [``LESION_FRACTION_FLOOR`` (6 %), median]: the smallest real lesions (down to 0.01 ml) are below
  what a 10-minute CPU model at the demo's 1.4 mm grid can find;
* the number of lesion components (about 80 % single, the rest 2 to 4 satellites);
* the spread of spacing and field of view around the profile's median (the real z spacing runs
  from 0.35x to 2x its median; clipped to 0.8x-1.5x so that a CPU case stays small).

The three subtypes overlap in mean lesion HU, as on real contrast CT, and differ in structure too:

* subtype 0 -- solid, hypo-enhancing (PDAC-like): heterogeneous texture, an irregular infiltrative
  edge, often an upstream dilated duct;
* subtype 1 -- cystic: a homogeneous fluid interior, often thin enhancing septations or a rim,
  sometimes a dilated duct;
* subtype 2 -- solid, iso- to hyper-enhancing (PNET-like): well defined, often near iso-dense with the
  parenchyma (then with a faint enhancing capsule), sometimes a necrotic core or calcifications.

A threshold on the mean lesion HU therefore separates them poorly, while features of the lesion's
intensity distribution and texture do better (``tests/test_phantom.py`` checks both).
Files carry the real data's quirks: float masks where some pancreas voxels hold
1.0000152587890625, images stored as int16 with scl_slope/scl_inter, as plain int16 or as
float32, LPS/RAS/LAS orientations and anisotropic, jittered spacing.

CLI: ``python -m pancreas_multitask.dataset.phantom OUT_DIR [--params FILE]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import yaml
from scipy import ndimage

from ..io import write_text
from ..runtime import progress

MASK_QUIRK = 1.0000152587890625  # a value that occurs in the real float masks
STAMP = "phantom.json"
PHANTOM_VERSION = 5  # 5: the answers folder also holds the generator truth (TRUTH_CSV)
TRUTH_CSV = "generator_truth.csv"  # every case's drawn lesion look (``LesionLook``), lesion fraction and components
PARENCHYMA_HU = 100.0  # median; each case draws its own enhancement
ORIENTATIONS = ("LPS", "RAS", "LAS")  # nibabel axis codes used for storage
STORAGE = ("int16_scaled", "int16", "float32")
NUM_SUBTYPES = 3
LESION_FRACTION_FLOOR = 0.06  # smaller real lesions are not learnable in the CPU demo (see the module docstring)
LESION_FRACTION_CAP = 0.6

# Measured from real_stats/quiz_label_stats.csv (281 public quiz masks); tests/test_phantom.py checks
# these numbers against that file. Quantile levels in percent.
REAL_QUIZ: dict[str, Any] = {
    "levels": (0, 5, 25, 50, 75, 95, 100),
    "lesion_fraction": {  # lesion voxels / foreground voxels, per subtype
        0: (0.0013, 0.011, 0.0244, 0.076, 0.1581, 0.4245, 0.8372),
        1: (0.0001, 0.0083, 0.0419, 0.1084, 0.2258, 0.4907, 0.7089),
        2: (0.0015, 0.0063, 0.0442, 0.1227, 0.2738, 0.6724, 0.9336),
    },
    "lesion_components": {  # share of cases with 1, 2, 3, 4+ components
        0: (0.833, 0.045, 0.030, 0.091),
        1: (0.832, 0.067, 0.042, 0.059),
        2: (0.771, 0.125, 0.031, 0.073),
    },
    # per-case value / median, at the levels 5, 25, 50, 75, 95
    "ratio_levels": (5, 25, 50, 75, 95),
    "spacing_z": (0.35, 0.5, 1.0, 1.5, 2.0),
    "spacing_xy": (0.825, 0.933, 1.0, 1.068, 1.218),
    "fov": ((0.7, 0.838, 1.0, 1.175, 1.417), (0.732, 0.898, 1.0, 1.139, 1.317), (0.725, 0.901, 1.0, 1.095, 1.256)),  # z, y, x
}
SPACING_Z_CLIP = (0.8, 1.5)  # of the profile's median: CPU-sized cases


@dataclass(frozen=True)
class LesionLook:
    """How one lesion looks; drawn per case from its subtype's distributions (``draw_look``)."""

    contrast: float  # mean HU of the solid or fluid part minus the case's parenchyma HU
    texture_sd: float  # HU
    texture_scale: float  # voxels (smoothing of the texture field)
    edge_irregularity: float  # amplitude of the boundary noise (0 = smooth ellipsoid)
    rim: float | None = None  # HU above the parenchyma of a thin enhancing rim or capsule
    septa: int = 0  # thin enhancing septations through a fluid interior
    necrosis: float = 0.0  # radius fraction of a fluid core (0 = none)
    calcifications: int = 0
    duct: bool = False  # an upstream dilated main duct


SEPARABLE_CONTRAST = {0: -50.0, 1: -95.0, 2: 80.0}  # HU; ``PhantomConfig.separable_subtypes`` only


def draw_look(subtype: int, rng: np.random.Generator, separable: bool = False) -> LesionLook:
    """Overlapping intensity, distinct structure (see the module docstring).

    ``separable``: each subtype at its own fixed contrast (``SEPARABLE_CONTRAST``, ±5 HU), for the test
    that the training machinery learns a strong signal; never for the demo or any reported number.
    """
    if separable:
        look = draw_look(subtype, rng)
        return replace(look, contrast=SEPARABLE_CONTRAST[subtype] + rng.normal(0, 5), rim=None if subtype == 2 else look.rim)
    if subtype == 0:
        return LesionLook(contrast=rng.normal(-35, 15), texture_sd=rng.uniform(20, 30), texture_scale=rng.uniform(1.5, 2.5),
                          edge_irregularity=rng.uniform(0.18, 0.3), duct=bool(rng.random() < 0.6), calcifications=int(rng.random() < 0.1))
    if subtype == 1:
        return LesionLook(contrast=rng.normal(-75, 15), texture_sd=rng.uniform(2, 4), texture_scale=rng.uniform(1.5, 2.5), edge_irregularity=rng.uniform(0.03, 0.08),
                          rim=rng.uniform(5, 40) if rng.random() < 0.4 else None, septa=int(rng.choice([0, 0, 0, 1, 2])),
                          duct=bool(rng.random() < 0.25), calcifications=int(rng.random() < 0.1))
    if subtype == 2:
        iso = rng.random() < 0.25
        return LesionLook(contrast=rng.normal(0, 7) if iso else rng.normal(45, 20), texture_sd=rng.uniform(4, 8), texture_scale=rng.uniform(0.6, 1.0),
                          edge_irregularity=rng.uniform(0.04, 0.1), rim=rng.uniform(20, 40) if iso else None,
                          necrosis=rng.uniform(0.35, 0.6) if rng.random() < 0.3 else 0.0, calcifications=int(rng.choice([0, 0, 0, 0, 1, 2])))
    raise ValueError(f"the phantom draws subtypes 0..{NUM_SUBTYPES - 1}, got {subtype}")


def _from_quantiles(rng: np.random.Generator, levels: Sequence[float], values: Sequence[float]) -> float:
    """One draw from the distribution given by its quantiles (linear between them)."""
    return float(np.interp(rng.uniform(0.0, 1.0), np.asarray(levels, dtype=float) / 100.0, np.asarray(values, dtype=float)))


def draw_lesion_fraction(subtype: int, rng: np.random.Generator) -> float:
    """The lesion's share of the foreground: the real per-subtype distribution, its lower half mapped onto
    [floor, median] (so the median and the upper half stay the real ones), capped above."""
    levels, values = REAL_QUIZ["levels"], REAL_QUIZ["lesion_fraction"][subtype]
    value, median, smallest = _from_quantiles(rng, levels, values), values[levels.index(50)], values[0]
    if value < median:
        value = LESION_FRACTION_FLOOR + (median - LESION_FRACTION_FLOOR) * (value - smallest) / (median - smallest)
    return min(value, LESION_FRACTION_CAP)


def draw_geometry(config: "PhantomConfig", rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(spacing, field of view) in mm, z y x: the profile's medians times ratios drawn from the real quiz."""
    levels = REAL_QUIZ["ratio_levels"]
    z = float(np.clip(_from_quantiles(rng, levels, REAL_QUIZ["spacing_z"]), *SPACING_Z_CLIP))
    xy = _from_quantiles(rng, levels, REAL_QUIZ["spacing_xy"])
    fov = np.array([_from_quantiles(rng, levels, ratios) for ratios in REAL_QUIZ["fov"]])
    return np.array(config.spacing) * np.array([z, xy, xy]), np.array(config.shape) * np.array(config.spacing) * fov


def draw_components(subtype: int, rng: np.random.Generator) -> int:
    shares = np.asarray(REAL_QUIZ["lesion_components"][subtype])
    return int(rng.choice(np.arange(1, len(shares) + 1), p=shares / shares.sum()))


@dataclass(frozen=True)
class PhantomConfig:
    """Sizes and counts of one phantom; set per profile (``phantom`` parameter)."""

    train: tuple[int, ...] = (12, 20, 16)
    validation: tuple[int, ...] = (4, 6, 5)
    test: int = 12
    shape: tuple[int, int, int] = (40, 64, 80)  # z, y, x voxels (median; jittered per case)
    spacing: tuple[float, float, float] = (2.5, 1.4, 1.4)  # z, y, x mm (median; jittered per case)
    seed: int = 0
    separable_subtypes: bool = False  # test aid: large lesions (15-35 % of the gland) at well-separated contrasts (see draw_look)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PhantomConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"phantom: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**kwargs)
        if len(config.train) != len(config.validation) or len(config.train) < 2:
            raise ValueError("phantom: train and validation must give one count per subtype")
        if len(config.train) != NUM_SUBTYPES:
            raise ValueError(f"phantom: the phantom draws {NUM_SUBTYPES} subtypes, got {len(config.train)} counts")
        return config


@dataclass
class PhantomCase:
    """One generated case, in (z, y, x) voxel order before storage."""

    case_id: str
    split: str
    subtype: int
    image: np.ndarray  # HU, float32
    labels: np.ndarray  # uint8, 0/1/2
    spacing: tuple[float, float, float]
    orientation: str
    storage: str
    quirk: bool
    origin: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    look: LesionLook | None = None  # the latent appearance the lesion was painted from
    lesion_fraction: float = float("nan")  # drawn share of the foreground (before satellites)
    components: int = 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / (field_.std() + 1e-6)


def _ellipsoid(grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0  # type: ignore[return-value]


def _tube(grid: tuple[np.ndarray, ...], points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised distance to a polyline with varying radius (< 1 inside)."""
    best = np.full(grid[0].shape, np.inf, dtype=np.float32)
    for p, r in zip(points, radii):
        d = sum((g - c) ** 2 for g, c in zip(grid, p)) / (r * r)
        np.minimum(best, d, out=best)
    return np.sqrt(best)


def _lesion_mask(grid: tuple[np.ndarray, ...], points: np.ndarray, anchor_index: int, pancreas: np.ndarray, fraction: float, irregularity: float, rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid-like lesion on the centreline, scaled (bisection) to ``fraction`` of the foreground."""
    anchor = points[anchor_index] + rng.normal(0, 2.0, 3)
    axis_ratio = np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)])
    edge = 1.0 + irregularity * _smooth_noise(rng, pancreas.shape, 2.5)
    npan = pancreas.sum()

    def lesion_at(scale: float) -> np.ndarray:
        d = np.sqrt(sum(((g - c) / (scale * a)) ** 2 for g, c, a in zip(grid, anchor, axis_ratio)))
        return d < edge

    lo, hi = 0.3, 60.0
    for _ in range(25):
        mid = (lo + hi) / 2
        les = lesion_at(mid)
        frac = les.sum() / max(npan + (les & ~pancreas).sum(), 1)
        lo, hi = (mid, hi) if frac < fraction else (lo, mid)
    return lesion_at((lo + hi) / 2)


def _satellite(grid: tuple[np.ndarray, ...], allowed: np.ndarray, voxels: float, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small round lesion component of about ``voxels`` voxels, centred in ``allowed``."""
    candidates = np.argwhere(allowed)
    if not len(candidates):
        return np.zeros(allowed.shape, bool)
    centre_index = tuple(candidates[int(rng.integers(len(candidates)))])
    centre = np.array([g[centre_index] for g in grid])
    radius = max((3 * voxels * float(np.prod(spacing)) / (4 * np.pi)) ** (1 / 3), 1.5 * float(spacing.max()))
    return _ellipsoid(grid, centre, np.full(3, radius))


def _paint_lesion(image: np.ndarray, lesion: np.ndarray, look: LesionLook, parenchyma_hu: float, grid: tuple[np.ndarray, ...], spacing: np.ndarray, rng: np.random.Generator) -> None:
    """Write the lesion's appearance (``look``) into ``image`` in place."""
    texture = _smooth_noise(rng, image.shape, look.texture_scale)
    image[lesion] = parenchyma_hu + look.contrast + look.texture_sd * texture[lesion]
    interior = ndimage.binary_erosion(lesion)
    if look.necrosis > 0:  # a fluid core
        depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
        core = depth > (1 - look.necrosis) * depth.max()
        image[core] = parenchyma_hu - 80 + 4.0 * texture[core]
    if look.septa and interior.any():  # thin enhancing planes through the interior
        coords = np.stack([g[lesion] for g in grid], axis=1)
        centre, extent = coords.mean(axis=0), coords.std(axis=0).mean()
        for _ in range(look.septa):
            normal = rng.normal(size=3)
            normal /= np.linalg.norm(normal)
            distance = sum(n * (g - c) for n, g, c in zip(normal, grid, centre)) - rng.normal(0, 0.4) * extent
            plane = interior & (np.abs(distance) < 0.6 * float(spacing.min()) + 0.4)
            image[plane] = parenchyma_hu + rng.uniform(-10, 20)
    if look.rim is not None:
        shell = lesion & ~interior
        image[shell] = parenchyma_hu + look.rim + 8.0 * texture[shell]
    candidates = np.argwhere(interior)
    for _ in range(look.calcifications if len(candidates) else 0):
        centre = np.array([g[tuple(candidates[int(rng.integers(len(candidates)))])] for g in grid])
        dot = _ellipsoid(grid, centre, np.full(3, max(1.2, float(spacing.min())))) & lesion
        image[dot] = rng.uniform(350, 600)


def generate_case(case_id: str, split: str, subtype: int, config: PhantomConfig, rng: np.random.Generator) -> PhantomCase:
    """Draw one case; anatomy is defined in mm around the crop centre."""
    spacing, fov = draw_geometry(config, rng)
    shape = tuple(int(n) for n in np.maximum(np.round(fov / spacing), 16))
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij")  # z, y (posterior +), x (patient left +)
    z, y, x = grid
    half = fov / 2

    # background: retroperitoneal fat with slow variation
    image = -100.0 + 15.0 * _smooth_noise(rng, shape, 6.0)

    # pancreas centreline: head at patient right (x < 0), tail rising towards the spleen
    t = np.linspace(0.0, 1.0, 48)
    length = half[2] * 1.3 * rng.uniform(0.85, 1.05)
    cx = (t - 0.45) * length
    cy = rng.uniform(-8, 2) + rng.uniform(6, 16) * ((t - 0.5) * 2) ** 2 - 6 * t
    cz = rng.uniform(-0.1, 0.1) * half[0] + rng.uniform(0.05, 0.2) * half[0] * (t - 0.5) * 2
    angle = np.deg2rad(rng.uniform(-12, 12))
    cx, cy = np.cos(angle) * cx - np.sin(angle) * cy, np.sin(angle) * cx + np.cos(angle) * cy
    points = np.stack([cz, cy, cx], axis=1)
    radii = (13.0 - 6.0 * t) * rng.uniform(0.85, 1.15) * (half[1] / 45.0)
    lobulation = 1.0 + 0.12 * _smooth_noise(rng, shape, 3.0)
    pancreas = _tube(grid, points, radii) < lobulation

    # distractors, placed relative to the pancreas so that they never overlap it
    keep_out = ndimage.binary_dilation(pancreas, iterations=2)
    organs: list[tuple[np.ndarray, float, float]] = []
    liver = (x - (-half[2] * 0.95)) ** 2 / (half[2] * 0.35) ** 2 + (y + 5) ** 2 / (half[1] * 0.8) ** 2 < 1
    organs.append((liver, 110.0, 8.0))
    spine_c = np.array([half[1] * 0.82, rng.uniform(-4, 4)])
    spine_r = np.hypot(y - spine_c[0], x - spine_c[1])
    organs.append((spine_r < 15, 250.0, 25.0))
    organs.append(((spine_r >= 12) & (spine_r < 15), 700.0, 40.0))
    aorta = np.hypot(y - spine_c[0] + 24, x - spine_c[1] - 9) < rng.uniform(7, 10)
    ivc = np.hypot(y - spine_c[0] + 22, x - spine_c[1] + 22) < rng.uniform(8, 11)
    organs += [(aorta, 165.0, 6.0), (ivc, 125.0, 6.0)]
    for side in (-1, 1):
        kc = np.array([rng.uniform(-10, 10), spine_c[0] - 8, side * half[2] * 0.7])
        kidney = _ellipsoid(grid, kc, np.array([30.0, 12.0, 18.0]) * rng.uniform(0.8, 1.1))
        organs.append((kidney, 170.0, 10.0))
    vein_pts = points + np.array([0.0, 1.0, 0.0]) * (radii[:, None] + 3.0)
    organs.append((_tube(grid, vein_pts[8:], np.full(40, 3.0)) < 1, 170.0, 6.0))
    for _ in range(int(rng.integers(5, 9))):  # bowel loops: soft tissue, some with air or contrast
        c = np.array([rng.uniform(-half[0], half[0]), rng.uniform(-half[1], 0.2 * half[1]), rng.uniform(-half[2], half[2])])
        r = rng.uniform(6, 14, 3)
        loop = _ellipsoid(grid, c, r)
        organs.append((loop, 40.0, 10.0))
        content = rng.choice(["air", "contrast", "none"])
        if content != "none":
            organs.append((_ellipsoid(grid, c, r * 0.5), -800.0 if content == "air" else 260.0, 20.0))
    texture = _smooth_noise(rng, shape, 1.0)
    for mask, hu, sd in organs:
        mask = mask & ~keep_out
        image[mask] = hu + sd * texture[mask]

    look = draw_look(subtype, rng, config.separable_subtypes)
    parenchyma_hu = PARENCHYMA_HU + rng.normal(0, 12)  # enhancement varies with the contrast phase
    image[pancreas] = parenchyma_hu + 8.0 * texture[pancreas]
    anchor_index = int(rng.integers(8, 40))
    fraction = rng.uniform(0.15, 0.35) if config.separable_subtypes else draw_lesion_fraction(subtype, rng)
    lesion = _lesion_mask(grid, points, anchor_index, pancreas, fraction, look.edge_irregularity, rng)
    components = draw_components(subtype, rng)
    for _ in range(components - 1):  # satellites: 5-15 % of the main lesion each, nearby in the gland
        satellite = _satellite(grid, pancreas & ~ndimage.binary_dilation(lesion, iterations=2), lesion.sum() * rng.uniform(0.05, 0.15), spacing, rng)
        lesion |= satellite
    if look.duct:  # upstream (towards the tail) dilated main duct, part of the pancreas label
        duct = _tube(grid, points[anchor_index:], np.full(len(points) - anchor_index, rng.uniform(1.5, 2.5))) < 1
        duct &= pancreas & ~lesion
        image[duct] = parenchyma_hu - 85 + 5.0 * texture[duct]
    _paint_lesion(image, lesion, look, parenchyma_hu, grid, spacing, rng)

    labels = np.zeros(shape, np.uint8)
    labels[pancreas] = 1
    labels[lesion] = 2

    # scanner: point-spread blur, then noise and a per-case offset
    image = ndimage.gaussian_filter(image, 0.6) + rng.normal(0, rng.uniform(6, 12), shape) + rng.uniform(-10, 10)
    return PhantomCase(
        case_id=case_id,
        split=split,
        subtype=subtype,
        image=image.astype(np.float32),
        labels=labels,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        orientation=ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        storage=STORAGE[int(rng.integers(len(STORAGE)))],
        quirk=bool(rng.random() < 0.5),
        origin=tuple(float(v) for v in rng.uniform(-200, 200, 3)),  # type: ignore[arg-type]
        look=look,
        lesion_fraction=float(fraction),
        components=components,
    )


def to_nifti(case: PhantomCase) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Store (z, y, x) arrays as NIfTI (x, y, z) in the case's orientation; masks as float32."""
    # the generation frame is LPS: +x towards patient left, +y posterior, +z superior;
    # other orientations flip the stored axes so that the anatomy stays put in world space
    signs = {"LPS": (-1, -1, 1), "RAS": (1, 1, 1), "LAS": (-1, 1, 1)}[case.orientation]
    flips = tuple(axis for axis, sign in enumerate(signs[:2]) if sign > 0)
    image = np.flip(case.image.transpose(2, 1, 0), flips) if flips else case.image.transpose(2, 1, 0)
    labels = np.flip(case.labels.transpose(2, 1, 0), flips) if flips else case.labels.transpose(2, 1, 0)
    sz, sy, sx = case.spacing
    affine = np.diag([signs[0] * sx, signs[1] * sy, signs[2] * sz, 1.0])
    affine[:3, 3] = case.origin
    image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)
    mask = labels.astype(np.float32)
    if case.quirk:  # the real masks hold 1.0000152587890625 for some pancreas voxels
        mask[(labels == 1) & (np.indices(labels.shape).sum(0) % 3 == 0)] = MASK_QUIRK
    if case.storage == "int16_scaled":
        img = nib.Nifti1Image(image, affine)
        img.set_data_dtype(np.int16)  # nibabel picks scl_slope/scl_inter
    elif case.storage == "int16":
        img = nib.Nifti1Image(np.round(image).clip(-32768, 32767).astype(np.int16), affine)
    else:
        img = nib.Nifti1Image(image.astype(np.float32), affine)
    seg = nib.Nifti1Image(mask, affine)
    for im in (img, seg):
        im.set_qform(affine, code=1)
        im.set_sform(affine, code=1)
    return img, seg


def _plan(config: PhantomConfig) -> list[tuple[str, str, int]]:
    """(case id, split, subtype) for every case; ids are unique 3-digit numbers, like the quiz."""
    rng = np.random.default_rng([config.seed, 0])
    labelled = [(split, k) for split, counts in (("train", config.train), ("validation", config.validation)) for k, n in enumerate(counts) for _ in range(n)]
    test_subtypes = rng.choice(len(config.train), size=config.test, p=np.array(config.train) / sum(config.train))
    total = len(labelled) + config.test
    if total > 1000:
        raise ValueError(f"phantom: {total} cases do not fit 3-digit case numbers")
    numbers = rng.permutation(1000)[:total]
    plan = [(f"quiz_{k}_{n:03d}", split, k) for (split, k), n in zip(labelled, numbers)]
    plan += [(f"quiz_{n:03d}", "test", int(k)) for n, k in zip(numbers[len(labelled):], test_subtypes)]
    return plan


def write_phantom(raw: Path, answers: Path, config: PhantomConfig) -> None:
    """Generate every case into ``raw`` (quiz layout) and the test answer key into ``answers``."""
    key_rows, truth_rows = [], []
    for index, (case_id, split, subtype) in enumerate(progress(_plan(config), "phantom", unit="case")):
        case = generate_case(case_id, split, subtype, config, np.random.default_rng([config.seed, 1, index]))
        truth_rows.append(truth_row(case))
        img, seg = to_nifti(case)
        if split == "test":
            folder = raw / "test"
            key_rows.append((f"{case_id}.nii.gz", subtype))
            mask_path = answers / "masks" / f"{case_id}.nii.gz"
        else:
            folder = raw / split / f"subtype{subtype}"
            mask_path = folder / f"{case_id}.nii.gz"
        folder.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(folder / f"{case_id}_0000.nii.gz"))
        nib.save(seg, str(mask_path))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Names", "Subtype"])
    writer.writerows(key_rows)
    write_text(answers / "subtype_labels.csv", buffer.getvalue())
    write_text(answers / TRUTH_CSV, _csv_text(truth_rows))
    (raw / "test").mkdir(parents=True, exist_ok=True)


LOOK_FIELDS = tuple(LesionLook.__dataclass_fields__)


def truth_row(case: PhantomCase) -> dict[str, Any]:
    """What the generator drew for one case: its split and subtype, the lesion's latent look (``rim`` empty when
    there is none), the drawn lesion fraction and component count."""
    if case.look is None:
        raise ValueError(f"{case.case_id}: no lesion look recorded")
    look = {k: ("" if v is None else float(v)) for k, v in asdict(case.look).items()}
    return {"case": case.case_id, "split": case.split, "subtype": case.subtype, **look,
            "lesion_fraction": round(case.lesion_fraction, 6), "components": case.components}


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_generator_truth(answers: str | Path) -> list[dict[str, Any]]:
    """The rows of ``TRUTH_CSV`` in ``answers``, typed: every look field as a float (``rim`` NaN when absent)."""
    path = Path(answers) / TRUTH_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generator truth (phantoms before version 5 do not write it; regenerate the phantom)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{"case": r["case"], "split": r["split"], "subtype": int(r["subtype"]), "components": int(r["components"]),
             "lesion_fraction": float(r["lesion_fraction"]), **{k: float(r[k]) if r[k] != "" else float("nan") for k in LOOK_FIELDS}} for r in rows]


def _stamp(config: PhantomConfig) -> dict[str, Any]:
    return {"generator": "pancreas_multitask.dataset.phantom", "version": PHANTOM_VERSION, "config": asdict(config)}


def ensure_phantom(raw: str | Path, answers: str | Path | None, config: PhantomConfig | Mapping[str, Any]) -> bool:
    """Generate the phantom unless ``raw`` already holds one made with the same config.

    Generation happens in a temporary folder that is renamed into place, so a killed run leaves
    no half-written dataset. Returns True when it generated. A ``raw`` folder that exists without
    the phantom's stamp is never touched.
    """
    if answers is None:
        raise ValueError(f"{raw}: a phantom needs a test_answers folder in the manifest's profile, for its answer key")
    raw, answers = Path(raw), Path(answers)
    cfg = config if isinstance(config, PhantomConfig) else PhantomConfig.from_dict(config)
    stamp = _stamp(cfg)
    stamp_file = raw / STAMP
    if stamp_file.exists():
        if json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp)):
            return False
    for folder in (raw, answers):
        if folder.exists() and not (folder / STAMP).exists():
            raise FileExistsError(f"{folder}: exists but holds no phantom stamp ({STAMP}); refusing to overwrite it")
    raw.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".phantom-", dir=raw.parent) as tmp:
        tmp_raw, tmp_answers = Path(tmp) / "raw", Path(tmp) / "answers"
        write_phantom(tmp_raw, tmp_answers, cfg)
        for folder in (tmp_answers, tmp_raw):
            (folder / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        for src, dst in ((tmp_answers, answers), (tmp_raw, raw)):  # raw last: its stamp marks completion
            if dst.exists():
                shutil.rmtree(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.replace(dst)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic quiz-layout phantom.")
    parser.add_argument("out", type=Path, help="output folder; writes OUT/quiz and OUT/test_answers")
    parser.add_argument("--params", type=Path, help="a profile YAML whose `phantom` block sets sizes and counts")
    parser.add_argument("--seed", type=int, help="override the seed")
    args = parser.parse_args(argv)
    block: dict[str, Any] = {}
    if args.params:
        block = dict(yaml.safe_load(args.params.read_text()).get("phantom", {}))
    if args.seed is not None:
        block["seed"] = args.seed
    made = ensure_phantom(args.out / "quiz", args.out / "test_answers", PhantomConfig.from_dict(block))
    print(f"{'generated' if made else 'up to date'}: {args.out}")


if __name__ == "__main__":
    main()
