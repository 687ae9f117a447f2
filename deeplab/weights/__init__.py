"""Pretrained weights: the model zoo, download + cache, and readers that turn published
files into state_dicts. Nothing here builds a model; ``deeplab.hub`` does, then loads.

``zoo`` names the published files; ``download`` finds, fetches and verifies them;
``tflite_import`` reads Google's DeepLab TFLite models; ``backbones`` translates ImageNet
weights in torchvision's key layouts into our backbones' names.
"""

from deeplab.weights.backbones import (
    LoadReport,
    load_backbone_state_dict,
    load_backbone_weights,
    read_state_dict,
)
from deeplab.weights.download import (
    WeightsError,
    cache_dir,
    fetch,
    find_local,
    sha256_of,
    weights_dirs,
)
from deeplab.weights.zoo import (
    ZooEntry,
    default_entry,
    default_entry_for,
    entry_path,
    get_entry,
    list_entries,
)

__all__ = [
    "LoadReport",
    "WeightsError",
    "ZooEntry",
    "cache_dir",
    "default_entry",
    "default_entry_for",
    "entry_path",
    "fetch",
    "find_local",
    "get_entry",
    "list_entries",
    "load_backbone_state_dict",
    "load_backbone_weights",
    "read_state_dict",
    "sha256_of",
    "weights_dirs",
]
