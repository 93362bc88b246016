"""Hierarchical clustering of mask predictions into per-class binary trees."""
