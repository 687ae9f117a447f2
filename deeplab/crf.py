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
Everything is vectorised torch, so it also runs on a GPU; each lattice is built
once per image and reused across iterations.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deeplab.extras import available, install_command

log = logging.getLogger(__name__)

__all__ = ["PermutohedralLattice", "check_options", "clear_cache", "dense_crf", "unary_from_probs"]


class PermutohedralLattice:
    """Gaussian filter over points in R^d: ``filter(values [N,C]) -> [N,C]``.

    ``features`` [N,d] float are the point positions already divided by the
    kernel's standard deviations, so the filter approximates
    ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) values_j`` (j = i included).
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"features must be [N, d], got shape {tuple(features.shape)}")
        f = features.float()
        n, d = f.shape
        dev = f.device
        self.num_points, self.dim = n, d

        # Elevate onto the hyperplane sum(x) = 0 of R^{d+1}: y = E f with E scaled
        # so that the blur has the expected standard deviation (Adams et al. 2010, p. 5-6).
        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        i = torch.arange(d, device=dev, dtype=torch.float32)
        scale = inv_std / torch.sqrt((i + 1) * (i + 2))
        cf = f * scale  # [N, d]
        # suffix[j] = sum_{k >= j} cf_k, with suffix[d] = 0
        suffix = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(n, 1)], dim=1)
        elevated = suffix.clone()
        elevated[:, 1:] -= torch.arange(1, d + 1, device=dev, dtype=torch.float32) * cf

        # Closest remainder-0 point: round each coordinate to a multiple of d+1.
        quotient = torch.round(elevated * (1.0 / (d + 1)))
        total = quotient.sum(1, keepdim=True).long()  # != 0 when off the hyperplane
        diff = elevated - quotient * (d + 1)

        # rank[i] = position of coordinate i when the residuals are sorted in
        # decreasing order (ties: the lower index first), then pushed back onto the
        # plane by the residual sum (Adams et al. 2010, p. 10).
        # One comparison per pair of coordinates i < j: j comes first only if strictly
        # larger. Byte counters over contiguous columns: 3x faster than a row sort.
        columns = diff.t().contiguous()
        counts = torch.zeros(d + 1, n, dtype=torch.uint8, device=dev)
        for i in range(d + 1):
            for j in range(i + 1, d + 1):
                j_first = (columns[j] > columns[i]).view(torch.uint8)
                counts[i] += j_first
                counts[j] += 1 - j_first
        rank = counts.t().long()
        rank += total
        wrap = (rank < 0).long() - (rank > d).long()
        rank += (d + 1) * wrap
        quotient += wrap
        diff -= (d + 1) * wrap

        # Barycentric coordinates of the point within its simplex.
        v = diff * (1.0 / (d + 1))
        bary = torch.zeros(n, d + 2, device=dev, dtype=torch.float32)
        bary.scatter_add_(1, d - rank, v)
        bary.scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1].contiguous()  # [N, d+1]

        # Vertex r of the simplex has key rem0 + canonical[r, rank] with
        # canonical[r, k] = r - (d+1) [k >= d+1-r]; only the first d coordinates
        # are kept as the last follows from sum = 0. Keys are hashed into one
        # int64 (mixed radix); the margin keeps every blur neighbour in range.
        q = quotient[:, :d].long()
        lo = (d + 1) * int(q.min()) - 2 * (d + 1)
        span = (d + 1) * int(q.max()) + 2 * (d + 1) - lo + 1
        if span**d >= 2**62:
            raise ValueError(
                "the CRF features span too many lattice cells; increase sxy/srgb or "
                "downscale the image"
            )
        radix = torch.tensor([span**k for k in range(d)], device=dev, dtype=torch.int64)
        base = (((d + 1) * q - lo) * radix).sum(1)
        # Points in the same simplex share its d+1 vertices. Sorting one key per point
        # (base vertex, rank) finds the distinct simplices, so only their vertices need
        # the costlier sort below (at 480x360, 10k vertices for 1M simplex corners).
        ranks_radix = (d + 1) ** (d + 1)
        if span**d * ranks_radix < 2**62:
            powers = (d + 1) ** torch.arange(d + 1, device=dev)
            key = base * ranks_radix + (rank * powers).sum(1)
            order = _argsort(key)
            sorted_key = key[order]
            first = torch.ones_like(sorted_key, dtype=torch.bool)
            first[1:] = sorted_key[1:] != sorted_key[:-1]
            simplex = torch.empty_like(order)
            simplex[order] = first.cumsum(0) - 1
            corner = order[first]  # one point per simplex
        else:
            simplex = corner = torch.arange(n, device=dev)
        s, s_rank = corner.numel(), rank[corner]
        # at_least[:, k] = sum of radix_i over coordinates i < d with rank_i >= k
        per_rank = torch.zeros(s, d + 2, dtype=torch.int64, device=dev)
        per_rank.scatter_add_(1, s_rank[:, :d], radix.expand(s, d))
        at_least = per_rank.flip(1).cumsum(1).flip(1)
        r = torch.arange(d + 1, device=dev)
        codes = base[corner, None] + r * int(radix.sum()) - (d + 1) * at_least[:, 1:].flip(1)
        # One sort of the simplices' vertex keys gives the distinct vertices (the hash
        # table of the released code), numbered in increasing key order.
        order = _argsort(codes.reshape(-1))
        sorted_codes = codes.reshape(-1)[order]
        first = torch.ones_like(sorted_codes, dtype=torch.bool)
        first[1:] = sorted_codes[1:] != sorted_codes[:-1]
        vertices = sorted_codes[first]
        self.num_vertices = m = vertices.numel()
        simplex_vertex = torch.empty_like(order)
        simplex_vertex[order] = first.cumsum(0) - 1
        vertex = simplex_vertex.view(s, d + 1)[simplex]
        self.vertex = vertex  # [N, d+1] the lattice vertex of each simplex corner
        # The splat matrix's rows: entries of vertex/weights (flattened) sorted by vertex.
        self.splat_order = _argsort_below(vertex.reshape(-1), m)
        counts = torch.bincount(vertex.reshape(-1), minlength=m)
        self.splat_pointers = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        # The "magic" slice factor of the released code: normalises the blur's gain.
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

        # Blur along each of the d+1 lattice axes with [1/2, 1, 1/2]: the
        # neighbours' keys move by -1 in every coordinate except +d in coordinate
        # j (and the opposite for the other neighbour). Kept as [d+1, M, 3]
        # columns and weights of a sparse matrix with 3 entries a row; a missing
        # neighbour becomes a zero weight on the diagonal, which keeps each row's
        # columns in increasing order (vertices are sorted by code).
        ids = torch.arange(m, device=dev)
        columns, values = [], []
        for j in range(d + 1):
            step = (d + 1) * int(radix[j]) if j < d else 0
            step = abs(step - int(radix.sum()))
            cols, vals = [], []
            for code in (vertices - step, vertices + step):
                pos = torch.searchsorted(vertices, code).clamp(max=m - 1)
                found = vertices[pos] == code
                cols.append(torch.where(found, pos, ids))
                vals.append(found.float() * 0.5)
            columns.append(torch.stack([cols[0], ids, cols[1]], 1))
            values.append(torch.stack([vals[0], torch.ones_like(vals[0]), vals[1]], 1))
        self.blur_columns = torch.stack(columns)  # [d+1, M, 3]
        self.blur_values = torch.stack(values)
        self._filter: _StackedFilter | None = None

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """[N, C] -> [N, C]: splat, blur along every axis, slice."""
        if self._filter is None:
            self._filter = _StackedFilter([self])
        return self._filter(values)


def _argsort(x: torch.Tensor) -> torch.Tensor:
    """Argsort for finding distinct keys (ties in any order): on CPU NumPy's introsort,
    about 2x faster than its stable sort on these int64 keys and faster than torch.sort."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.numpy(), kind="quicksort"))
    return torch.argsort(x)


def _argsort_below(x: torch.Tensor, bound: int) -> torch.Tensor:
    """Stable argsort of integers in [0, bound): on CPU, NumPy's radix sort of 16-bit
    digits (a pass or two) is several times faster than sorting int64 keys."""
    if x.device.type != "cpu" or bound > 2**32:
        return torch.argsort(x, stable=True)
    values = x.numpy()
    order = np.argsort(values.astype(np.uint16), kind="stable")  # low 16 bits
    if bound > 2**16:  # least significant digit first: a stable pass on the high bits
        high = (values >> 16).astype(np.uint16)[order]
        order = order[np.argsort(high, kind="stable")]
    return torch.from_numpy(order)


def _csr(pointers, columns, values, size) -> torch.Tensor:
    # 32-bit indices when they fit: the sparse products read them every iteration, and
    # they ran about 7% faster at 480x360 than with 64-bit ones.
    if max(size) < 2**31 and values.numel() < 2**31:
        pointers, columns = pointers.int(), columns.int()
    # Invariants hold by construction; checking them would cost as much as the build.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            pointers, columns, values, size=size, check_invariants=False
        )


class _StackedFilter:
    """``values [N,C] -> sum_k post_k * K_k(pre_k * values)`` for lattices K_k on the same points.

    Splat, blur and slice are fixed sparse linear maps once a lattice is built,
    so they are precomputed as CSR matrices, and the lattices of several kernels
    are stacked into one matrix each: a filter is then one splat, d+1 blurs and
    one slice product (multi-threaded on CPU, the same code on a GPU). The
    per-point scales ``pre``/``post`` ([N] or None) fold normalisation and
    weights into the matrices.
    """

    def __init__(
        self,
        lattices: list[PermutohedralLattice],
        pre: list[torch.Tensor | None] | None = None,
        post: list[torch.Tensor | float | None] | None = None,
    ) -> None:
        pre = pre or [None] * len(lattices)
        post = post or [None] * len(lattices)
        n = lattices[0].num_points
        dev = lattices[0].weights.device
        starts = [0]
        for lat in lattices:
            starts.append(starts[-1] + lat.num_vertices)
        m = starts[-1]

        # splat [M, N]: lattice k's rows follow lattice k-1's
        pointers, columns, values = [torch.zeros(1, dtype=torch.int64, device=dev)], [], []
        nnz = 0
        for lat, scale in zip(lattices, pre, strict=True):
            point = torch.div(lat.splat_order, lat.dim + 1, rounding_mode="floor")
            weight = lat.weights.reshape(-1)[lat.splat_order]
            if scale is not None:
                weight = weight * scale.reshape(-1)[point]
            pointers.append(lat.splat_pointers[1:] + nnz)
            columns.append(point)
            values.append(weight)
            nnz += point.numel()
        self.splat = _csr(torch.cat(pointers), torch.cat(columns), torch.cat(values), (m, n))

        # blur [M, M] per axis, block-diagonal; a lattice with fewer axes is left as is
        self.blur = []
        ids = torch.arange(m, device=dev)
        for j in range(max(lat.dim + 1 for lat in lattices)):
            columns, values = [], []
            for lat, start in zip(lattices, starts, strict=False):
                if j <= lat.dim:
                    columns.append(lat.blur_columns[j] + start)
                    values.append(lat.blur_values[j])
                else:
                    own = ids[start : start + lat.num_vertices, None]
                    columns.append(own.expand(-1, 3))
                    values.append(torch.tensor([0.0, 1.0, 0.0], device=dev).expand(own.shape[0], 3))
            self.blur.append(
                _csr(
                    torch.arange(0, 3 * m + 1, 3, device=dev),
                    torch.cat(columns).reshape(-1),
                    torch.cat(values).reshape(-1),
                    (m, m),
                )
            )

        # slice [N, M]: row i holds point i's vertices in every lattice
        columns, values = [], []
        for lat, start, scale in zip(lattices, starts, post, strict=False):
            columns.append(lat.vertex + start)
            weight = lat.weights * lat.alpha
            if scale is not None:
                weight = weight * (scale.reshape(-1, 1) if torch.is_tensor(scale) else scale)
            values.append(weight)
        per_row = sum(lat.dim + 1 for lat in lattices)
        self.slice = _csr(
            torch.arange(0, n * per_row + 1, per_row, device=dev),
            torch.cat(columns, 1).reshape(-1),
            torch.cat(values, 1).reshape(-1),
            (n, m),
        )

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        lattice = self.splat @ values
        for blur in self.blur:
            lattice = blur @ lattice
        return self.slice @ lattice


def _normaliser(lattice: PermutohedralLattice) -> torch.Tensor:
    """[N, 1] = 1 / sqrt(K 1): the symmetric normalisation of the released code."""
    ones = lattice.weights.new_ones(lattice.num_points, 1)
    return 1.0 / torch.sqrt(lattice.filter(ones) + 1e-20)


@functools.lru_cache(maxsize=4)
def _position_kernel(
    h: int, w: int, sxy: float, device: str
) -> tuple[PermutohedralLattice, torch.Tensor]:
    lattice = PermutohedralLattice(_pixel_features(h, w, torch.device(device)) / sxy)
    return lattice, _normaliser(lattice)


def clear_cache() -> None:
    """Forget the position lattices kept per image size (to time a first image)."""
    _position_kernel.cache_clear()


_UNARY_CLIP = 1e-5


def unary_from_probs(probs: torch.Tensor, clip: float = _UNARY_CLIP) -> torch.Tensor:
    """Softmax probabilities -> unary energy -log(p), clipped so that log(0) stays finite."""
    return -torch.log(probs.clamp(min=clip, max=1.0))


def _pixel_features(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # [N, 2] as (x, y)


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
    c, h, w = probs.shape
    dev = probs.device

    nb = _numba() if dev.type == "cpu" else None
    if nb is not None:  # the released code's loops, compiled: faster on a CPU
        with _numba_threads():
            # Pixel-major [N, C]: the clipped probabilities (the unary is -log of them) and
            # q = softmax(-unary), their normalised copy, in one parallel pass.
            prior = np.empty((h * w, c), np.float32)
            q = np.empty((h * w, c), np.float32)
            nb["prepare"](probs.numpy().reshape(c, -1), _UNARY_CLIP, prior, q)
            q = _dense_crf_hashed(
                image.numpy(), prior, q, iterations=iterations, gaussian_sxy=gaussian_sxy,
                gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat, nb=nb,
            )  # fmt: skip
            out = nb["transpose"](q, np.empty((c, h * w), np.float32)).reshape(c, h, w)
        return out if as_numpy else torch.from_numpy(out)
    # Pixel-major [N, C] so that each lattice vertex holds a contiguous vector.
    unary = unary_from_probs(probs).reshape(c, -1).t().contiguous()
    xy = _pixel_features(h, w, dev)
    # Each kernel: its lattice, its normaliser D^-1/2 with D = K 1 (the kernel
    # used is D^-1/2 K D^-1/2, ICML 2013, the released code's default) and its
    # Potts weight.
    kernels = []
    if gaussian_compat != 0:
        # Smoothness kernel: position only (NIPS 2011, eq. 3, second term). It
        # depends on the image size alone, so it is cached across images.
        lattice, norm = _position_kernel(h, w, float(gaussian_sxy), str(dev))
        kernels.append((lattice, norm, float(gaussian_compat)))
    if bilateral_compat != 0:
        # Appearance kernel: position and colour (NIPS 2011, eq. 3, first term).
        rgb = image.reshape(-1, 3).float()
        lattice = PermutohedralLattice(torch.cat([xy / bilateral_sxy, rgb / bilateral_srgb], 1))
        kernels.append((lattice, _normaliser(lattice), float(bilateral_compat)))
    # Mean field (NIPS 2011, algorithm 1). With Potts compatibility the pairwise
    # energy of label l is -w * sum_j k(i,j) Q_j(l) up to a per-pixel constant,
    # which the softmax removes; the pixel itself is included in the sum, as in
    # the released code.
    q = torch.softmax(-unary, dim=1)
    if kernels and iterations > 0:
        # Normalisation and weights folded into one filter for both kernels.
        message = _StackedFilter(
            [lat for lat, _, _ in kernels],
            pre=[norm for _, norm, _ in kernels],
            post=[weight * norm for _, norm, weight in kernels],
        )
        for _ in range(int(iterations)):
            logits = message(q)
            logits -= unary
            q = torch.softmax(logits, dim=1)

    out = q.t().reshape(c, h, w).contiguous()
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


# --- on the CPU: the released code's hash-table lattice, compiled with numba --------------
# The torch lattice above sorts its keys and filters with sparse matrix products, which
# also run on a GPU. On the CPU the loops of the released code (densecrf) are cheaper:
# each simplex corner is hashed into a table, and splat, blur and slice are loops over
# points and vertices, fused with the mean-field update. numba compiles them (cached on
# disk after the first run); without numba the torch path runs everywhere.


def _nb_elevate(features, scale, rem0, rank, bary, chunks):  # numba, parallel over points
    n_points, d = features.shape
    d1 = d + 1
    size = (n_points + chunks - 1) // chunks
    for t in _prange(chunks):  # scratch arrays once per thread, not once per point
        elevated = np.empty(d1)
        b = np.empty(d1 + 1)
        for n in range(t * size, min(n_points, (t + 1) * size)):
            _nb_elevate_point(features, scale, rem0, rank, bary, n, elevated, b)


def _nb_elevate_point(features, scale, rem0, rank, bary, n, elevated, b):
    d = features.shape[1]
    d1 = d + 1
    # Elevate onto the plane sum(x) = 0 of R^{d+1} (Adams et al. 2010, p. 5-6).
    total = 0.0
    for j in range(d, 0, -1):
        cf = features[n, j - 1] * scale[j - 1]
        elevated[j] = total - j * cf
        total += cf
    elevated[0] = total
    # The closest remainder-0 point: each coordinate rounded to a multiple of d+1.
    shift = 0
    for j in range(d1):
        v = elevated[j] / d1
        up, down = np.ceil(v) * d1, np.floor(v) * d1
        rem0[n, j] = int(up) if up - elevated[j] < elevated[j] - down else int(down)
        shift += rem0[n, j]
    shift //= d1
    # Rank the residuals (decreasing; ties: the lower index first), then move back
    # onto the plane (p. 10).
    for j in range(d1):
        rank[n, j] = 0
    for i in range(d):
        for j in range(i + 1, d1):
            if elevated[i] - rem0[n, i] < elevated[j] - rem0[n, j]:
                rank[n, i] += 1
            else:
                rank[n, j] += 1
    for j in range(d1):
        if shift > 0 and rank[n, j] >= d1 - shift:
            rank[n, j] -= d1 - shift
            rem0[n, j] -= d1
        elif shift > 0:
            rank[n, j] += shift
        elif shift < 0 and rank[n, j] < -shift:
            rank[n, j] += d1 + shift
            rem0[n, j] += d1
        elif shift < 0:
            rank[n, j] += shift
    # Barycentric coordinates within the simplex.
    b[:] = 0.0
    for j in range(d1):
        v = (elevated[j] - rem0[n, j]) / d1
        b[d - rank[n, j]] += v
        b[d - rank[n, j] + 1] -= v
    b[0] += 1.0 + b[d1]
    for j in range(d1):
        bary[n, j] = b[j]


def _nb_hash(rem0, rank, lo, radix, offset):  # numba, serial: the hash table of densecrf
    n_points, d1 = rank.shape
    d = d1 - 1
    # (code, id) pairs side by side, grown by doubling at half full as densecrf's table: it
    # stays the size of the vertices (far fewer than points x corners), so it stays in cache.
    size = 4096
    table = np.full(2 * size, -1, np.int64)
    vertex = np.empty((n_points, d1), np.int32)
    codes = np.empty(n_points * d1, np.int64)
    count = 0
    for n in range(n_points):
        for r in range(d1):
            code = 0
            for j in range(d):  # vertex r: rem0 + canonical[r, rank] (first d coordinates)
                key = rem0[n, j] + (r if rank[n, j] <= d - r else r - d1)
                code += (key - lo) * radix[j]
            h = (code * 2654435761) & (size - 1)
            while table[2 * h] != -1 and table[2 * h] != code:
                h = (h + 1) & (size - 1)
            if table[2 * h] == -1:
                table[2 * h], table[2 * h + 1] = code, count
                codes[count] = code
                count += 1
                if 2 * count >= size:
                    size *= 2
                    table = _nb_rehash(codes, count, size)
                    h = -1
            vertex[n, r] = (table[2 * h + 1] if h >= 0 else count - 1) + offset
    # Blur neighbours along each axis j: the key moved by -1 everywhere and +(d+1) at j.
    radix_sum = 0
    for j in range(d):
        radix_sum += radix[j]
    neighbours = np.full((d1, count, 2), -1, np.int32)
    for j in range(d1):
        step = radix_sum - (d1 * radix[j] if j < d else 0)
        for v in range(count):
            for side in range(2):
                code = codes[v] - step if side == 0 else codes[v] + step
                h = (code * 2654435761) & (size - 1)
                while table[2 * h] != -1:
                    if table[2 * h] == code:
                        neighbours[j, v, side] = table[2 * h + 1] + offset
                        break
                    h = (h + 1) & (size - 1)
    return vertex, neighbours, count


def _nb_rehash(codes, count, size):
    table = np.full(2 * size, -1, np.int64)
    for i in range(count):
        h = (codes[i] * 2654435761) & (size - 1)
        while table[2 * h] != -1:
            h = (h + 1) & (size - 1)
        table[2 * h], table[2 * h + 1] = codes[i], i
    return table


def _nb_prepare(probs, clip, prior, q):
    """[C, N] probabilities -> [N, C] ``prior = clip(p)`` (the unary is ``-log(prior)``) and
    ``q = softmax(-unary)``, which is ``prior`` over its sum (numba, parallel)."""
    c, n_points = probs.shape
    for n in _prange(n_points):
        total = 0.0
        for k in range(c):
            p = min(max(probs[k, n], clip), 1.0)
            prior[n, k] = p
            q[n, k] = p
            total += p
        for k in range(c):
            q[n, k] /= total


def _nb_transpose(q, out):
    """[N, C] -> [C, N], in blocks of pixels (numba, parallel)."""
    n_points, c = q.shape
    for start in _prange((n_points + 255) // 256):
        for k in range(c):
            for n in range(start * 256, min(n_points, start * 256 + 256)):
                out[k, n] = q[n, k]
    return out


def _nb_splat_blur(q, vertex, splat, neighbours, lattice, partial):
    """Splat ``q`` [N, C] onto the lattice (``vertex`` [N, R] ids, ``splat`` [N, R] weights)
    and blur along every axis with [1/2, 1, 1/2]; returns the buffer holding the result.

    The splat walks the points in order, each thread into its own copy of the (small,
    cache-resident) lattice, so ``q`` streams from memory once (numba, parallel)."""
    n_points, c = q.shape
    n_vertices = lattice.shape[0]
    chunks = partial.shape[0]
    size = (n_points + chunks - 1) // chunks
    for t in _prange(chunks):
        part = partial[t]
        part[:] = 0.0
        for p in range(t * size, min(n_points, (t + 1) * size)):
            for r in range(vertex.shape[1]):
                v, w = vertex[p, r], splat[p, r]
                for k in range(c):
                    part[v, k] += w * q[p, k]
    for v in _prange(n_vertices):
        for k in range(c):
            total = 0.0
            for t in range(chunks):
                total += partial[t, v, k]
            lattice[v, k] = total
    spare = partial[0]
    for j in range(neighbours.shape[0]):
        for v in _prange(n_vertices):
            a, b = neighbours[j, v, 0], neighbours[j, v, 1]
            for k in range(c):
                value = lattice[v, k]
                if a >= 0:
                    value += 0.5 * lattice[a, k]
                if b >= 0:
                    value += 0.5 * lattice[b, k]
                spare[v, k] = value
        lattice, spare = spare, lattice
    return lattice


def _nb_slice(lattice, vertex, post, out):
    """``out[n] = sum_r post[n, r] * lattice[vertex[n, r]]`` (numba, parallel)."""
    for n in _prange(vertex.shape[0]):
        for k in range(out.shape[1]):
            out[n, k] = 0.0
        for r in range(vertex.shape[1]):
            v, w = vertex[n, r], post[n, r]
            for k in range(out.shape[1]):
                out[n, k] += w * lattice[v, k]
    return out


def _nb_mean_field(q, prior, iterations, vertex, splat, post, neighbours, n_vertices, chunks):
    """``iterations`` of ``q = softmax(filter(q) - unary)``, the slice fused with the
    update; ``q`` [N, C] is updated in place (numba, parallel)."""
    n_points, c = q.shape
    lattice = np.zeros((n_vertices, c), np.float32)
    partial = np.zeros((chunks, n_vertices, c), np.float32)
    size = (n_points + chunks - 1) // chunks
    for _ in range(iterations):
        message = _nb_splat_blur(q, vertex, splat, neighbours, lattice, partial)
        for t in _prange(chunks):
            logits = np.empty(c, np.float32)  # once per thread, not once per point
            for n in range(t * size, min(n_points, (t + 1) * size)):
                _nb_update_point(q, prior, vertex, post, message, n, logits)
    return q


def _nb_update_point(q, prior, vertex, post, message, n, logits):
    """``q[n] = softmax(slice(message)[n] - unary[n])``, with ``unary = -log(prior)``:
    ``softmax(log p + m) = p e^m / sum(p e^m)``, so no logarithm is taken. ``e^(m - max m)``
    is in (0, 1] and ``p >= clip``, so the sum stays positive."""
    c = q.shape[1]
    for k in range(c):
        logits[k] = 0.0
    for r in range(vertex.shape[1]):
        v, w = vertex[n, r], post[n, r]
        for k in range(c):
            logits[k] += w * message[v, k]
    top = logits.max()
    total = 0.0
    for k in range(c):
        logits[k] = prior[n, k] * _nb_exp(logits[k] - top)
        total += logits[k]
    for k in range(c):
        q[n, k] = logits[k] / total


def _nb_exp(x):
    """e^x for x <= 0, as (e^(x/128))^128 with a degree-7 Taylor polynomial: plain
    arithmetic that the compiler vectorises, where a call to exp does not (the released code
    uses a fast approximate exp as well). Relative error below 1e-6 for x > -10, 1e-4 down to
    the -80 where it clips (e^-80 ~ 2e-35: nothing next to the largest term, which is 1)."""
    y = max(x, -80.0) * (1.0 / 128.0)
    p = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (
        1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))))
    for _ in range(7):
        p *= p
    return p


def _prange(n):  # replaced by numba.prange when compiled
    return range(n)


_NUMBA: dict | None = None


def _numba() -> dict | None:
    """The loops above compiled by numba (cached on disk), or None without numba."""
    global _NUMBA
    if _NUMBA is None:
        if not available("crf"):
            _NUMBA = {}
            log.warning("the compiled dense CRF needs numba (%s); running the slower torch "
                        "CRF", install_command("crf"))  # fmt: skip
            return None
        import numba

        # numba resolves a function's globals when it compiles it: the loops see
        # numba.prange, and the mean field the compiled splat/blur.
        module = globals()
        module["_prange"] = numba.prange
        # Starting numba's OpenMP threads resets the OpenMP thread count that torch reads
        # (torch.get_num_threads), so a torch.set_num_threads(1) made before would be lost.
        threads = torch.get_num_threads()
        numba.get_num_threads()  # starts them
        torch.set_num_threads(threads)
        fast = dict(cache=True, nogil=True, fastmath=True)
        for helper in ("_nb_exp", "_nb_elevate_point", "_nb_update_point"):  # inlined
            module[helper] = numba.njit(inline="always", **fast)(module[helper])
        module["_nb_rehash"] = numba.njit(**fast)(_nb_rehash)
        _NUMBA = {
            "elevate": numba.njit(parallel=True, **fast)(_nb_elevate),
            "hash": numba.njit(**fast)(_nb_hash),
            "splat_blur": numba.njit(parallel=True, **fast)(_nb_splat_blur),
            "slice": numba.njit(parallel=True, **fast)(_nb_slice),
            "prepare": numba.njit(parallel=True, **fast)(_nb_prepare),
            "transpose": numba.njit(parallel=True, **fast)(_nb_transpose),
        }
        module["_nb_splat_blur"] = _NUMBA["splat_blur"]
        _NUMBA["mean_field"] = numba.njit(parallel=True, **fast)(_nb_mean_field)
    return _NUMBA or None


@dataclass
class _HashLattice:
    """A lattice from the hashing build: each point's d+1 vertices and barycentric weights,
    each vertex's blur neighbours (-1: none), vertex ids starting at ``offset``."""

    vertex: np.ndarray  # [N, d+1] int64
    weights: np.ndarray  # [N, d+1] float32
    neighbours: np.ndarray  # [d+1, M, 2] int64
    num_vertices: int
    alpha: float  # the released code's slice factor, 1 / (1 + 2^-d)


@contextlib.contextmanager
def _numba_threads():
    """numba's threads follow torch's (``torch.set_num_threads``)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _hash_lattice(features: np.ndarray, nb: dict) -> _HashLattice:
    n, d = features.shape
    d1 = d + 1
    i = np.arange(d, dtype=np.float64)
    scale = math.sqrt(2.0 / 3.0) * d1 / np.sqrt((i + 1) * (i + 2))
    rem0 = np.empty((n, d1), np.int64)
    rank = np.empty((n, d1), np.int64)
    weights = np.empty((n, d1), np.float32)
    nb["elevate"](np.ascontiguousarray(features, np.float64), scale, rem0, rank, weights,
                  _chunks())
    lo = int(rem0[:, :d].min()) - 2 * d1
    span = int(rem0[:, :d].max()) + 2 * d1 - lo + 1
    if span**d >= 2**62:
        raise ValueError("the CRF features span too many lattice cells; increase sxy/srgb "
                         "or downscale the image")  # fmt: skip
    radix = np.array([span**k for k in range(d)], np.int64)
    vertex, neighbours, m = nb["hash"](rem0, rank, lo, radix, 0)
    return _HashLattice(vertex, weights, neighbours, int(m), 1.0 / (1.0 + 2.0 ** (-d)))


def _hash_normaliser(lattice: _HashLattice, nb: dict) -> np.ndarray:
    """[N] = 1 / sqrt(K 1): the symmetric normalisation of the released code."""
    n, m = lattice.vertex.shape[0], lattice.num_vertices
    chunks = _chunks()
    blurred = nb["splat_blur"](np.ones((n, 1), np.float32), lattice.vertex, lattice.weights,
                               lattice.neighbours, np.zeros((m, 1), np.float32),
                               np.zeros((chunks, m, 1), np.float32))  # fmt: skip
    out = nb["slice"](blurred, lattice.vertex, lattice.weights * lattice.alpha,
                      np.empty((n, 1), np.float32))  # fmt: skip
    return (1.0 / np.sqrt(out[:, 0] + 1e-20)).astype(np.float32)


def _chunks() -> int:
    """One splat buffer per numba thread."""
    import numba

    return max(1, numba.get_num_threads())


@functools.lru_cache(maxsize=4)
def _hash_position_kernel(h: int, w: int, sxy: float) -> tuple[_HashLattice, np.ndarray]:
    nb = _numba()
    features = _pixel_features(h, w, torch.device("cpu")).numpy() / sxy
    lattice = _hash_lattice(features, nb)
    return lattice, _hash_normaliser(lattice, nb)


def _dense_crf_hashed(
    rgb: np.ndarray, prior: np.ndarray, q: np.ndarray, *, iterations: int, gaussian_sxy: float,
    gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float,
    bilateral_compat: float, nb: dict,
) -> np.ndarray:  # fmt: skip
    """The mean field of ``dense_crf`` with the hashing lattices (CPU): [N, C] q."""
    h, w, _ = rgb.shape
    kernels = []
    if gaussian_compat != 0:
        kernels.append((*_hash_position_kernel(h, w, float(gaussian_sxy)), gaussian_compat))
    if bilateral_compat != 0:
        xy = _pixel_features(h, w, torch.device("cpu")).numpy()
        features = np.concatenate([xy / bilateral_sxy, rgb.reshape(-1, 3) / bilateral_srgb], 1)
        lattice = _hash_lattice(features, nb)
        kernels.append((lattice, _hash_normaliser(lattice, nb), bilateral_compat))
    if not kernels or iterations == 0:
        return q
    # Both kernels in one vertex space (the second's ids after the first's), each with its
    # normaliser before the splat and its weight and normaliser after the slice.
    n, corners = q.shape[0], sum(lat.vertex.shape[1] for lat, _, _ in kernels)
    axes = max(lat.neighbours.shape[0] for lat, _, _ in kernels)
    total = sum(lat.num_vertices for lat, _, _ in kernels)
    vertex = np.empty((n, corners), np.int32)
    splat = np.empty((n, corners), np.float32)
    post = np.empty((n, corners), np.float32)
    neighbours = np.full((axes, total, 2), -1, np.int32)
    col = offset = 0
    for lattice, norm, compat in kernels:
        cols = slice(col, col + lattice.vertex.shape[1])
        np.add(lattice.vertex, offset, out=vertex[:, cols])
        np.multiply(lattice.weights, norm[:, None], out=splat[:, cols])
        np.multiply(lattice.weights, (lattice.alpha * compat * norm)[:, None], out=post[:, cols])
        block = neighbours[: lattice.neighbours.shape[0], offset : offset + lattice.num_vertices]
        np.add(lattice.neighbours, offset, out=block)
        block[lattice.neighbours < 0] = -1
        col, offset = cols.stop, offset + lattice.num_vertices
    return nb["mean_field"](q, prior, int(iterations), vertex, splat, post, neighbours, offset,
                            _chunks())  # fmt: skip
