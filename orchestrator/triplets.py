"""Simulation triplets ``{f, s, IoU}`` (paper Sec. 5.2): load, validate, save.

A triplets file is a NumPy ``.npz`` archive with the arrays

- ``features``: float32 ``(n, d)`` -- the mask feature ``f`` used for clustering;
- ``scores``:   float32 ``(n,)``   -- the predicted mask score ``s`` in [0, 1];
- ``ious``:     float32 ``(n,)``   -- the true IoU of each mask in [0, 1]; optional for
  unlabelled data (``require_ious=False``);
- ``classes``:  int64   ``(n,)``   -- the class id of each mask.

Every problem is reported as one :class:`LabelpropError` line naming the file and what
is wrong with it, so the CLI can print it and exit non-zero.  Files are written
atomically (temporary file in the same directory, then ``os.replace``).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.atomic import atomic_open
from orchestrator.errors import LabelpropError

__all__ = ["Triplets", "validate_triplets", "load_triplets", "save_triplets", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("features", "scores", "classes")
OPTIONAL_KEYS = ("ious",)


@dataclass(frozen=True, eq=False)
class Triplets:
    """Validated triplet arrays (``ious`` is None for unlabelled data)."""

    features: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    ious: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, idx: np.ndarray) -> "Triplets":
        """The triplets at ``idx`` (boolean mask or indices), e.g. a held-out split."""
        return Triplets(features=self.features[idx], scores=self.scores[idx],
                        classes=self.classes[idx],
                        ious=None if self.ious is None else self.ious[idx])


def _real(name: str, key: str, a, dims: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != dims:
        want = "(n, d)" if dims == 2 else "(n,)"
        raise LabelpropError(f"{name}: '{key}' must be {dims}-D {want}, got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise LabelpropError(f"{name}: '{key}' must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(a.shape[0], -1).any(axis=1))[0])
        raise LabelpropError(f"{name}: '{key}' has {int(bad.sum())} NaN/inf value(s) "
                             f"(first in row {first})")
    return a


def _unit(name: str, key: str, a: np.ndarray) -> None:
    out = (a < 0.0) | (a > 1.0)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise LabelpropError(f"{name}: '{key}' must be in [0, 1]; {int(out.sum())} value(s) "
                             f"outside (e.g. row {i}: {float(a[i]):g})")


def validate_triplets(arrays, name: str = "<triplets>", require_ious: bool = True) -> Triplets:
    """Check a mapping of arrays against the triplet format; return typed :class:`Triplets`.

    Raises :class:`LabelpropError` naming ``name`` and the first problem found: a missing
    key, wrong number of dimensions, non-numeric or non-integer classes, NaN/inf, scores or
    IoUs outside [0, 1], or arrays of different lengths.
    """
    keys = set(arrays.keys()) if hasattr(arrays, "keys") else set()
    missing = [k for k in REQUIRED_KEYS + (OPTIONAL_KEYS if require_ious else ()) if k not in keys]
    if missing:
        raise LabelpropError(f"{name}: missing key(s) {', '.join(repr(k) for k in missing)} "
                             f"(has: {', '.join(sorted(keys)) or 'nothing'})")
    features = _real(name, "features", arrays["features"], 2)
    scores = _real(name, "scores", arrays["scores"], 1)
    ious = _real(name, "ious", arrays["ious"], 1) if "ious" in keys else None
    classes = np.asarray(arrays["classes"])
    if classes.ndim != 1:
        raise LabelpropError(f"{name}: 'classes' must be 1-D (n,), got shape {classes.shape}")
    if classes.dtype.kind not in "iu":
        integral = (classes.dtype.kind == "f" and bool(np.all(np.isfinite(classes)))
                    and bool(np.all(classes == np.round(classes))))
        if not integral:  # integral floats (e.g. from a CSV round trip) are converted
            raise LabelpropError(f"{name}: 'classes' must be integers, got dtype {classes.dtype}")
    classes = classes.astype(np.int64, copy=False)
    if classes.size and classes.min() < 0:
        raise LabelpropError(f"{name}: 'classes' must be >= 0, found {int(classes.min())}")
    lengths = {"features": features.shape[0], "scores": scores.shape[0],
               "classes": classes.shape[0]}
    if ious is not None:
        lengths["ious"] = ious.shape[0]
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise LabelpropError(f"{name}: arrays have mismatched lengths ({desc})")
    if scores.shape[0] == 0:
        raise LabelpropError(f"{name}: contains no triplets (n = 0)")
    if features.shape[1] == 0:
        raise LabelpropError(f"{name}: 'features' has 0 dimensions per row")
    _unit(name, "scores", scores)
    if ious is not None:
        _unit(name, "ious", ious)
    return Triplets(features=np.ascontiguousarray(features), scores=scores, classes=classes,
                    ious=ious)


def load_triplets(path: str | os.PathLike, require_ious: bool = True) -> Triplets:
    """Load and validate a triplets ``.npz``; every problem is a one-line LabelpropError."""
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise LabelpropError(f"{name}: no such file")
    if p.is_dir():
        raise LabelpropError(f"{name}: is a directory, expected a .npz triplets file")
    try:
        z = np.load(p, allow_pickle=False)
        if not hasattr(z, "files"):
            raise LabelpropError(f"{name}: is a single .npy array, expected a .npz archive "
                                 f"with keys features, scores, ious, classes")
        with z:
            arrays = {k: z[k] for k in z.files}
    except LabelpropError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LabelpropError(f"{name}: not a readable .npz archive ({msg})") from None
    return validate_triplets(arrays, name=name, require_ious=require_ious)


def save_triplets(path: str | os.PathLike, triplets: Triplets | None = None, *,
                  features=None, scores=None, ious=None, classes=None,
                  compressed: bool = True) -> Path:
    """Validate and write triplets atomically (temporary file + ``os.replace``).

    Pass either a :class:`Triplets` or the four arrays as keywords.  The written dtypes are
    the format's: float32 features/scores/ious, int64 classes.
    """
    p = Path(path)
    if triplets is None:
        arrays = {"features": features, "scores": scores, "classes": classes}
        if ious is not None:
            arrays["ious"] = ious
        triplets = validate_triplets(arrays, name=str(p), require_ious=ious is not None)
    out = {"features": np.asarray(triplets.features, dtype=np.float32),
           "scores": np.asarray(triplets.scores, dtype=np.float32),
           "classes": np.asarray(triplets.classes, dtype=np.int64)}
    if triplets.ious is not None:
        out["ious"] = np.asarray(triplets.ious, dtype=np.float32)
    with atomic_open(p, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **out)
    return p
