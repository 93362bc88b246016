"""PointRend Mask R-CNN with a mask-IoU head and the mask-attention feature.

Registered in detectron2's registries (importing this module registers them):

* ``LabelpropMaskHead`` (``ROI_MASK_HEAD_REGISTRY``): PointRend's mask head.  In training
  it also leaves each foreground proposal's predicted mask (the point head evaluated on a
  regular grid, without gradient) in ``instances.pred_mask_probs`` for the mask-IoU head.
* ``MaskIoUHead`` (``ROI_MASKIOU_HEAD_REGISTRY``): Mask Scoring R-CNN's head.  RoI features
  concatenated with the max-pooled predicted mask, four 3x3 convs, two FCs, one IoU per
  class; trained to regress the IoU of the predicted mask with its ground truth.
* ``LabelpropROIHeads`` (``ROI_HEADS_REGISTRY``): PointRend's RoI heads plus the mask-IoU
  head.  At inference each instance gets ``class_scores`` (box-head confidence),
  ``pred_maskiou``, ``scores`` = class confidence x predicted IoU (the paper's mask score s)
  and ``pred_features``: the paper's "mask attention" vector (RoI features weighted by the
  predicted mask probabilities, averaged, projected by a fixed random matrix).
"""
from __future__ import annotations

from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat, get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY, ROI_MASK_HEAD_REGISTRY, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.projects.point_rend.mask_head import PointRendMaskHead
from detectron2.projects.point_rend.point_features import generate_regular_grid_point_coords
from detectron2.projects.point_rend.roi_heads import PointRendROIHeads
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

__all__ = ["ROI_MASKIOU_HEAD_REGISTRY", "build_maskiou_head", "MaskIoUHead", "LabelpropMaskHead",
           "LabelpropROIHeads", "maskiou_targets", "maskiou_loss", "mask_attention",
           "random_projection"]

ROI_MASKIOU_HEAD_REGISTRY = Registry("ROI_MASKIOU_HEAD")
ROI_MASKIOU_HEAD_REGISTRY.__doc__ = """Registry for mask-IoU heads: (RoI features, mask) -> IoU per class."""


def build_maskiou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    return ROI_MASKIOU_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASKIOU_HEAD.NAME)(cfg, input_shape)


@ROI_MASKIOU_HEAD_REGISTRY.register()
class MaskIoUHead(nn.Module):
    """Mask Scoring R-CNN's MaskIoU head: predicts, per class, the IoU of a predicted mask."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: List[int],
                 fc_dims: List[int], conv_norm: str = ""):
        """
        Args:
            input_shape: the RoI features (channels, side x side); the mask adds one channel.
            num_classes: number of foreground classes (one IoU each).
            conv_dims: output channels of the 3x3 convs; the last one has stride 2.
            fc_dims: output sizes of the fully connected layers.
            conv_norm: normalisation of the convs ("" for none, as in the paper).
        """
        super().__init__()
        channels, side = input_shape.channels + 1, input_shape.height
        self.convs = []
        for k, dim in enumerate(conv_dims):
            stride = 2 if k == len(conv_dims) - 1 else 1
            conv = Conv2d(channels, dim, kernel_size=3, stride=stride, padding=1,
                          bias=not conv_norm, norm=get_norm(conv_norm, dim), activation=F.relu)
            self.add_module(f"conv{k + 1}", conv)
            self.convs.append(conv)
            channels = dim
            side = (side + 2 - 3) // stride + 1
        self.fcs = []
        width = channels * side * side
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(width, dim)
            self.add_module(f"fc{k + 1}", fc)
            self.fcs.append(fc)
            width = dim
        self.predictor = nn.Linear(width, num_classes)
        for layer in self.convs:
            weight_init.c2_msra_fill(layer)
        for layer in self.fcs:
            weight_init.c2_xavier_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        h = cfg.MODEL.ROI_MASKIOU_HEAD
        return {"input_shape": input_shape, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                "conv_dims": [h.CONV_DIM] * h.NUM_CONV, "fc_dims": [h.FC_DIM] * h.NUM_FC,
                "conv_norm": h.NORM}

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) RoI features and (R, 1, S, S) mask probabilities -> (R, num_classes)."""
        x = torch.cat([features, mask.to(features.dtype)], dim=1)
        for layer in self.convs:
            x = layer(x)
        x = torch.flatten(x, start_dim=1)
        for layer in self.fcs:
            x = F.relu(layer(x))
        return self.predictor(x)


@ROI_MASK_HEAD_REGISTRY.register()
class LabelpropMaskHead(PointRendMaskHead):
    """PointRend's mask head; in training it also predicts, without gradient, each
    proposal's mask on a regular ``2 * ROI_MASKIOU_HEAD.POOLER_RESOLUTION`` grid (coarse
    head + point head, as inference's first step) and stores its probabilities for the
    ground-truth class in ``instances.pred_mask_probs``."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__(cfg, input_shape)
        self.maskiou_grid = 2 * cfg.MODEL.ROI_MASKIOU_HEAD.POOLER_RESOLUTION

    def forward(self, features, instances):
        losses_or_instances = super().forward(features, instances)
        if self.training:
            with torch.no_grad():
                probs = self._grid_mask_probs(features, instances)
            for inst, p in zip(instances, probs.split([len(i) for i in instances])):
                inst.pred_mask_probs = p
        return losses_or_instances

    def _grid_mask_probs(self, features, instances: List[Instances]) -> torch.Tensor:
        boxes = [x.proposal_boxes for x in instances]
        classes = cat([x.gt_classes for x in instances])
        n, side = len(classes), self.maskiou_grid
        coarse = self.coarse_head(self._roi_pooler(features, boxes))
        if self.mask_point_on:
            coords = generate_regular_grid_point_coords(n, side, coarse.device)
            logits = self._get_point_logits(self._point_pooler(features, boxes, coords), coords,
                                            coarse).reshape(n, -1, side, side)
        else:
            logits = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        if logits.shape[1] > 1:
            logits = logits[torch.arange(n, device=logits.device), classes]
        else:
            logits = logits[:, 0]
        return logits.sigmoid().unsqueeze(1)


def maskiou_targets(mask_probs: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
    """IoU of each binarised predicted mask (in its proposal box) with its ground truth.

    As in Mask Scoring R-CNN, the ground truth's full area counts, also the part outside the
    proposal box: its pixel area is converted to the RoI grid's units.
    """
    side = mask_probs.shape[-1]
    pred = mask_probs[:, 0] > 0.5
    gts, full = [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        boxes = inst.proposal_boxes.tensor
        gts.append(inst.gt_masks.crop_and_resize(boxes, side).to(pred.device))
        gt_pixels = inst.gt_masks.tensor.flatten(1).sum(1).to(torch.float32)
        box_area = inst.proposal_boxes.area().clamp(min=1.0)
        full.append(gt_pixels * (side * side) / box_area)
    gt = cat(gts, dim=0) > 0.5
    inter = (pred & gt).flatten(1).sum(1).to(torch.float32)
    pred_area = pred.flatten(1).sum(1).to(torch.float32)
    gt_area = torch.maximum(cat(full).to(pred.device), gt.flatten(1).sum(1).to(torch.float32))
    union = (pred_area + gt_area - inter).clamp(min=1.0)
    return (inter / union).clamp(0.0, 1.0)


def maskiou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """``l2``: mean squared error (Mask Scoring R-CNN).  ``relaxed``: the relaxed IoU loss
    of Li et al. (CVPR 2018) between the predicted and the true IoUs,
    ``1 - sum(min(p, t)) / sum(max(p, t))``."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    if kind == "l2":
        return F.mse_loss(pred, target, reduction="mean")
    if kind == "relaxed":
        num = torch.minimum(pred, target).sum()
        den = torch.maximum(pred, target).sum().clamp(min=1e-6)
        return 1.0 - num / den
    raise ValueError(f"MODEL.ROI_MASKIOU_HEAD.LOSS must be 'l2' or 'relaxed', got {kind!r}")


def random_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian projection (in_dim, out_dim), scaled by 1/sqrt(out_dim)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(in_dim, out_dim, generator=g) / float(out_dim) ** 0.5


def mask_attention(roi_features: torch.Tensor, mask_probs: torch.Tensor,
                   projection: torch.Tensor) -> torch.Tensor:
    """The paper's mask-attention feature: RoI features weighted by the predicted mask
    probabilities (area-resampled to the RoI grid), averaged over the mask, projected."""
    w = F.adaptive_avg_pool2d(mask_probs.to(roi_features.dtype), roi_features.shape[-2:])
    pooled = (roi_features * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp(min=1e-6)
    return pooled.float() @ projection


@ROI_HEADS_REGISTRY.register()
class LabelpropROIHeads(PointRendROIHeads):
    """PointRend's RoI heads plus the mask-IoU head and the mask-attention feature."""

    @configurable
    def __init__(self, *, maskiou_in_features: List[str], maskiou_pooler: ROIPooler,
                 maskiou_head: nn.Module, maskiou_loss: str = "l2",
                 maskiou_loss_weight: float = 1.0, feature_dim: int = 64,
                 projection_seed: int = 0, **kwargs):
        """
        Args:
            maskiou_in_features: feature maps pooled for the mask-IoU head and the feature.
            maskiou_pooler: RoI pooler for them.
            maskiou_head: a :class:`MaskIoUHead`.
            maskiou_loss: "l2" or "relaxed" (see :func:`maskiou_loss`).
            maskiou_loss_weight: weight of that loss.
            feature_dim, projection_seed: size and seed of the mask-attention projection.
            kwargs: everything :class:`StandardROIHeads` takes.
        """
        super().__init__(**kwargs)
        self.maskiou_in_features = maskiou_in_features
        self.maskiou_pooler = maskiou_pooler
        self.maskiou_head = maskiou_head
        self.maskiou_loss = maskiou_loss
        self.maskiou_loss_weight = maskiou_loss_weight
        self.maskiou_side = maskiou_pooler.output_size[0]
        channels = maskiou_head.convs[0].in_channels - 1
        self.register_buffer("feature_projection",
                             random_projection(channels, feature_dim, projection_seed))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        h = cfg.MODEL.ROI_MASKIOU_HEAD
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        side = h.POOLER_RESOLUTION
        channels = {input_shape[f].channels for f in in_features}
        assert len(channels) == 1, channels
        ret.update({
            "maskiou_in_features": in_features,
            "maskiou_pooler": ROIPooler(output_size=side,
                                        scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                                        sampling_ratio=h.POOLER_SAMPLING_RATIO,
                                        pooler_type=h.POOLER_TYPE),
            "maskiou_head": build_maskiou_head(cfg, ShapeSpec(channels=channels.pop(),
                                                              height=side, width=side)),
            "maskiou_loss": h.LOSS,
            "maskiou_loss_weight": h.LOSS_WEIGHT,
            "feature_dim": cfg.MODEL.LABELPROP.FEATURE_DIM,
            "projection_seed": cfg.MODEL.LABELPROP.PROJECTION_SEED,
        })
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        # PointRendROIHeads' version only upgrades old configs (and insists on its own head
        # names); the mask head here is LabelpropMaskHead, a PointRendMaskHead.
        return StandardROIHeads._init_mask_head.__func__(cls, cfg, input_shape)

    def _maskiou_input(self, mask_probs: torch.Tensor) -> torch.Tensor:
        """Predicted mask probabilities sampled on the 2S x 2S grid, max-pooled to S x S."""
        grid = 2 * self.maskiou_side
        if mask_probs.shape[-1] != grid or mask_probs.shape[-2] != grid:
            mask_probs = F.interpolate(mask_probs, size=(grid, grid), mode="bilinear",
                                       align_corners=False)
        return F.max_pool2d(mask_probs, kernel_size=2, stride=2)

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        head_features = {f: features[f] for f in self.mask_in_features}
        out = self.mask_head(head_features, instances)
        if self.training:
            out.update(self._forward_maskiou_train(features, instances))
            return out
        return self._forward_maskiou_inference(features, out)

    def _forward_maskiou_train(self, features, instances: List[Instances]):
        boxes = [x.proposal_boxes for x in instances]
        if sum(len(b) for b in boxes) == 0:
            zero = sum(p.sum() for p in self.maskiou_head.parameters()) * 0.0
            return {"loss_maskiou": zero}
        roi = self.maskiou_pooler([features[f] for f in self.maskiou_in_features], boxes)
        probs = cat([x.pred_mask_probs for x in instances])
        pred = self.maskiou_head(roi, self._maskiou_input(probs))
        classes = cat([x.gt_classes for x in instances])
        pred = pred[torch.arange(len(classes), device=pred.device), classes]
        target = maskiou_targets(probs, instances)
        return {"loss_maskiou": self.maskiou_loss_weight * maskiou_loss(pred, target,
                                                                        self.maskiou_loss)}

    def _forward_maskiou_inference(self, features, instances: List[Instances]):
        counts = [len(x) for x in instances]
        n = sum(counts)
        dim = self.feature_projection.shape[1]
        if n == 0:
            for x in instances:
                x.class_scores = x.scores
                x.pred_maskiou = x.scores.new_zeros((0,))
                x.pred_features = x.scores.new_zeros((0, dim))
            return instances
        boxes = [x.pred_boxes for x in instances]
        roi = self.maskiou_pooler([features[f] for f in self.maskiou_in_features], boxes)
        probs = cat([x.pred_masks for x in instances])            # (R, 1, M, M) in [0, 1]
        classes = cat([x.pred_classes for x in instances])
        iou = self.maskiou_head(roi, self._maskiou_input(probs))
        iou = iou[torch.arange(n, device=iou.device), classes].float().clamp(0.0, 1.0)
        feats = mask_attention(roi, probs, self.feature_projection)
        for x, i, f in zip(instances, iou.split(counts), feats.split(counts)):
            x.class_scores = x.scores
            x.pred_maskiou = i
            x.scores = x.scores * i
            x.pred_features = f
        return instances
