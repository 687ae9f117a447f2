"""The fully connected CRF of Krähenbühl and Koltun (NIPS 2011), as used by DeepLab v1/v2.

DeepLab-v1 (sec. 4) and v2 (sec. 3.3) refine the network's softmax with this
CRF: every pixel is connected to every other one, with the energy

    E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j)

where the unary is psi_u = -log P(x_i) from the network, mu is the Potts
compatibility [x_i != x_j] (NIPS 2011, sec. 2) and k is a sum of two Gaussian
kernels: an "appearance" (bilateral) kernel on position and colour, and a
"smoothness" kernel on position only (NIPS 2011, eq. 3).

Inference is mean field (NIPS 2011, sec. 3, algorithm 1): each iteration
filters the current marginals Q with both kernels, which is a high-dimensional
Gaussian filter. The permutohedral lattice (Adams, Baek and Davis,
Eurographics 2010) does that filtering in time linear in the number of pixels:
splat each pixel onto the d+1 vertices of its enclosing simplex, blur along the
d+1 lattice axes with a [1/2, 1, 1/2] kernel, slice back (NIPS 2011, sec. 4).

The lattice follows the conventions of the authors' released code (densecrf,
wrapped by pydensecrf) so that results agree label for label: features are
position/sxy and colour/srgb, the kernel includes the pixel itself, kernels are
normalised symmetrically (D^-1/2 K D^-1/2 with D = K 1; Krähenbühl and Koltun,
ICML 2013), and the Potts weight ``compat`` scales the filtered marginals.
Two implementations give the same labels: ``lattice.py`` in torch (any device, a GPU
too) and ``compiled.py``, the released code's hash-table loops compiled with numba (the
CPU path when numba is installed, about 2x pydensecrf on 2 cores). Each lattice is
built once per image and reused across iterations.
"""


from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from deeplab.crf import compiled as _compiled
from deeplab.crf import lattice as _lattice
from deeplab.crf.lattice import PermutohedralLattice, unary_from_probs

__all__ = ["PermutohedralLattice", "check_options", "clear_cache", "dense_crf", "prepare",
           "unary_from_probs"]


def prepare() -> None:
    """Start loading the compiled CRF in the background (``compiled.prepare``)."""
    _compiled.prepare()


def clear_cache() -> None:
    """Forget the position lattices kept per image size (to time a first image)."""
    _lattice._position_kernel.cache_clear()
    _compiled._hash_position_kernel.cache_clear()


def _check_inputs(image: Any, probs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.require(image, requirements=["C", "W"]))
    if isinstance(probs, np.ndarray):
        probs = torch.from_numpy(np.require(probs, requirements=["C", "W"]))
    if not isinstance(image, torch.Tensor) or not isinstance(probs, torch.Tensor):
        raise TypeError("dense_crf takes NumPy arrays or torch tensors for image and probs")
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be uint8 HxWx3 RGB, got {image.dtype} of shape {tuple(image.shape)}; "
            "pass the original photo (e.g. np.asarray(PIL.Image.open(path).convert('RGB'))), "
            "not the normalised network input"
        )
    if not probs.is_floating_point() or probs.dim() != 3:
        raise ValueError(
            f"probs must be float CxHxW softmax probabilities, got {probs.dtype} of shape "
            f"{tuple(probs.shape)}"
        )
    if tuple(probs.shape[1:]) != tuple(image.shape[:2]):
        raise ValueError(
            f"probs are {probs.shape[1]}x{probs.shape[2]} but the image is "
            f"{image.shape[0]}x{image.shape[1]}; resize the probabilities to the image size"
        )
    probs = probs.float()
    sums = probs.sum(0)  # a NaN or infinity anywhere shows in its pixel's sum
    if not bool(torch.isfinite(sums).all()) or float(probs.min()) < 0.0:
        raise ValueError("probs must be finite and >= 0; pass softmax(logits), not logits")
    if float((sums - 1.0).abs().max()) > 1e-2:
        raise ValueError(
            f"probs must sum to 1 over the class axis (axis 0), sums range from "
            f"{float(sums.min()):.3f} to {float(sums.max()):.3f}; pass softmax(logits, dim=0)"
        )
    return image.to(probs.device), probs




@torch.no_grad()
def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    *,
    iterations: int = 5,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
) -> np.ndarray | torch.Tensor:
    """Uint8 HxWx3 image + float CxHxW softmax -> refined CxHxW probabilities.

    Returns the same kind as ``probs`` (NumPy float32, or a torch tensor on
    probs' device). Defaults are the common ones (pydensecrf's examples):
    smoothness w2=3, theta_g=3; appearance w1=10, theta_a=80, theta_b=13.
    """
    as_numpy = isinstance(probs, np.ndarray)
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a whole number >= 0, got {iterations}")
    for name, value in (
        ("gaussian_sxy", gaussian_sxy),
        ("bilateral_sxy", bilateral_sxy),
        ("bilateral_srgb", bilateral_srgb),
    ):
        if value <= 0:
            raise ValueError(f"{name} is a standard deviation and must be > 0, got {value}")
    image, probs = _check_inputs(image, probs)
    kernels = dict(iterations=int(iterations), gaussian_sxy=gaussian_sxy,
                   gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                   bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat)  # fmt: skip
    nb = _compiled.compiled() if probs.device.type == "cpu" else None
    if nb is not None:  # the released code's loops, compiled: faster on a CPU
        out = _compiled.mean_field(image, probs, nb=nb, **kernels)
        return out if as_numpy else torch.from_numpy(out)
    out = _lattice.mean_field(image, probs, **kernels)
    return out.cpu().numpy() if as_numpy else out


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if every key is a parameter of ``dense_crf``, else a ``ValueError`` listing
    them (``--crf-option``)."""
    known = [k for k, v in inspect.signature(dense_crf).parameters.items()
             if v.kind is inspect.Parameter.KEYWORD_ONLY]  # fmt: skip
    for key in options:
        if key not in known:
            raise ValueError(f"--crf-option {key!r} is not a CRF parameter; use one of: "
                             + ", ".join(known))  # fmt: skip
    return options

