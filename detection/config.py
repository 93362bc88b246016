"""labelprop's detectron2 config: PointRend Mask R-CNN R50-FPN plus the mask-IoU head.

:func:`add_labelprop_config` adds labelprop's keys to a detectron2 config (as
``add_pointrend_config`` does for PointRend); :func:`get_labelprop_cfg` builds the whole
model config in code, because PointRend's yaml files are not shipped in detectron2's
wheel.  The result is dumped as ``config.yaml`` next to the weights, and every later
command (detect, resume) reads it back with :func:`load_cfg`.

Presets (``--preset``):

* ``default``: the paper's model at COCO-like image sizes (shorter side 640-800).
* ``small``: the same architecture with light RPN/RoI settings for small images (about
  128 px) on CPU.
* ``tiny``: the same model family (PointRend Mask R-CNN + mask-IoU head) on a ResNet-18
  FPN with narrow heads, trained with AdamW and a cosine schedule: it learns usable masks
  from random weights in a few CPU minutes.  What the tests and `labelprop demo --detect`
  use.

Random initialisation needs real normalisation layers: ``norm="GN"`` (default) or ``"BN"``
with ``FREEZE_AT=0``; with the published ``FrozenBN`` the loss diverges from random
weights.  ``FrozenBN`` (with ``FREEZE_AT=2``) is for fine-tuning pretrained weights that
use it, such as detectron2's own PointRend checkpoints.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.point_rend import add_pointrend_config

__all__ = ["add_labelprop_config", "get_labelprop_cfg", "load_cfg", "apply_overrides",
           "PRESETS", "NORMS", "OPTIMIZERS"]

PRESETS = ("default", "small", "tiny")
OPTIMIZERS = ("SGD", "AdamW")
NORMS = ("GN", "BN", "SyncBN", "FrozenBN")


def add_labelprop_config(cfg: CN) -> None:
    """Add labelprop's keys: the mask-IoU head, the mask-attention feature, detection filters."""
    # Mask-IoU head (Mask Scoring R-CNN): RoI features + max-pooled predicted mask ->
    # NUM_CONV 3x3 convs (the last with stride 2) -> NUM_FC FCs -> one IoU per class.
    cfg.MODEL.ROI_MASKIOU_HEAD = CN()
    cfg.MODEL.ROI_MASKIOU_HEAD.NAME = "MaskIoUHead"
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV = 4
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 256
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_MASKIOU_HEAD.FC_DIM = 1024
    cfg.MODEL.ROI_MASKIOU_HEAD.NORM = ""
    # RoI features pooled from ROI_HEADS.IN_FEATURES at this side (the predicted mask is
    # sampled at twice it and max-pooled down to it, as in Mask Scoring R-CNN).
    cfg.MODEL.ROI_MASKIOU_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_MASKIOU_HEAD.POOLER_SAMPLING_RATIO = 0
    cfg.MODEL.ROI_MASKIOU_HEAD.POOLER_TYPE = "ROIAlignV2"
    # "l2": Mask Scoring R-CNN's L2 regression of the IoU; "relaxed": the relaxed IoU loss
    # of Li et al. (CVPR 2018) that the paper names, 1 - sum(min(p, t)) / sum(max(p, t))
    # between predicted and true IoUs.
    cfg.MODEL.ROI_MASKIOU_HEAD.LOSS = "l2"
    cfg.MODEL.ROI_MASKIOU_HEAD.LOSS_WEIGHT = 1.0

    # The paper's "mask attention" feature: RoI features weighted by the predicted mask
    # probabilities, averaged, projected to FEATURE_DIM by a fixed random Gaussian matrix
    # (seeded, stored in the weights as roi_heads.feature_projection).
    cfg.MODEL.LABELPROP = CN()
    cfg.MODEL.LABELPROP.FEATURE_DIM = 64
    cfg.MODEL.LABELPROP.PROJECTION_SEED = 0

    # What `labelprop detect` keeps (the paper: NMS, score above 0.2, box area above 1000 px);
    # NMS itself is MODEL.ROI_HEADS.NMS_THRESH_TEST, the cap TEST.DETECTIONS_PER_IMAGE.
    cfg.LABELPROP = CN()
    cfg.LABELPROP.MIN_SCORE = 0.2          # on s = class confidence x predicted IoU
    cfg.LABELPROP.MIN_BOX_AREA = 1000.0    # in pixels of the original image
    cfg.LABELPROP.LOG_PERIOD = 20          # iterations between metrics.json lines

    # detectron2's trainer always builds SGD; "AdamW" (with SOLVER.WEIGHT_DECAY as its
    # decoupled decay) converges much faster from random weights on a small budget.
    cfg.SOLVER.OPTIMIZER = "SGD"


def _r50_fpn(cfg: CN) -> None:
    """detectron2's Base-RCNN-FPN.yaml, in code."""
    m = cfg.MODEL
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH = 50
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TRAIN = 2000
    m.RPN.PRE_NMS_TOPK_TEST = 1000
    m.RPN.POST_NMS_TOPK_TRAIN = 1000
    m.RPN.POST_NMS_TOPK_TEST = 1000
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    m.MASK_ON = True
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.STEPS = (60000, 80000)
    cfg.SOLVER.MAX_ITER = 90000
    cfg.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)


def _pointrend(cfg: CN, num_classes: int) -> None:
    """PointRend's Base-PointRend-RCNN-FPN.yaml, in code, with labelprop's heads."""
    m = cfg.MODEL
    m.ROI_HEADS.NAME = "LabelpropROIHeads"
    m.ROI_HEADS.NUM_CLASSES = num_classes
    m.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = True
    m.ROI_MASK_HEAD.NAME = "LabelpropMaskHead"
    m.ROI_MASK_HEAD.POOLER_TYPE = ""      # the PointRend head samples image features itself
    m.ROI_MASK_HEAD.FC_DIM = 1024
    m.ROI_MASK_HEAD.NUM_FC = 2
    m.ROI_MASK_HEAD.OUTPUT_SIDE_RESOLUTION = 7
    m.ROI_MASK_HEAD.IN_FEATURES = ["p2"]
    m.ROI_MASK_HEAD.POINT_HEAD_ON = True
    m.POINT_HEAD.FC_DIM = 256
    m.POINT_HEAD.NUM_FC = 3
    m.POINT_HEAD.IN_FEATURES = ["p2"]
    m.POINT_HEAD.NUM_CLASSES = num_classes
    cfg.INPUT.MASK_FORMAT = "bitmask"     # PointRend needs bitmasks, not polygons


def _small(cfg: CN) -> None:
    """Light settings for ~128 px images on CPU (tests, demo, a first try)."""
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 256
    m = cfg.MODEL
    m.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    m.RPN.PRE_NMS_TOPK_TRAIN = 300
    m.RPN.POST_NMS_TOPK_TRAIN = 100
    m.RPN.PRE_NMS_TOPK_TEST = 300
    m.RPN.POST_NMS_TOPK_TEST = 100
    m.RPN.BATCH_SIZE_PER_IMAGE = 128
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    m.POINT_HEAD.TRAIN_NUM_POINTS = 7 * 7
    m.POINT_HEAD.SUBDIVISION_STEPS = 3    # 28 -> 56 px masks: enough for small objects
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 20
    cfg.SOLVER.MAX_ITER = 300
    cfg.SOLVER.STEPS = (200, 260)
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.LABELPROP.MIN_BOX_AREA = 100.0
    cfg.LABELPROP.LOG_PERIOD = 1


def _tiny(cfg: CN) -> None:
    """The same model family, light enough to train from random weights on two CPU cores
    in minutes: PointRend Mask R-CNN with the mask-IoU head on a ResNet-18 FPN, narrow
    heads, AdamW with a cosine schedule, ~128 px images."""
    _small(cfg)
    m = cfg.MODEL
    m.RESNETS.DEPTH = 18
    m.RESNETS.RES2_OUT_CHANNELS = 64        # required by detectron2 for R18/R34
    m.FPN.OUT_CHANNELS = 128
    m.ROI_BOX_HEAD.FC_DIM = 256
    m.ROI_MASK_HEAD.CONV_DIM = 128
    m.ROI_MASK_HEAD.FC_DIM = 256
    m.POINT_HEAD.FC_DIM = 128
    m.ROI_MASKIOU_HEAD.CONV_DIM = 64        # its four convs at 14x14 dominated the time at 128
    m.ROI_MASKIOU_HEAD.FC_DIM = 256
    cfg.SOLVER.OPTIMIZER = "AdamW"
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WEIGHT_DECAY = 0.0001
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.WARMUP_ITERS = 30
    cfg.SOLVER.MAX_ITER = 400
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.IMS_PER_BATCH = 4


def get_labelprop_cfg(num_classes: int, *, preset: str = "default", norm: str = "GN",
                      device: str = "cpu") -> CN:
    """The full model config, built in code: PointRend R50-FPN with labelprop's heads."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_labelprop_config(cfg)
    _r50_fpn(cfg)
    _pointrend(cfg, num_classes)
    m = cfg.MODEL
    m.WEIGHTS = ""
    m.RESNETS.NORM = norm
    m.FPN.NORM = "" if norm == "FrozenBN" else norm
    m.BACKBONE.FREEZE_AT = 2 if norm == "FrozenBN" else 0
    m.DEVICE = device
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.SEED = 0
    if preset == "small":
        _small(cfg)
    elif preset == "tiny":
        _tiny(cfg)
    return cfg


def _parse_value(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: CN, items: list[str]) -> None:
    """Apply ``KEY=VALUE`` strings (e.g. ``SOLVER.BASE_LR=0.005``); raise ValueError on a
    malformed item or an unknown key."""
    flat: list = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. SOLVER.BASE_LR=0.005")
        key, value = item.split("=", 1)
        key = key.strip()
        node = cfg
        for part in key.split(".")[:-1]:
            if not isinstance(node, CN) or part not in node:
                raise ValueError(f"--set {key}: no such config key")
            node = node[part]
        if not isinstance(node, CN) or key.split(".")[-1] not in node:
            raise ValueError(f"--set {key}: no such config key")
        flat += [key, value.strip()]
    try:
        cfg.merge_from_list(flat)
    except Exception as exc:  # yacs raises ValueError/AssertionError/KeyError with details
        raise ValueError(f"--set: {str(exc).splitlines()[0]}") from None


def load_cfg(path: str) -> CN:
    """Read a ``config.yaml`` written by `labelprop train`."""
    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_labelprop_config(cfg)
    cfg.set_new_allowed(False)
    cfg.merge_from_file(path)
    return cfg
