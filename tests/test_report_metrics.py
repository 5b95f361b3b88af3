"""Pin the torch grader against skimage and plain numpy transcriptions."""

import random

import numpy as np
import pytest
import torch
from skimage.filters import gaussian
from skimage.metrics import structural_similarity
from skimage.transform import resize
from sklearn.datasets import load_digits

from cvae_exp.metrics import (
    bonus,
    mse_per_image,
    quantize_uint8,
    report_score,
    simplified_fid,
    ssim_per_image,
)
from cvae_exp.metrics.report import _window_means


def skimage_ssim(orig: np.ndarray, recon: np.ndarray) -> np.ndarray:
    return np.array([structural_similarity(o, r, data_range=255) for o, r in zip(orig, recon)])


def random_uint8(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def digit_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Upsampled sklearn digits and blurred, noisy copies standing in for reconstructions."""
    rng = np.random.default_rng(0)
    digits = load_digits().images[:120] / 16.0
    orig = np.stack([resize(d, (28, 28), order=1) for d in digits])
    sigmas = rng.uniform(0.3, 1.5, len(orig))
    blurred = np.stack([gaussian(o, sigma=s) for o, s in zip(orig, sigmas)])
    noisy = blurred + rng.normal(0, 0.05, blurred.shape)
    to_uint8 = lambda x: (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    return to_uint8(orig), to_uint8(noisy)


def test_quantize_uint8_matches_numpy_transcription():
    boundaries = [0.0, 1.0, 0.5 / 255, 1.5 / 255, 254.5 / 255, 0.5, -0.3, -1e-7, 1.2, 1 + 1e-7]
    uniform = np.random.default_rng(1).uniform(-0.1, 1.1, 1000)
    values = np.concatenate([boundaries, uniform]).astype(np.float32)
    expected = np.clip(values * 255 + 0.5, 0, 255).astype(np.uint8)
    got = quantize_uint8(torch.from_numpy(values))
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), expected)
    spot_checks = quantize_uint8(torch.tensor([0.0, 1.0, 0.5, -0.3, 1.2]))
    assert spot_checks.tolist() == [0, 255, 128, 0, 255]


def test_ssim_random_images_match_skimage():
    rng = np.random.default_rng(2)
    orig, recon = random_uint8(rng, 40, 28, 28), random_uint8(rng, 40, 28, 28)
    got = ssim_per_image(torch.from_numpy(orig), torch.from_numpy(recon))
    assert got.dtype == torch.float64 and got.shape == (40,)
    np.testing.assert_allclose(got.numpy(), skimage_ssim(orig, recon), rtol=0, atol=1e-5)


def test_ssim_digit_reconstructions_match_skimage(digit_pairs):
    orig, recon = digit_pairs
    expected = skimage_ssim(orig, recon)
    assert 0.3 < expected.mean() < 0.98  # the pairs are neither trivial nor unrelated
    got = ssim_per_image(torch.from_numpy(orig[:, None]), torch.from_numpy(recon[:, None]), chunk_size=32)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_ssim_non_square_images_match_skimage():
    rng = np.random.default_rng(3)
    orig = random_uint8(rng, 5, 20, 33)
    recon = np.clip(orig.astype(int) + rng.integers(-30, 30, orig.shape), 0, 255).astype(np.uint8)
    got = ssim_per_image(torch.from_numpy(orig), torch.from_numpy(recon))
    np.testing.assert_allclose(got.numpy(), skimage_ssim(orig, recon), rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(7, 7), (8, 13), (28, 28)])
def test_window_means_are_exact_window_averages(height, width):
    """The running-sum box filter against numpy's explicit 7x7 windows, on 8-bit squares
    (the largest sums SSIM takes): equal to the last bit, down to a one-window image."""
    rng = np.random.default_rng(height * width)
    images = rng.integers(0, 256, (3, 2, height, width)).astype(np.float64) ** 2
    windows = np.lib.stride_tricks.sliding_window_view(images, (7, 7), axis=(2, 3))
    got = _window_means(torch.from_numpy(images))
    assert got.shape == (3, 2, height - 6, width - 6)
    np.testing.assert_array_equal(got.numpy(), windows.sum(axis=(-2, -1)) / 49)


def test_ssim_identical_images_is_one(digit_pairs):
    orig = torch.from_numpy(digit_pairs[0])
    ones = torch.ones(len(orig), dtype=torch.float64)
    torch.testing.assert_close(ssim_per_image(orig, orig), ones)


def test_ssim_constant_pair_matches_skimage():
    orig = np.full((2, 28, 28), 40, dtype=np.uint8)
    recon = np.stack([np.full((28, 28), value, dtype=np.uint8) for value in (200, 40)])
    expected = skimage_ssim(orig, recon)
    got = ssim_per_image(torch.from_numpy(orig), torch.from_numpy(recon))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    assert expected[0] < 0.5 and expected[1] == pytest.approx(1.0)


def test_ssim_shape_forms_and_chunking_agree(digit_pairs):
    orig, recon = (torch.from_numpy(a) for a in digit_pairs)
    flat = ssim_per_image(orig, recon)
    channel_form = ssim_per_image(orig[:, None], recon[:, None])
    torch.testing.assert_close(channel_form, flat, rtol=0, atol=0)
    torch.testing.assert_close(ssim_per_image(orig, recon, chunk_size=7), flat, rtol=0, atol=1e-12)


def test_ssim_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        ssim_per_image(torch.rand(2, 28, 28), torch.rand(2, 28, 28))


def test_mse_matches_numpy():
    rng = np.random.default_rng(4)
    orig, recon = random_uint8(rng, 30, 1, 28, 28), random_uint8(rng, 30, 1, 28, 28)
    expected = ((orig / 255.0 - recon / 255.0) ** 2).reshape(30, -1).mean(axis=1)
    got = mse_per_image(torch.from_numpy(orig), torch.from_numpy(recon))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    assert mse_per_image(torch.from_numpy(orig), torch.from_numpy(orig)).abs().max() == 0


def numpy_simplified_fid(gen, gen_labels, real, real_labels, num_classes):
    values = []
    for c in range(num_classes):
        g = gen[gen_labels == c].reshape(-1, gen.shape[-1] * gen.shape[-2]) / 255.0
        r = real[real_labels == c].reshape(-1, real.shape[-1] * real.shape[-2]) / 255.0
        mu_g, mu_r = g.mean(axis=0), r.mean(axis=0)
        v_g, v_r = np.var(g, axis=0, ddof=0), np.var(r, axis=0, ddof=0)
        values.append(np.sum((mu_g - mu_r) ** 2) + np.sum(v_g + v_r - 2 * np.sqrt(v_g * v_r)))
    return np.array(values)


def test_simplified_fid_matches_numpy():
    rng = np.random.default_rng(5)
    gen, real = random_uint8(rng, 200, 1, 28, 28), random_uint8(rng, 150, 1, 28, 28) // 2
    gen_labels, real_labels = rng.integers(0, 4, 200), rng.integers(0, 4, 150)
    expected = numpy_simplified_fid(gen, gen_labels, real, real_labels, 4)
    got = simplified_fid(*map(torch.from_numpy, (gen, gen_labels, real, real_labels)), 4)
    assert got.dtype == torch.float64 and got.shape == (4,)
    assert expected.min() > 1.0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_simplified_fid_of_identical_sets_is_zero():
    rng = np.random.default_rng(6)
    images = torch.from_numpy(random_uint8(rng, 60, 28, 28))
    labels = torch.from_numpy(rng.integers(0, 3, 60))
    fid = simplified_fid(images, labels, images, labels, 3)
    torch.testing.assert_close(fid, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)


def test_simplified_fid_rejects_empty_class():
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="class 2"):
        simplified_fid(images, labels, images, labels, 3)
    with pytest.raises(ValueError, match="class 1 has 2 generated and 0 real"):
        simplified_fid(images, labels, images, torch.tensor([0, 0, 0, 0]), 2)


def test_bonus():
    assert bonus(20) == pytest.approx(0.2 + 1 - 20 / 784)
    assert bonus(784) == pytest.approx(0.2)
    assert bonus(10, num_pixels=100) == pytest.approx(1.1)


def test_report_score_check_figures():
    capped, uncapped = report_score(0.7399, 0.0231, 20, fid=4.4657)
    assert round(capped, 2) == 24.22 and capped == uncapped
    capped, uncapped = report_score(0.7308, 0.0227, 20)
    assert round(capped, 2) == 8.83 and capped == uncapped


def test_report_score_cap_binds():
    capped, uncapped = report_score(0.99, 0.001, 2, fid=0.1)
    assert capped == 30 and uncapped > 30
    capped, uncapped = report_score(0.99, 0.001, 2)
    assert capped == 10 and uncapped > 10


def test_report_score_matches_transcription():
    rng = random.Random(7)
    for _ in range(200):
        ssim, mse, latent = rng.uniform(0, 1), rng.uniform(0, 0.2), rng.randint(1, 784)
        fid = rng.uniform(0, 20)
        multiplier = 0.2 + (1 - latent / 784)
        conditional = (ssim * 10 + max(0.1 - mse, 0) * 100 + max(10 - fid, 0)) * multiplier
        unconditional = (ssim * 5 + max(0.1 - mse, 0) * 50) * multiplier
        assert report_score(ssim, mse, latent, fid=fid) == pytest.approx((min(conditional, 30), conditional))
        assert report_score(ssim, mse, latent) == pytest.approx((min(unconditional, 10), unconditional))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_gpu_match_cpu(digit_pairs):
    orig, recon = (torch.from_numpy(a) for a in digit_pairs)
    labels = torch.arange(len(orig)) % 3
    for metric in (ssim_per_image, mse_per_image):
        torch.testing.assert_close(metric(orig.cuda(), recon.cuda()).cpu(), metric(orig, recon))
    torch.testing.assert_close(
        simplified_fid(recon.cuda(), labels.cuda(), orig.cuda(), labels.cuda(), 3).cpu(),
        simplified_fid(recon, labels, orig, labels, 3),
    )
