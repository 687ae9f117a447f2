"""Datasets, joint transforms, label maps and palettes, labelme conversion, checks."""
