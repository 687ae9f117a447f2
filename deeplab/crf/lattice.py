"""The permutohedral lattice in torch (Adams, Baek and Davis, Eurographics 2010) and the
dense CRF's mean field on it: the reference path, on any device (a GPU too).

Splat each point onto the d+1 vertices of its enclosing simplex, blur along the d+1
lattice axes with a [1/2, 1, 1/2] kernel, slice back (NIPS 2011, sec. 4). Keys are
sorted and the filter is a product of sparse matrices, built once per image and reused
across iterations.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

UNARY_CLIP = 1e-5  # probabilities are clipped here before -log (the released code's 1e-5)


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
    lattice = PermutohedralLattice(pixel_features(h, w, torch.device(device)) / sxy)
    return lattice, _normaliser(lattice)




def unary_from_probs(probs: torch.Tensor, clip: float = UNARY_CLIP) -> torch.Tensor:
    """Softmax probabilities -> unary energy -log(p), clipped so that log(0) stays finite."""
    return -torch.log(probs.clamp(min=clip, max=1.0))


def pixel_features(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # [N, 2] as (x, y)


def mean_field(
    image: torch.Tensor, probs: torch.Tensor, *, iterations: int, gaussian_sxy: float,
    gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float,
    bilateral_compat: float,
) -> torch.Tensor:  # fmt: skip
    """``dense_crf``'s mean field on torch lattices: uint8 HxWx3, CxHxW -> CxHxW."""
    c, h, w = probs.shape
    dev = probs.device
    # Pixel-major [N, C] so that each lattice vertex holds a contiguous vector.
    unary = unary_from_probs(probs).reshape(c, -1).t().contiguous()
    xy = pixel_features(h, w, dev)
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
    return q.t().reshape(c, h, w).contiguous()
