"""DeepLab models: backbones, heads, decoder, composed by ``DeepLab``."""

from deeplab.models.registry import create_model, get_builder, list_models, register_model

__all__ = ["create_model", "get_builder", "list_models", "register_model"]
