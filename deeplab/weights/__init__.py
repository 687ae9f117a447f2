"""Pretrained weights: the model zoo, download + cache, and readers that turn published
files into state_dicts. Nothing here builds a model; ``deeplab.hub`` does, then loads.

``zoo`` names the published files; ``download`` finds, fetches and verifies them;
``tflite_import`` reads Google's DeepLab TFLite models; ``backbones`` translates ImageNet
weights in torchvision's key layouts into our backbones' names.

Each name is imported from its module on first use: the zoo and the cache need no torch,
so a ``deeplab predict`` served from its cache starts without importing it.
"""

import importlib

_HOMES = {
    "LoadReport": "backbones", "load_backbone_state_dict": "backbones",
    "load_backbone_weights": "backbones", "read_state_dict": "backbones",
    "WeightsError": "download", "cache_dir": "download", "fetch": "download",
    "find_local": "download", "sha256_of": "download", "weights_dirs": "download",
    "ZooEntry": "zoo", "default_entry": "zoo", "default_entry_for": "zoo",
    "entry_path": "zoo", "get_entry": "zoo", "list_entries": "zoo",
}  # fmt: skip


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"deeplab.weights.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'deeplab.weights' has no attribute {name!r}")


__all__ = sorted(_HOMES)
