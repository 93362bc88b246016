"""Training: detectron2's ``DefaultTrainer`` with labelprop's model, atomic checkpoints,
resumption after a kill, losses in ``metrics.json`` and a progress bar with ETA.

The output directory holds ``config.yaml`` (the full model config; `detect` reads it),
``labelprop_model.json`` (categories and provenance), ``model_XXXXXXX.pth`` checkpoints,
``last_checkpoint``, ``model_final.pth``, ``metrics.json`` (one JSON line per logged
iteration: every loss) and ``log.txt`` (detectron2's log).  Running the same command
again resumes from the last checkpoint; once ``model_final.pth`` exists it does nothing.
"""
from __future__ import annotations

import json
import logging
import os
import weakref
from pathlib import Path

from detection.errors import DetectionError

__all__ = ["TrainOptions", "build_train_cfg", "train"]

MODEL_INFO = "labelprop_model.json"
# Keys that may differ between the run that wrote config.yaml and a resuming run.
RESUMABLE_KEYS = {"SOLVER.MAX_ITER", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "OUTPUT_DIR",
                  "LABELPROP.LOG_PERIOD", "SOLVER.CHECKPOINT_PERIOD"}


class TrainOptions:
    """What `labelprop train` takes besides the data (None: the preset's value)."""

    def __init__(self, *, preset: str = "default", norm: str = "GN", device: str = "cpu",
                 iters: int | None = None, batch: int | None = None, lr: float | None = None,
                 checkpoint_period: int | None = None, init_weights: str | None = None,
                 sets: list[str] | None = None, maskiou_loss: str | None = None):
        self.preset, self.norm, self.device = preset, norm, device
        self.iters, self.batch, self.lr = iters, batch, lr
        self.checkpoint_period, self.init_weights = checkpoint_period, init_weights
        self.sets = list(sets or [])
        self.maskiou_loss = maskiou_loss


def _dataset_name(i: int, src) -> str:
    import hashlib

    h = hashlib.sha1(f"{src.json_file}|{src.image_root}".encode()).hexdigest()[:10]
    return f"labelprop_train_{i}_{h}"


def _register(name: str, src) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_json(src.json_file, src.image_root, name))
    MetadataCatalog.get(name).set(json_file=src.json_file, image_root=src.image_root,
                                  evaluator_type="coco")


def build_train_cfg(sources: list, opts: TrainOptions, out_dir: Path):
    from detection.config import OPTIMIZERS, apply_overrides, get_labelprop_cfg

    cats = sources[0].categories
    for s in sources[1:]:
        if s.categories != cats:
            raise DetectionError(f"{s.json_file}: its categories differ from those of "
                                 f"{sources[0].json_file}; training files must share them")
    try:
        cfg = get_labelprop_cfg(len(cats), preset=opts.preset, norm=opts.norm,
                                device=opts.device)
    except ValueError as exc:
        raise DetectionError(str(exc)) from None
    if opts.iters is not None:
        cfg.SOLVER.MAX_ITER = int(opts.iters)
        steps = tuple(int(opts.iters * f) for f in (2 / 3, 8 / 9))
        # detectron2 needs strictly increasing milestones: at 2 or 3 iterations both fractions
        # land on the same step
        cfg.SOLVER.STEPS = tuple(sorted({s for s in steps if 0 < s < opts.iters}))
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, opts.iters // 5))
    if opts.batch is not None:
        cfg.SOLVER.IMS_PER_BATCH = int(opts.batch)
    if opts.lr is not None:
        cfg.SOLVER.BASE_LR = float(opts.lr)
    if opts.checkpoint_period is not None:
        cfg.SOLVER.CHECKPOINT_PERIOD = int(opts.checkpoint_period)
    if opts.maskiou_loss is not None:
        cfg.MODEL.ROI_MASKIOU_HEAD.LOSS = opts.maskiou_loss
    try:
        apply_overrides(cfg, opts.sets)
    except ValueError as exc:
        raise DetectionError(str(exc)) from None
    if cfg.MODEL.ROI_MASKIOU_HEAD.LOSS not in ("l2", "relaxed"):
        raise DetectionError(f"mask-IoU loss must be l2 or relaxed, got "
                             f"{cfg.MODEL.ROI_MASKIOU_HEAD.LOSS!r}")
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        raise DetectionError(f"SOLVER.OPTIMIZER must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{cfg.SOLVER.OPTIMIZER!r}")
    if cfg.SOLVER.MAX_ITER < 1:
        raise DetectionError(f"--iters must be >= 1, got {cfg.SOLVER.MAX_ITER}")
    cfg.DATASETS.TRAIN = tuple(_dataset_name(i, s) for i, s in enumerate(sources))
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.MODEL.WEIGHTS = ""
    return cfg


def _flat(cfg, prefix: str = "") -> dict:
    from detectron2.config import CfgNode

    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, CfgNode):
            out.update(_flat(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _check_resume(saved, cfg, path: Path) -> None:
    a, b = _flat(saved), _flat(cfg)
    for k in sorted(set(a) | set(b)):
        if k in RESUMABLE_KEYS or k.startswith("DATASETS."):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = _deep_tuple(va), _deep_tuple(vb)
        if va != vb:
            raise DetectionError(f"{path}: this run was started with {k}={va!r}, now "
                                 f"{vb!r}; rerun with the same options to resume, or use a "
                                 f"new --out")


def _deep_tuple(v):
    return tuple(_deep_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def _atomic_text(path: Path, text: str) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _setup_logging(out_dir: Path) -> None:
    """detectron2's log goes to OUT/log.txt; only warnings reach the console."""
    fmt = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")
    for name in ("detectron2", "fvcore", "labelprop.detection"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        for h in list(lg.handlers):
            if getattr(h, "_labelprop", False):
                lg.removeHandler(h)
                h.close()
        fh = logging.FileHandler(out_dir / "log.txt")
        fh.setFormatter(fmt)
        fh._labelprop = True
        con = logging.StreamHandler()
        con.setLevel(logging.WARNING)
        con.setFormatter(fmt)
        con._labelprop = True
        lg.addHandler(fh)
        lg.addHandler(con)


def build_optimizer(cfg, model):
    """detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER``) with the same parameter groups
    (no decay on norm layers) and gradient clipping."""
    import torch
    from detectron2.solver import build_optimizer as build_sgd
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

    if cfg.SOLVER.OPTIMIZER == "SGD":
        return build_sgd(cfg, model)
    params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR,
                                          weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
                                          bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
                                          weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY))


def _trainer_class():
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.utils.events import EventWriter, JSONWriter, get_event_storage

    from detection.checkpoint import AtomicCheckpointer

    class ProgressWriter(EventWriter):
        """Calls ``progress(iteration, max_iter, losses)`` after every logged iteration."""

        def __init__(self, progress, max_iter):
            self.progress, self.max_iter = progress, max_iter

        def write(self):
            st = get_event_storage()
            losses = {k: v.latest() for k, v in st.histories().items()
                      if k.startswith("loss") or k == "total_loss"}
            self.progress(st.iter + 1, self.max_iter, losses)

    class Trainer(DefaultTrainer):
        """DefaultTrainer with atomic checkpoints, no evaluation hook, JSON + progress logs."""

        progress = None

        def build_hooks(self):
            cfg = self.cfg
            self.checkpointer = AtomicCheckpointer(self._trainer.model, cfg.OUTPUT_DIR,
                                                   trainer=weakref.proxy(self))
            writers = [JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), window_size=1)]
            if Trainer.progress is not None:
                writers.append(ProgressWriter(Trainer.progress, cfg.SOLVER.MAX_ITER))
            return [hooks.IterationTimer(), hooks.LRScheduler(),
                    hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                               max_to_keep=2),
                    hooks.PeriodicWriter(writers, period=max(1, cfg.LABELPROP.LOG_PERIOD))]

        @classmethod
        def build_optimizer(cls, cfg, model):
            return build_optimizer(cfg, model)

        @classmethod
        def build_model(cls, cfg):
            from detectron2.modeling import build_model

            import detection.modeling  # noqa: F401  (registers the heads)
            return build_model(cfg)

    return Trainer


def train(sources: list, out_dir: str | os.PathLike, opts: TrainOptions, *,
          progress=None, say=None) -> dict:
    """Train (or resume training) into ``out_dir``; returns a summary dict."""
    import torch
    from detectron2.utils.env import seed_all_rng

    from detection.checkpoint import load_init_weights
    from detection.config import load_cfg

    say = say or (lambda m: None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DetectionError(f"{out}: exists and is not a directory")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectionError("--device cuda: no CUDA device is available here")
    cfg = build_train_cfg(sources, opts, out)
    cfg_path = out / "config.yaml"
    final = out / "model_final.pth"
    resuming = (out / "last_checkpoint").is_file() and cfg_path.is_file()
    if resuming:
        _check_resume(load_cfg(str(cfg_path)), cfg, cfg_path)
        if final.is_file():
            done = _last_iteration(out)
            if done is not None and done + 1 >= cfg.SOLVER.MAX_ITER:
                return {"out": str(out), "resumed_from": done + 1, "iterations": done + 1,
                        "already_done": True, "weights": str(final)}
    elif out.is_dir() and any(out.glob("model_*.pth")):
        raise DetectionError(f"{out}: holds checkpoints but no config.yaml/last_checkpoint; "
                             f"use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out)
    for name, src in zip(cfg.DATASETS.TRAIN, sources):
        _register(name, src)
    if not resuming:
        _atomic_text(cfg_path, cfg.dump())
        info = {"format": "labelprop-detection-model/1",
                "categories": [{"id": i, "name": n} for i, n in sources[0].categories],
                "train": [{"json": s.json_file, "image_root": s.image_root,
                           "images": s.n_images, "annotations": s.n_annotations} for s in sources],
                "preset": opts.preset, "norm": opts.norm, "init_weights": opts.init_weights,
                "feature_dim": cfg.MODEL.LABELPROP.FEATURE_DIM}
        _atomic_text(out / MODEL_INFO, json.dumps(info, indent=2) + "\n")
    seed_all_rng(cfg.SEED)
    Trainer = _trainer_class()
    Trainer.progress = progress
    cfg.freeze()
    trainer = Trainer(cfg)
    start = 0
    if resuming:
        trainer.resume_or_load(resume=True)
        start = trainer.start_iter
        say(f"resuming from iteration {start} ({trainer.checkpointer.get_checkpoint_file()})")
    elif opts.init_weights:
        r = load_init_weights(trainer.model, opts.init_weights)
        say(f"initialised {r['matched']} of {r['total']} tensors from {opts.init_weights}")
    if start >= cfg.SOLVER.MAX_ITER:
        return {"out": str(out), "resumed_from": start, "iterations": start,
                "already_done": True, "weights": str(final)}
    trainer.train()
    return {"out": str(out), "resumed_from": start, "iterations": cfg.SOLVER.MAX_ITER,
            "already_done": False, "weights": str(final)}


def _last_iteration(out: Path) -> int | None:
    """The last iteration recorded in metrics.json (None if there is none)."""
    p = out / "metrics.json"
    if not p.is_file():
        return None
    last = None
    for line in p.read_text().splitlines():
        try:
            last = json.loads(line).get("iteration", last)
        except json.JSONDecodeError:
            continue
    return last


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    """metrics.json as a list (a later line for the same iteration wins: a resumed run
    re-logs the iterations after its checkpoint)."""
    by_iter: dict[int, dict] = {}
    p = Path(out_dir) / "metrics.json"
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue          # a line cut by a kill
        by_iter[int(d.get("iteration", -1))] = d
    return [by_iter[k] for k in sorted(by_iter)]
