"""Evaluation: HPatches loading, keypoint matching and mean matching accuracy."""
