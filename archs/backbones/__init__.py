"""Backbones (encoders) shared by the segmentation heads."""
