"""Large arrays beside the store: ``.npy`` / ``.npz`` files written atomically and
referenced from the ``ArrayFile`` table by path (relative to the campaign dir) and sha256.

Write order: the file is written to a temporary name, fsynced and ``os.replace``d into
place, then its ``ArrayFile`` row is written in the caller's transaction.  Readers check
the sha256, so a file changed behind the store's back is reported, never used silently.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sqlmodel import Session

from orchestrator.atomic import atomic_open
from orchestrator.errors import LabelpropError
from orchestrator.store import ArrayFile, utcnow

__all__ = ["sha256_file", "atomic_save_npy", "atomic_save_npz", "register_array",
           "save_array", "save_arrays_npz", "array_row", "load_array", "load_npz",
           "load_forest", "atomic_write_bytes"]


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class _HashingWriter:
    """File wrapper that hashes what is written (np.save writes sequentially)."""

    def __init__(self, fh):
        self.fh = fh
        self.h = hashlib.sha256()

    def write(self, b):
        self.h.update(b)
        return self.fh.write(b)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _atomic(path: Path, write) -> str:
    """Write through :func:`orchestrator.atomic.atomic_open`, hashing as it goes; return sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        w = _HashingWriter(fh)
        write(w)
    return w.h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return its sha256."""
    return _atomic(Path(path), lambda fh: fh.write(data))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """``np.save`` to ``path`` atomically; return the file's sha256."""
    arr = np.ascontiguousarray(array)
    return _atomic(Path(path), lambda fh: np.save(fh, arr, allow_pickle=False))


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> str:
    """``np.savez`` (uncompressed) to ``path`` atomically; return the file's sha256.

    (``np.savez`` seeks inside its zip file, so the hash is computed from the file.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return sha256_file(path)


def register_array(session: Session, name: str, rel_path: str, sha256: str, shape, dtype) -> None:
    """Insert or replace the ``ArrayFile`` row ``name`` (in the caller's transaction)."""
    row = session.get(ArrayFile, name)
    vals = dict(path=str(rel_path), sha256=sha256, shape=json.dumps([int(x) for x in shape]),
                dtype=str(dtype), created_at=utcnow())
    if row is None:
        session.add(ArrayFile(name=name, **vals))
    else:
        for k, v in vals.items():
            setattr(row, k, v)
    session.flush()


def save_array(session: Session, campaign_dir: str | os.PathLike, name: str,
               array: np.ndarray, rel_path: str | None = None) -> str:
    """Write ``DIR/<name>.npy`` atomically and register it; returns sha256."""
    rel = rel_path or f"{name}.npy"
    digest = atomic_save_npy(Path(campaign_dir) / rel, array)
    register_array(session, name, rel, digest, np.shape(array), np.asarray(array).dtype)
    return digest


def save_arrays_npz(session: Session, campaign_dir: str | os.PathLike, name: str,
                    arrays: dict[str, np.ndarray], rel_path: str | None = None) -> str:
    """Write ``DIR/<name>.npz`` atomically and register it (shape: [number of arrays])."""
    rel = rel_path or f"{name}.npz"
    digest = atomic_save_npz(Path(campaign_dir) / rel, arrays)
    register_array(session, name, rel, digest, [len(arrays)], "npz")
    return digest


def array_row(session: Session, name: str) -> ArrayFile | None:
    return session.get(ArrayFile, name)


def _checked_path(session: Session, campaign_dir, name: str, verify: bool) -> Path:
    row = session.get(ArrayFile, name)
    if row is None:
        raise LabelpropError(f"{campaign_dir}: the campaign has no {name!r} array yet")
    path = Path(campaign_dir) / row.path
    if not path.is_file():
        raise LabelpropError(f"{path}: missing (the store references it as {name!r})")
    if verify:
        digest = sha256_file(path)
        if digest != row.sha256:
            raise LabelpropError(f"{path}: sha256 {digest[:12]}... differs from the store's "
                                 f"{row.sha256[:12]}...; the file changed after it was written")
    return path


def load_array(session: Session, campaign_dir: str | os.PathLike, name: str,
               verify: bool = True, mmap: bool = False) -> np.ndarray:
    """Load a registered ``.npy`` array, checking its sha256 unless ``verify=False``."""
    path = _checked_path(session, campaign_dir, name, verify)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise LabelpropError(f"{path}: cannot read array: {exc}") from None


def load_npz(session: Session, campaign_dir: str | os.PathLike, name: str,
             verify: bool = True) -> dict[str, np.ndarray]:
    path = _checked_path(session, campaign_dir, name, verify)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise LabelpropError(f"{path}: cannot read arrays: {exc}") from None


def load_forest(session: Session, campaign_dir: str | os.PathLike, verify: bool = True):
    """The campaign's :class:`~clustering.tree.Forest` (``forest.npz``)."""
    from clustering.tree import Forest

    if session.get(ArrayFile, "forest") is None:
        raise LabelpropError(f"{campaign_dir}: no trees yet; run `labelprop cluster {campaign_dir}`")
    d = load_npz(session, campaign_dir, "forest", verify)
    try:
        return Forest.from_npz_dict(d)
    except ValueError as exc:
        raise LabelpropError(f"{Path(campaign_dir) / 'forest.npz'}: {exc}") from None
