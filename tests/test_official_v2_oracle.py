"""Our DPT and siamese DPT against the official UniMatch V2 code, logit for logit.

Runs only when ``UNIMATCH_OFFICIAL_V2`` names a checkout of LiheYoung/UniMatch-V2 (its natural-image
``model/`` and ``remote-sensing/model/``): the official model is built with random weights, they are
loaded into ours strictly, and both decode the same inputs, plainly and with complementary dropout
under the same seed (the official masks are drawn on the CPU and moved with ``.cuda()``, which is made
the identity here). Without xFormers the official attention is the explicit softmax(q k^T) v, ours is
``scaled_dot_product_attention``: the logits agree to rounding (<= 1e-5 in fp32).
"""
import contextlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from helpers import deterministic
from official_keys import official_dpt_shapes
from unimatch.models.dpt import DPT, SiameseDPT

OFFICIAL = os.environ.get("UNIMATCH_OFFICIAL_V2")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set UNIMATCH_OFFICIAL_V2 to an official UniMatch-V2 checkout")
TOLERANCE = 1e-5
HEAD = dict(features=16, out_channels=[8, 16, 24, 32])   # tiny head widths: the oracle is about the maths
SHAPES = [(2, 56, 70), (2, 98, 98), (4, 42, 56)]   # 4: one of the two pairs is kept whole


def setup_module():
    deterministic()


@contextlib.contextmanager
def official_package(root: Path):
    """``import model...`` from ``root`` (both official trees name their package ``model``)."""
    def drop():
        for name in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
            del sys.modules[name]
    drop()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        drop()


def official_dpt(root: Path, nclass: int, **head):
    with official_package(root):
        from model.semseg.dpt import DPT as Official
        torch.manual_seed(0)
        return Official("small", nclass=nclass, **head).eval()


@pytest.fixture(autouse=True)
def cuda_is_identity(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


def worst(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("batch, height, width", SHAPES)
def test_dpt_logits_equal_the_official_natural_model(batch, height, width):
    official = official_dpt(Path(OFFICIAL), 5, **HEAD)
    ours = DPT(5, "dinov2_small", **HEAD).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = worst(ours(x), official(x))
        torch.manual_seed(7)
        theirs = official(x, comp_drop=True)
        torch.manual_seed(7)
        dropped = worst(ours(x, comp_drop=True), theirs)
    print(f"natural {batch}x3x{height}x{width}: plain {plain:.2e}, comp_drop {dropped:.2e}")
    assert plain <= TOLERANCE and dropped <= TOLERANCE


@pytest.mark.parametrize("batch, height, width", SHAPES)
def test_siamese_dpt_logits_equal_the_official_remote_sensing_model(batch, height, width):
    official = official_dpt(Path(OFFICIAL) / "remote-sensing", 2, **HEAD)
    ours = SiameseDPT(2, "dinov2_small", in_channels=6, **HEAD).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(2)
    a, b = (torch.randn(batch, 3, height, width, generator=generator) for _ in range(2))
    pair = torch.cat([a, b], dim=1)
    with torch.no_grad():
        plain = worst(ours(pair), official(a, b))
        torch.manual_seed(7)
        theirs = official(a, b, comp_drop=True)
        torch.manual_seed(7)
        dropped = worst(ours(pair, comp_drop=True), theirs)
    print(f"siamese {batch}x6x{height}x{width}: plain {plain:.2e}, comp_drop {dropped:.2e}")
    assert plain <= TOLERANCE and dropped <= TOLERANCE


def test_the_official_evaluation_resize_is_what_our_model_does_for_other_sizes():
    """supervised.evaluate(multiplier=14): resize to int(side / 14 + 0.5) * 14, predict, resize back."""
    official = official_dpt(Path(OFFICIAL), 5, **HEAD)
    ours = DPT(5, "dinov2_small", **HEAD).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(1, 3, 61, 90, generator=torch.Generator().manual_seed(3))
    interpolate = torch.nn.functional.interpolate
    with torch.no_grad():
        inside = official(interpolate(x, (56, 84), mode="bilinear", align_corners=True))
        theirs = interpolate(inside, (61, 90), mode="bilinear", align_corners=True)
        difference = worst(ours(x), theirs)
    print(f"natural 1x3x61x90 (resized): {difference:.2e}")
    assert difference <= TOLERANCE


def test_the_official_small_model_has_the_parameters_our_key_list_says():
    """Built as unimatch_v2.py builds it: DPT(**model_configs['small'], nclass)."""
    official = official_dpt(Path(OFFICIAL), 21, features=64, out_channels=[48, 96, 192, 384])
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert shapes == official_dpt_shapes("small", 21)
    assert sum(p.numel() for p in official.parameters()) == sum(math.prod(s) for s in shapes.values())
