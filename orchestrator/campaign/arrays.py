"""Large arrays beside the store: ``.npy`` / ``.npz`` files written atomically and
referenced from the ``ArrayFile`` table by path (relative to the campaign dir) and sha256.

Write order (a small redo journal, so a command killed at any line loses nothing):

1. the new content is written atomically to a *staging* file ``<path>.new`` (temporary
   name, fsync, ``os.replace``); the file the store references is not touched;
2. its ``ArrayFile`` row (path, sha256) is written in the caller's transaction;
3. after the commit the staging file is renamed over ``<path>``; on a rollback it is removed.

Killed before the commit, the store and ``<path>`` still agree (the old version).  Killed
between the commit and the rename, the row names content that is still in ``<path>.new``:
the next reader finds that out from the sha256 and finishes the rename (roll forward).
Readers check the sha256, so a file changed behind the store's back is reported, never
used silently.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sqlalchemy import event
from sqlmodel import Session

from orchestrator.atomic import atomic_open
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import ArrayFile, utcnow

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


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _publish_after_commit(session: Session, path: Path) -> None:
    """Rename ``path``'s staging file into place once ``session`` commits; drop it on rollback."""
    staged = _staging(path)

    def commit(_session):
        try:
            os.replace(staged, path)
        except FileNotFoundError:       # a reader rolled it forward first
            pass

    def rollback(_session):
        try:
            staged.unlink()
        except FileNotFoundError:
            pass

    event.listen(session, "after_commit", commit, once=True)
    event.listen(session, "after_rollback", rollback, once=True)


def save_array(session: Session, campaign_dir: str | os.PathLike, name: str,
               array: np.ndarray, rel_path: str | None = None) -> str:
    """Stage ``DIR/<name>.npy`` and register it (in place after the commit); returns sha256."""
    rel = rel_path or f"{name}.npy"
    path = Path(campaign_dir) / rel
    digest = atomic_save_npy(_staging(path), array)
    register_array(session, name, rel, digest, np.shape(array), np.asarray(array).dtype)
    _publish_after_commit(session, path)
    return digest


def save_arrays_npz(session: Session, campaign_dir: str | os.PathLike, name: str,
                    arrays: dict[str, np.ndarray], rel_path: str | None = None) -> str:
    """Stage ``DIR/<name>.npz`` and register it (shape: [number of arrays]); in place after the commit."""
    rel = rel_path or f"{name}.npz"
    path = Path(campaign_dir) / rel
    digest = atomic_save_npz(_staging(path), arrays)
    register_array(session, name, rel, digest, [len(arrays)], "npz")
    _publish_after_commit(session, path)
    return digest


def array_row(session: Session, name: str) -> ArrayFile | None:
    return session.get(ArrayFile, name)


def _checked_path(session: Session, campaign_dir, name: str, verify: bool) -> Path:
    row = session.get(ArrayFile, name)
    if row is None:
        raise LabelpropError(f"{campaign_dir}: the campaign has no {name!r} array yet")
    path = Path(campaign_dir) / row.path
    staged = _staging(path)
    if staged.is_file() and (not path.is_file() or sha256_file(path) != row.sha256):
        # a writer committed and was killed before renaming its staging file: finish it
        try:
            if sha256_file(staged) == row.sha256:
                os.replace(staged, path)
        except FileNotFoundError:       # another reader (or the writer) renamed it meanwhile
            pass
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
        from orchestrator.campaign.rounds import check_not_preparing

        check_not_preparing(session, campaign_dir, "the search goes on")
        raise LabelpropError(f"{campaign_dir}: no trees yet; run `labelprop cluster {campaign_dir}`")
    d = load_npz(session, campaign_dir, "forest", verify)
    try:
        return Forest.from_npz_dict(d)
    except ValueError as exc:
        raise LabelpropError(f"{Path(campaign_dir) / 'forest.npz'}: {exc}") from None
