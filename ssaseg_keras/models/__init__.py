"""Segmentation models: backbones, decode heads and the segmentor that joins them to a classifier."""
