"""deeplab: the DeepLab family of semantic segmentation models in PyTorch.

Public API::

    import deeplab
    deeplab.list_models()
    model = deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=11)
    seg = deeplab.Segmenter.from_pretrained("deeplabv3_mnv2_pascal")
"""

from deeplab.models import create_model, list_models

__version__ = "0.1.0"


def __getattr__(name: str):
    # Segmenter pulls in inference, weights and viz; import it only when asked.
    if name == "Segmenter":
        from deeplab.inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'deeplab' has no attribute {name!r}")


__all__ = ["Segmenter", "create_model", "list_models", "__version__"]
