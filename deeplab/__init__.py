"""deeplab: the DeepLab family of semantic segmentation models in PyTorch.

Public API::

    import deeplab
    deeplab.list_models()
    model = deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=11)
    seg = deeplab.Segmenter.from_pretrained("deeplabv3_mnv2_pascal_quant")

The names are imported on first use, so ``import deeplab`` (and ``deeplab --help``)
does not load torch.
"""

import importlib

__version__ = "0.2.0"

_API = {
    "create_model": "deeplab.hub",
    "list_models": "deeplab.models",
    "Segmenter": "deeplab.inference",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'deeplab' has no attribute {name!r}")


__all__ = ["Segmenter", "create_model", "list_models", "__version__"]
