"""Dense CRF: lattice filtering, basic properties, and parity with pydensecrf on real images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.crf import PermutohedralLattice, dense_crf

VOC_PHOTOS = ("2011_000003", "2011_000025")


def noisy_probs(mask: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Softmax of Gaussian noise + 1.5 on the true class: about half the argmax labels are wrong."""
    rng = np.random.default_rng(seed)
    labels = np.where(mask < classes, mask, 0)
    logits = rng.normal(0.0, 1.0, (classes, *labels.shape)).astype(np.float32)
    np.put_along_axis(logits, labels[None], np.take_along_axis(logits, labels[None], 0) + 1.5, 0)
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def pydensecrf_reference(image: np.ndarray, probs: np.ndarray, iterations: int = 5) -> np.ndarray:
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:  # a hard failure: the parity test must run in CI
        raise RuntimeError("pydensecrf2 is missing; run pip install -e '.[test]'") from err
    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.array(image, order="C"), compat=10)
    return np.asarray(crf.inference(iterations)).reshape(c, h, w)


@pytest.mark.parametrize("dim", [2, 3])
def test_lattice_approximates_the_exact_gaussian(dim):
    gen = torch.Generator().manual_seed(dim)
    f = torch.rand(400, dim, generator=gen) * 6
    v = torch.rand(400, 3, generator=gen)
    kernel = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
    lattice = PermutohedralLattice(f)
    approx, exact = lattice.filter(v), kernel @ v
    corr = torch.corrcoef(torch.stack([approx.ravel(), exact.ravel()]))[0, 1]
    assert corr > 0.99
    # Normalised filtering (what the CRF uses) is a weighted mean: close to the exact one.
    approx_mean = approx / lattice.filter(torch.ones(400, 1))
    exact_mean = exact / kernel.sum(1, keepdim=True)
    assert (approx_mean - exact_mean).abs().max() < 0.05


def test_output_is_a_distribution_and_keeps_input_kind():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    probs = rng.random((4, 20, 30), dtype=np.float32)
    probs /= probs.sum(0)
    out = dense_crf(image, probs)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4, 20, 30)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert (out >= 0).all()
    out_t = dense_crf(torch.from_numpy(image), torch.from_numpy(probs))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-6)


def test_uniform_unary_on_a_smooth_image_stays_uniform():
    # With Potts compatibility every label gets the same message from uniform marginals.
    y, x = np.mgrid[0:24, 0:32]
    image = np.stack([x * 8, y * 10, np.full_like(x, 90)], -1).astype(np.uint8)
    probs = np.full((3, 24, 32), 1 / 3, dtype=np.float32)
    out = dense_crf(image, probs, iterations=10)
    np.testing.assert_allclose(out, 1 / 3, atol=1e-5)


def _island_case(island_colour: int):
    image = np.full((40, 40, 3), 120, dtype=np.uint8)
    image[15:21, 15:21] = island_colour
    probs = np.full((2, 40, 40), 0.3, dtype=np.float32)
    probs[0] = 0.7
    probs[:, 15:21, 15:21] = np.array([0.35, 0.65], dtype=np.float32)[:, None, None]
    return image, probs


def test_wrong_label_island_in_uniform_region_is_removed():
    image, probs = _island_case(island_colour=120)  # same colour as its surroundings
    assert (probs.argmax(0) == 1).sum() == 36
    labels = dense_crf(image, probs).argmax(0)
    assert (labels == 0).all()


def test_island_with_its_own_colour_is_kept():
    # The appearance kernel does not smooth across a strong colour edge (NIPS 2011, eq. 3).
    image, probs = _island_case(island_colour=250)
    labels = dense_crf(image, probs).argmax(0)
    assert (labels[15:21, 15:21] == 1).all() and (labels.sum() == 36)


def test_zero_iterations_returns_the_clipped_input():
    rng = np.random.default_rng(1)
    probs = rng.random((3, 8, 9), dtype=np.float32)
    probs /= probs.sum(0)
    image = np.zeros((8, 9, 3), np.uint8)
    np.testing.assert_allclose(dense_crf(image, probs, iterations=0), probs, atol=1e-5)
    no_pairwise = dense_crf(image, probs, gaussian_compat=0, bilateral_compat=0)
    np.testing.assert_allclose(no_pairwise, probs, atol=1e-5)


def test_inputs_are_checked_with_actionable_errors():
    image = np.zeros((8, 9, 3), np.uint8)
    probs = np.full((2, 8, 9), 0.5, np.float32)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="resize the probabilities"):
        dense_crf(image, probs[:, :4])
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, probs * 2)
    with pytest.raises(ValueError, match="not logits"):
        dense_crf(image, probs - 1)
    broken = probs.copy()
    broken[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        dense_crf(image, broken)
    with pytest.raises(ValueError, match="iterations"):
        dense_crf(image, probs, iterations=-1)
    with pytest.raises(ValueError, match="bilateral_srgb"):
        dense_crf(image, probs, bilateral_srgb=0)


@pytest.mark.slow
def test_parity_with_pydensecrf_on_camvid(camvid_dir: Path):
    for i, name in enumerate(sorted((camvid_dir / "val").glob("*.png"))[:2]):
        image = np.asarray(Image.open(name).convert("RGB"))
        mask = np.asarray(Image.open(camvid_dir / "valannot" / name.name)).astype(np.int64)
        probs = noisy_probs(mask, 11, seed=i)
        ref = pydensecrf_reference(image, probs)
        ours = dense_crf(image, probs)
        assert (ref.argmax(0) == ours.argmax(0)).mean() >= 0.99
        assert np.abs(ref - ours).mean() < 1e-4
        # The CRF fixes most of the noise: accuracy against the mask goes up.
        valid = mask < 11
        before = (probs.argmax(0) == mask)[valid].mean()
        after = (ours.argmax(0) == mask)[valid].mean()
        assert after > before + 0.2


@pytest.mark.slow
def test_parity_with_pydensecrf_on_voc_model_outputs(shared: Path, weights_dir: Path, monkeypatch):
    # Real softmax outputs of Google's VOC model on real VOC photos.
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(weights_dir))
    from deeplab.inference import Segmenter

    segmenter = Segmenter.from_pretrained("deeplabv3_mnv2_pascal_quant")
    folder = shared / "data" / "labelme_voc_example"
    for name in VOC_PHOTOS:
        pred = segmenter.predict(folder / f"{name}.jpg", probabilities=True)
        image, probs = pred.image, pred.probabilities
        assert probs.shape == (21, *image.shape[:2])
        ref = pydensecrf_reference(image, probs)
        ours = dense_crf(image, probs)
        assert (ref.argmax(0) == ours.argmax(0)).mean() >= 0.99
