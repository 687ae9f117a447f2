"""The dense CRF on the CPU: the released code's hash-table lattice, compiled with numba.

The torch lattice (``lattice.py``) sorts its keys and filters with sparse matrix
products, which also run on a GPU. On the CPU the loops of the released code (densecrf)
are cheaper: each simplex corner is hashed into a table, and splat, blur and slice are
loops over points and vertices, fused with the mean-field update. numba compiles them
(cached on disk after the first run); without numba (the extra ``crf``) the torch path
runs everywhere, and ``compiled()`` says so once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from deeplab.crf.lattice import UNARY_CLIP, pixel_features
from deeplab.extras import available, install_command

log = logging.getLogger("deeplab.crf")


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


_LOADING = threading.Lock()


def compiled() -> dict | None:
    """The loops above compiled by numba (cached on disk), or None without numba. Safe to
    call from several threads: one loads, the others wait (``prepare``)."""
    with _LOADING:
        return _load()


def prepare() -> None:
    """Load the compiled loops in a background thread: numba's import, its cache and its
    threads took about 0.5 s of a process's first CRF image; a segmenter made with the CRF
    starts this while its model loads and runs, and the first image waits only for what
    is left."""
    threading.Thread(target=compiled, name="deeplab-crf-load", daemon=True).start()


def _load() -> dict | None:
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

    vertex: np.ndarray  # [N, d+1] int32
    weights: np.ndarray  # [N, d+1] float32
    neighbours: np.ndarray  # [d+1, M, 2] int32
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
    nb = compiled()
    features = pixel_features(h, w, torch.device("cpu")).numpy() / sxy
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
        xy = pixel_features(h, w, torch.device("cpu")).numpy()
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



def mean_field(
    image: torch.Tensor, probs: torch.Tensor, *, iterations: int, gaussian_sxy: float,
    gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float,
    bilateral_compat: float, nb: dict,
) -> np.ndarray:  # fmt: skip
    """``dense_crf``'s mean field with the compiled loops: uint8 HxWx3, CxHxW -> CxHxW."""
    c, h, w = probs.shape
    with _numba_threads():
        # Pixel-major [N, C]: the clipped probabilities (the unary is -log of them) and
        # q = softmax(-unary), their normalised copy, in one parallel pass.
        prior = np.empty((h * w, c), np.float32)
        q = np.empty((h * w, c), np.float32)
        nb["prepare"](probs.numpy().reshape(c, -1), UNARY_CLIP, prior, q)
        q = _dense_crf_hashed(
            image.numpy(), prior, q, iterations=iterations, gaussian_sxy=gaussian_sxy,
            gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
            bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat, nb=nb,
        )  # fmt: skip
        return nb["transpose"](q, np.empty((c, h * w), np.float32)).reshape(c, h, w)
