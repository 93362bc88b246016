"""Checkpoints: written atomically, loaded with an architecture check.

:class:`AtomicCheckpointer` is detectron2's ``DetectionCheckpointer`` whose files (the
``.pth`` and the ``last_checkpoint`` tag) are written to a temporary file and renamed, so
a ``train`` killed at any line leaves the previous checkpoint intact and resumable.

:func:`load_model_weights` loads trained weights for inference and refuses, in one line,
weights of another architecture (missing or differently shaped parameters).
:func:`load_init_weights` loads pretrained weights to start training from (a detectron2
checkpoint, a model-zoo ``.pkl``, a path or a URL): a partial match is normal there
(other classes, no mask-IoU head), but no match at all is an error.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from detection.errors import DetectionError

__all__ = ["AtomicCheckpointer", "load_model_weights", "load_init_weights"]


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with write-then-rename saves."""

    def _atomic(self, path: str, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=os.path.dirname(path) or ".")
        try:
            os.chmod(tmp, 0o644)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        self.logger.info(f"Saving checkpoint to {os.path.join(self.save_dir, basename)}")
        self._atomic(os.path.join(self.save_dir, basename), lambda fh: torch.save(data, fh))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        self._atomic(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda fh: fh.write(last_filename_basename.encode()))

    def _torch_load(self, f):
        # our own resume checkpoints hold plain tensors and numbers; refuse pickled code
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except Exception as exc:
            raise DetectionError(f"{f}: not a readable PyTorch checkpoint "
                                 f"({str(exc).splitlines()[0][:200]})") from None


def _read_checkpoint(checkpointer: DetectionCheckpointer, path: str) -> dict:
    """The checkpoint's ``model`` state (after detectron2's name heuristics), or an error."""
    local = path
    if not os.path.isfile(path):
        if "://" not in path:
            raise DetectionError(f"{path}: no such weights file")
        try:
            local = checkpointer.path_manager.get_local_path(path)
        except Exception as exc:
            raise DetectionError(f"{path}: cannot download weights "
                                 f"({str(exc).splitlines()[0][:200]})") from None
    checkpointer._parsed_url_during_load = __import__("urllib.parse").parse.urlparse(path)
    try:
        data = checkpointer._load_file(local)
    except DetectionError:
        raise
    except Exception as exc:
        raise DetectionError(f"{path}: not a readable checkpoint "
                             f"({str(exc).splitlines()[0][:200]})") from None
    finally:
        checkpointer._parsed_url_during_load = None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise DetectionError(f"{path}: not a model checkpoint (no 'model' state dict)")
    return data


def _compare(model: torch.nn.Module, state: dict) -> tuple[list[str], list[str], int]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    shapes = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    matched = sum(1 for k in own if k in state and k not in shapes)
    return missing, shapes, matched


def load_model_weights(model: torch.nn.Module, path: str) -> dict:
    """Load weights trained for exactly this architecture; one-line error otherwise."""
    ck = AtomicCheckpointer(model)
    data = _read_checkpoint(ck, path)
    state = data["model"]
    if data.get("matching_heuristics"):
        raise DetectionError(f"{path}: weights of another architecture (a model-zoo or "
                             f"ImageNet file); train with --init-weights to start from it")
    missing, shapes, _ = _compare(model, state)
    ignorable = {"pixel_mean", "pixel_std"}
    missing = [k for k in missing if k not in ignorable]
    if missing or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters missing, e.g. {missing[0]}")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes, e.g. {k} "
                         f"{tuple(state[k].shape)} vs {tuple(model.state_dict()[k].shape)}")
        raise DetectionError(f"{path}: weights of another architecture than this labelprop "
                             f"model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)     # keeps the modules' version metadata
    return data


def load_init_weights(model: torch.nn.Module, path: str) -> dict:
    """Load pretrained weights to start training from; returns {'matched', 'total'}."""
    ck = AtomicCheckpointer(model)
    data = _read_checkpoint(ck, path)
    if data.get("matching_heuristics"):
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        ck._convert_ndarray_to_tensor(data["model"])
        data["model"] = align_and_update_state_dicts(
            model.state_dict(), data["model"], c2_conversion=data.get("__author__") == "Caffe2")
    from collections import OrderedDict

    state = OrderedDict((k, torch.as_tensor(v)) for k, v in data["model"].items()
                        if hasattr(v, "shape"))
    _, shapes, matched = _compare(model, state)
    if matched == 0:
        raise DetectionError(f"{path}: no parameter matches this model (weights of another "
                             f"architecture)")
    own = model.state_dict()
    keep = type(state)((k, v) for k, v in state.items() if k in own and k not in shapes)
    keep._metadata = getattr(data["model"], "_metadata", None)
    model.load_state_dict(keep, strict=False)
    return {"matched": matched, "total": len(own)}
