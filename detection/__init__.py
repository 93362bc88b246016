"""Detection: PointRend + mask-IoU head, mask-attention features (to come)."""
