"""Pretrained weights: the model zoo, download + cache, and importers.

    from deeplab.weights import get_entry, list_entries, default_entry
    entry = default_entry()                       # the default PASCAL VOC model
    model = deeplab.create_model(entry.arch, pretrained=entry.name)

``tflite_import`` converts Google's DeepLab TFLite models; ``backbones`` loads
ImageNet weights in torchvision's key layout into our backbones.
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
from deeplab.weights.pretrained import create_pretrained, entry_path, load_matching
from deeplab.weights.zoo import ZooEntry, default_entry, default_entry_for, get_entry, list_entries

__all__ = [
    "LoadReport",
    "WeightsError",
    "ZooEntry",
    "cache_dir",
    "create_pretrained",
    "default_entry",
    "default_entry_for",
    "entry_path",
    "fetch",
    "find_local",
    "get_entry",
    "list_entries",
    "load_backbone_state_dict",
    "load_backbone_weights",
    "load_matching",
    "read_state_dict",
    "sha256_of",
    "weights_dirs",
]
