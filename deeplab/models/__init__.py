"""DeepLab models: backbones, heads, decoder, composed by ``DeepLab``; the registry.

Importing the package registers every variant (``deeplab.models.deeplab``).
Pretrained weights are put into a built model by ``deeplab.hub``.
"""

from deeplab.models import deeplab as _variants  # noqa: F401  (registers the variants)
from deeplab.models.registry import build_model, get_builder, list_models, register_model

__all__ = ["build_model", "get_builder", "list_models", "register_model"]
