"""Detection: PointRend Mask R-CNN (detectron2) with a mask-IoU head and mask-attention features.

The package is a detectron2 project (``config``, ``modeling``) plus training
(``train``), inference (``infer``), synthetic data (``shapes``, numpy + Pillow only) and
its commands (``cli``).  Its only contract with the orchestrator is files: COCO results
with RLE + ``features.npy`` out, COCO instances in.  Importing this package imports no
torch; ``detection.modeling`` registers the heads in detectron2's registries.
"""
