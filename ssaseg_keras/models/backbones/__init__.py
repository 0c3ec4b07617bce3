"""Backbones returning a 4-level feature pyramid (NHWC)."""
