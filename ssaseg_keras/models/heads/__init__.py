"""Decode heads: they return the features F that a classifier (plain or SSA) turns into logits."""
