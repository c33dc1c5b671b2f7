"""Strong perturbation: the distribution of views and CutMix boxes the paper specifies.

ColorJitter(0.5, 0.5, 0.5, 0.25) with p=0.8, RandomGrayscale p=0.2 (3-channel images only),
Gaussian blur sigma in [0.1, 2.0] with p=0.5, CutMix p=0.5 with area 2%-40% of the crop and
aspect ratio in [0.3, 1/0.3]; channel groups of a stacked pair are perturbed independently.
"""
import dataclasses
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.optimize import minimize_scalar

from helpers import deterministic
from unimatch.perturb import (Normalizer, PerturbationSettings, StrongPerturbation, adjust_brightness,
                              adjust_contrast, adjust_hue, adjust_saturation, grayscale, to_unit_float)

N = 4000


def setup_module():
    deterministic()


def perturbation(seed=0, **changes):
    return StrongPerturbation(dataclasses.replace(PerturbationSettings(), **changes),
                              torch.Generator().manual_seed(seed))


def random_images(n, channels=3, size=8, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def changed(before, after):
    return (before != after).flatten(1).any(1)


# ---- CutMix boxes -----------------------------------------------------------------------------
def box_geometry(boxes):
    """(active, top, left, height, width) of each (H, W) box mask; asserts each is a filled rectangle."""
    active = boxes.flatten(1).any(1)
    rows, cols = boxes.any(2), boxes.any(1)
    height, width = rows.sum(1), cols.sum(1)
    top, left = rows.float().argmax(1), cols.float().argmax(1)
    assert torch.equal(boxes.flatten(1).sum(1), height * width), "every box is one filled rectangle"
    return active, top, left, height, width


def test_cutmix_box_statistics():
    size = 32
    boxes = perturbation().cutmix_boxes(N, size, size)
    assert boxes.shape == (N, size, size) and boxes.dtype == torch.bool
    active, top, left, h, w = box_geometry(boxes)
    assert abs(active.float().mean().item() - 0.5) < 0.03
    h, w, top, left = h[active].double(), w[active].double(), top[active], left[active]
    area = size * size
    # official: w = int(sqrt(a / r)), h = int(sqrt(a * r)) with a in [0.02, 0.4] x crop, r in [0.3, 1/0.3]
    assert (h * w <= 0.4 * area).all()
    assert ((h + 1) * (w + 1) > 0.02 * area).all()
    assert (h / (w + 1) < 1 / 0.3).all() and ((h + 1) / w > 0.3).all()
    mean_area = (h * w).mean().item() / area
    assert 0.17 < mean_area < 0.22  # uniform in [0.02, 0.4] (mean 0.21) less the integer truncation
    # ratio = h / w uniform in [0.3, 1/0.3] (as official, not log-uniform): P(h > w) = (1/0.3 - 1) / (1/0.3 - 0.3)
    assert abs((h > w).float().mean().item() - (1 / 0.3 - 1) / (1 / 0.3 - 0.3)) < 0.05
    # boxes are redrawn until they fit, not clipped: few touch the right/bottom border
    assert ((left + w) == size).float().mean() < 0.15 and ((top + h) == size).float().mean() < 0.15
    assert (top == 0).float().mean() < 0.15 and (left == 0).float().mean() < 0.15


def test_cutmix_boxes_on_a_rectangular_crop_stay_inside():
    boxes = perturbation(cutmix_p=1.0).cutmix_boxes(500, 24, 40)
    active, top, left, h, w = box_geometry(boxes)
    assert active.all()
    assert ((h * w).double() <= 0.4 * 24 * 40).all()


def test_cutmix_probability_zero_and_one():
    assert not perturbation(cutmix_p=0.0).cutmix_boxes(50, 16, 16).any()
    assert perturbation(cutmix_p=1.0).cutmix_boxes(50, 16, 16).flatten(1).any(1).all()


# ---- fractions of perturbed samples --------------------------------------------------------
def test_colour_jitter_fraction():
    x = random_images(N)
    out = perturbation(grayscale_p=0.0, blur_p=0.0)(x)
    assert abs(changed(x, out).float().mean().item() - 0.8) < 0.03


def test_grayscale_fraction_and_luma():
    x = random_images(N)
    out = perturbation(color_jitter_p=0.0, blur_p=0.0)(x)
    gray = changed(x, out)
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    expected = TF.rgb_to_grayscale(x[gray], num_output_channels=3)
    assert torch.allclose(out[gray], expected, atol=1e-3)
    assert torch.equal(out[~gray], x[~gray])


def test_blur_fraction():
    x = random_images(N, size=16)
    out = perturbation(color_jitter_p=0.0, grayscale_p=0.0, blur_sigma=(1.0, 2.0))(x)
    assert abs(changed(x, out).float().mean().item() - 0.5) < 0.03


def fitted_sigma(image, blurred, kernel_size):
    """The sigma for which torchvision's gaussian_blur reproduces ``blurred``, and the residual
    (a grid over [0.05, 3], then a bounded search around the best grid point)."""
    def error(sigma):
        return (TF.gaussian_blur(image, [kernel_size] * 2, [sigma] * 2) - blurred).abs().max().item()
    grid = torch.arange(0.05, 3.0, 0.05).tolist()
    start = min(grid, key=error)
    best = minimize_scalar(error, bounds=(max(0.01, start - 0.05), start + 0.05), method="bounded",
                           options={"xatol": 1e-6})
    return best.x, best.fun


def test_blur_is_torchvision_gaussian_blur_with_sigma_in_range():
    x = random_images(400, size=16)
    out = perturbation(color_jitter_p=0.0, grayscale_p=0.0)(x)
    blurred = changed(x, out).nonzero().squeeze(1)[:16]
    sigmas = []
    for i in blurred:
        # kernel radius ceil(3 * max sigma) = 6
        sigma, residual = fitted_sigma(x[i], out[i], 13)
        assert residual < 1e-4
        sigmas.append(sigma)
    assert min(sigmas) >= 0.1 - 1e-3 and max(sigmas) <= 2.0 + 1e-3
    assert max(sigmas) - min(sigmas) > 0.8  # drawn over the range, not one value


# ---- each op against torchvision, per sample -----------------------------------------------
@pytest.mark.parametrize("ours, theirs, low, high, atol", [
    (adjust_brightness, TF.adjust_brightness, 0.5, 1.5, 1e-6),
    (adjust_contrast, TF.adjust_contrast, 0.5, 1.5, 1e-3),     # luma weights 0.299 (PIL) vs 0.2989
    (adjust_saturation, TF.adjust_saturation, 0.5, 1.5, 1e-3),
    (adjust_hue, TF.adjust_hue, -0.25, 0.25, 1e-5),
])
def test_ops_match_torchvision_per_sample(ours, theirs, low, high, atol):
    x = random_images(16, size=6, seed=1)
    factors = torch.linspace(low, high, 16)
    got = ours(x.clone(), factors)
    for i in range(16):
        assert torch.allclose(got[i], theirs(x[i], factors[i].item()), atol=atol), f"sample {i}"


def test_full_jitter_equals_torchvision_with_the_drawn_parameters():
    """Replays the generator (the draw order is part of reproducibility): per image a jitter coin,
    brightness/contrast/saturation factors, a hue shift, an op order, a grayscale coin, a blur coin
    and a sigma; each image is then torchvision's ColorJitter/RandomGrayscale/GaussianBlur."""
    n, seed = 48, 5
    x = random_images(n, size=16, seed=2)
    out = perturbation(seed=seed)(x)
    g = torch.Generator().manual_seed(seed)
    jitter = torch.rand(n, generator=g) < 0.8
    factors = [torch.rand(n, generator=g) + 0.5 for _ in range(3)] + [torch.rand(n, generator=g) * 0.5 - 0.25]
    order = [torch.randperm(4, generator=g) for _ in range(n)]
    gray = torch.rand(n, generator=g) < 0.2
    blur = torch.rand(n, generator=g) < 0.5
    sigma = torch.rand(n, generator=g) * 1.9 + 0.1
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(n):
        expected = x[i]
        if jitter[i]:
            for op in order[i].tolist():
                expected = ops[op](expected, factors[op][i].item())
        if gray[i]:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        if blur[i]:
            expected = TF.gaussian_blur(expected, [13, 13], [sigma[i].item()] * 2)
        assert torch.allclose(out[i], expected, atol=2e-3), f"sample {i}"
    assert jitter.any() and gray.any() and blur.any() and (~jitter).any()


def test_brightness_factors_are_uniform_per_image():
    x = random_images(N, size=4) * 0.5 + 0.1  # no clamping at 1.5x
    out = perturbation(color_jitter_p=1.0, color_jitter=(0.5, 0.0, 0.0, 0.0), grayscale_p=0.0, blur_p=0.0)(x)
    ratio = (out / x).flatten(1)
    factor = ratio[:, 0]
    assert torch.allclose(ratio, factor[:, None].expand_as(ratio), atol=1e-4), "one factor per image"
    assert factor.min() >= 0.5 and factor.max() <= 1.5
    assert factor.min() < 0.52 and factor.max() > 1.48 and abs(factor.mean().item() - 1.0) < 0.02


# ---- channel groups, one-channel images, determinism -----------------------------------------
def test_pair_groups_are_jittered_independently():
    x = random_images(N, channels=6, size=4) * 0.5 + 0.1
    out = perturbation(color_jitter_p=0.8, color_jitter=(0.5, 0.0, 0.0, 0.0), grayscale_p=0.0, blur_p=0.0)(x)
    ratio = out / x
    factor_a, factor_b = ratio[:, 0, 0, 0], ratio[:, 3, 0, 0]
    assert torch.allclose(ratio[:, :3], factor_a.view(-1, 1, 1, 1).expand(-1, 3, 4, 4), atol=1e-4)
    assert torch.allclose(ratio[:, 3:], factor_b.view(-1, 1, 1, 1).expand(-1, 3, 4, 4), atol=1e-4)
    jittered_a, jittered_b = (factor_a - 1).abs() > 1e-6, (factor_b - 1).abs() > 1e-6
    assert abs(jittered_a.float().mean().item() - 0.8) < 0.03 and abs(jittered_b.float().mean().item() - 0.8) < 0.03
    both = jittered_a & jittered_b
    assert abs(both.float().mean().item() - 0.64) < 0.03  # independent coins
    assert ((factor_a - factor_b)[both].abs() > 1e-3).float().mean() > 0.99  # independent factors


def test_pair_groups_are_grayed_independently():
    x = random_images(N, channels=6, size=4)
    out = perturbation(color_jitter_p=0.0, blur_p=0.0)(x)
    gray_a, gray_b = changed(x[:, :3], out[:, :3]), changed(x[:, 3:], out[:, 3:])
    assert abs(gray_a.float().mean().item() - 0.2) < 0.03 and abs(gray_b.float().mean().item() - 0.2) < 0.03
    assert abs((gray_a & gray_b).float().mean().item() - 0.04) < 0.015
    assert torch.allclose(out[gray_b, 3:], TF.rgb_to_grayscale(x[gray_b, 3:], 3), atol=1e-3)


def test_one_channel_images_are_never_grayed_and_stay_in_range():
    x = random_images(200, channels=1, size=16)
    assert torch.equal(perturbation(color_jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)(x), x)
    # saturation and hue do nothing to a gray image
    no_op = perturbation(color_jitter_p=1.0, color_jitter=(0.0, 0.0, 0.5, 0.25), grayscale_p=1.0, blur_p=0.0)
    assert torch.equal(no_op(x), x)
    for settings in ({}, {"channel_group_size": 1}):
        out = perturbation(color_jitter_p=1.0, blur_p=1.0, **settings)(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 + 1e-6
        assert changed(x, out).all()


def test_views_stay_in_unit_range():
    out = perturbation(color_jitter_p=1.0, blur_p=1.0)(random_images(500, size=16))
    # the blur of a clamped image may pass 1 by a rounding error, no more
    assert out.min() >= 0 and out.max() <= 1 + 1e-6 and torch.isfinite(out).all()


def test_determinism_by_generator_seed():
    x = random_images(64, channels=6, size=16)
    first, second, other = perturbation(seed=7), perturbation(seed=7), perturbation(seed=8)
    a, b, c = first(x), second(x), other(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(first.cutmix_boxes(64, 16, 16), second.cutmix_boxes(64, 16, 16))
    assert not torch.equal(first.cutmix_boxes(64, 16, 16), other.cutmix_boxes(64, 16, 16))


def test_input_is_not_modified_and_global_rng_is_untouched():
    x = random_images(32, size=8)
    before = x.clone()
    state = torch.get_rng_state()
    perturbation(color_jitter_p=1.0, blur_p=1.0)(x)
    perturbation().cutmix_boxes(32, 8, 8)
    assert torch.equal(x, before)
    assert torch.equal(torch.get_rng_state(), state)


def test_from_config_takes_every_setting():
    from unimatch.config import Config
    cfg = Config(color_jitter=[0.1, 0.2, 0.3, 0.05], color_jitter_p=0.7, grayscale_p=0.0, blur_p=0.3,
                 blur_sigma=[0.2, 1.0], cutmix_p=0.4, cutmix_area=[0.1, 0.2], cutmix_ratio=[0.5, 2.0],
                 channel_group_size=1)
    assert PerturbationSettings.from_config(cfg) == PerturbationSettings(
        color_jitter_p=0.7, color_jitter=(0.1, 0.2, 0.3, 0.05), grayscale_p=0.0, blur_p=0.3,
        blur_sigma=(0.2, 1.0), cutmix_p=0.4, cutmix_area=(0.1, 0.2), cutmix_ratio=(0.5, 2.0), channel_group_size=1)


# ---- helpers used on the device ----------------------------------------------------------
def test_unit_float_and_normalizer_over_channel_groups():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 2, 1, 1)
    unit = to_unit_float(images)
    assert unit.dtype == torch.float32 and unit.flatten().tolist() == pytest.approx([0, 0.2, 1.0] * 2)
    floats = torch.rand(1, 1, 2, 2)
    assert torch.equal(to_unit_float(floats), floats)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    normalized = Normalizer(mean, std, 6)(unit)
    expected = [(v - m) / s for v, m, s in zip([0, 0.2, 1.0], mean, std)] * 2
    assert normalized.flatten().tolist() == pytest.approx(expected, rel=1e-5)
    assert math.isclose(grayscale(unit[:, :3]).item(), 0.587 * 0.2 + 0.114, rel_tol=1e-6)


def test_multispectral_groups_get_brightness_contrast_blur_but_no_colour_ops():
    """A 4-band group (e.g. RGB+NIR per date) is jittered without RGB-only saturation/hue/grayscale."""
    from unimatch.perturb import PerturbationSettings, StrongPerturbation, adjust_hue, adjust_saturation, grayscale
    x = torch.rand(2, 4, 16, 16)
    factor = torch.tensor([0.5, 1.5])
    assert torch.equal(adjust_saturation(x, factor), x) and torch.equal(adjust_hue(x, factor - 1), x)
    assert torch.allclose(grayscale(x), x.mean(1, keepdim=True))
    perturb = StrongPerturbation(PerturbationSettings(channel_group_size=4, color_jitter_p=1.0, blur_p=0.0),
                                 torch.Generator().manual_seed(0))
    out = perturb(torch.rand(3, 8, 16, 16))
    assert out.shape == (3, 8, 16, 16) and 0 <= out.min() and out.max() <= 1
