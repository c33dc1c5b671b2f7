"""The UniMatch V2 model family (unimatch/models/vit.py, dpt.py): official keys, shapes and parameter
counts, Meta's DINOv2 files and official V2 checkpoints, complementary dropout, input sizes,
lock_backbone and the config's refusals (the model contract itself: tests/test_model_contract.py;
logits against the official code: tests/test_official_v2_oracle.py)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import deterministic
from official_keys import OFFICIAL_DINOV2_SIZES, official_dinov2_shapes, official_dpt_shapes
from unimatch.config import Config, load_config
from unimatch.engine import build_optimizer, load_model_weights
from unimatch.errors import CheckpointError, ConfigError
from unimatch.models import build_model
from unimatch.models.architecture import mismatch_causes
from unimatch.models.dpt import DPT, SiameseDPT, complementary_dropout_masks

TINY = dict(backbone="vit_tiny")


def setup_module():
    deterministic()


def tiny_dpt(nclass=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DPT(nclass, "vit_tiny", **kwargs).eval()


def image(n=2, channels=3, height=56, width=70, seed=1):
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed))


def shapes_of(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- official keys, shapes and sizes ------------------------------------------------------------
@pytest.mark.parametrize("size", ["small", "base"])
@pytest.mark.parametrize("family", [DPT, SiameseDPT])
def test_state_dict_keys_and_shapes_equal_the_official_dpt(size, family):
    channels = 6 if family is SiameseDPT else 3
    with torch.device("meta"):
        model = family(21, f"dinov2_{size}", in_channels=channels)
    assert shapes_of(model) == official_dpt_shapes(size, 21)


@pytest.mark.parametrize("size", sorted(OFFICIAL_DINOV2_SIZES))
def test_parameter_counts_equal_the_official_dpt_for_every_size(size):
    """Giant included: the SwiGLU feed-forward's width is the official rounding (4096 for 1536)."""
    with torch.device("meta"):
        model = DPT(21, f"dinov2_{size}")
    official = official_dpt_shapes(size, 21)
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for s in official.values())
    encoder = sum(math.prod(s) for k, s in official.items() if k.startswith("backbone."))
    assert sum(p.numel() for p in model.backbone.parameters()) == encoder


def test_giant_uses_the_swiglu_feed_forward_with_the_official_width():
    with torch.device("meta"):
        shapes = shapes_of(DPT(21, "dinov2_giant").backbone)
    assert shapes["blocks.0.mlp.w12.weight"] == (8192, 1536) and shapes["blocks.39.mlp.w3.weight"] == (1536, 4096)


# ---- Meta's DINOv2 files (pretrained:) ------------------------------------------------------------
def meta_style_file(path, embed_dim=128, depth=4, img_size=224, seed=5):
    """A DINOv2 backbone file as Meta releases it (keys of the official DinoVisionTransformer), at
    vit_tiny's size so that it is small; random values of a trained ViT's scale."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(s, generator=generator)
             for k, s in official_dinov2_shapes(embed_dim, depth, img_size=img_size).items()}
    torch.save(state, path)
    return state


def test_a_meta_dinov2_file_given_as_pretrained_fills_the_encoder(tmp_path):
    state = meta_style_file(tmp_path / "dinov2_tiny.pth")
    model = build_model(load_config(overrides=["model=dpt", "backbone=vit_tiny", "nclass=3",
                                               f"pretrained={tmp_path / 'dinov2_tiny.pth'}"]))
    loaded = model.backbone.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_one_gray_channel_reads_summed_rgb_kernels_which_equals_the_gray_image_repeated(tmp_path):
    meta_style_file(tmp_path / "dinov2_tiny.pth")
    gray = DPT(2, "vit_tiny", pretrained=tmp_path / "dinov2_tiny.pth", in_channels=1).eval()
    rgb = DPT(2, "vit_tiny", pretrained=tmp_path / "dinov2_tiny.pth", in_channels=3).eval()
    x = image(1, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(gray.backbone.patch_embed(x), rgb.backbone.patch_embed(x.repeat(1, 3, 1, 1)),
                                   atol=1e-5, rtol=1e-5)
        ours = gray.backbone.get_intermediate_layers(x)
        repeated = rgb.backbone.get_intermediate_layers(x.repeat(1, 3, 1, 1))
    for a, b in zip(ours, repeated):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_missing_file_or_a_file_of_another_size_is_one_line_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"^pretrained weights file not found: .*dinov2_vits14_pretrain.pth"):
        DPT(2, "dinov2_small", pretrained=tmp_path / "none.pth")
    # a ViT-B file, each tensor one stored number expanded (the file stays a few kilobytes)
    base = {k: torch.zeros(1).expand(s) for k, s in official_dinov2_shapes(*OFFICIAL_DINOV2_SIZES["base"]).items()}
    torch.save(base, tmp_path / "dinov2_vitb14_pretrain.pth")
    with torch.device("meta"):
        encoder = DPT(2, "dinov2_small").backbone
    from unimatch.models.vit import load_pretrained_vit
    with pytest.raises(CheckpointError) as error:
        load_pretrained_vit(encoder, tmp_path / "dinov2_vitb14_pretrain.pth")
    assert "\n" not in str(error.value)
    assert "holds dinov2_base (768 wide, 12 blocks); backbone dinov2_small is dinov2_small (384 wide, 12 blocks) " \
           "and needs Meta's dinov2_vits14_pretrain.pth" in str(error.value)


def test_a_file_missing_a_key_is_refused(tmp_path):
    state = meta_style_file(tmp_path / "dinov2_tiny.pth")
    del state["mask_token"]
    torch.save(state, tmp_path / "dinov2_tiny.pth")
    with pytest.raises(CheckpointError, match=r"does not fit backbone vit_tiny: missing \['mask_token'\]"):
        DPT(2, "vit_tiny", pretrained=tmp_path / "dinov2_tiny.pth")


# ---- official V2 checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("wrapped", [True, False])
def test_an_official_v2_checkpoint_loads_for_evaluation(tmp_path, wrapped):
    """unimatch_v2.py saves {'model', 'model_ema', 'optimizer', 'epoch', ...} of the DDP-wrapped models
    (keys ``module.``); its best.pth is chosen by the student's score, so 'model' is what evaluates.
    A bare state dict with the prefix loads too."""
    from unimatch.cli import load_trained_model

    student, teacher = tiny_dpt(seed=1), tiny_dpt(seed=2)
    module = {f"module.{k}": v for k, v in student.state_dict().items()}
    saved = {"model": module, "model_ema": {f"module.{k}": v for k, v in teacher.state_dict().items()},
             "optimizer": {"state": {}, "param_groups": []}, "epoch": 59, "previous_best": 80.1,
             "previous_best_ema": 80.5, "best_epoch": 57, "best_epoch_ema": 58} if wrapped else module
    torch.save(saved, tmp_path / "best.pth")
    cfg = load_config(overrides=["model=dpt", "backbone=vit_tiny", "nclass=3"])
    model = load_trained_model(cfg, tmp_path / "best.pth", torch.device("cpu"))
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), student(x), atol=0, rtol=0)


def test_a_checkpoint_of_another_vit_size_is_explained_in_config_keys():
    with torch.device("meta"):
        small = DPT(21, "dinov2_small").state_dict()
        base = DPT(21, "dinov2_base").state_dict()
    assert mismatch_causes(base, small)[0] == ("the checkpoint's backbone is dinov2_base (768 wide, 12 blocks), the "
                                               "config builds dinov2_small (384 wide, 12 blocks) (backbone)")


# ---- feature perturbation (need_fp) ----------------------------------------------------------------
@pytest.mark.parametrize("family", [DPT, SiameseDPT])
def test_need_fp_drops_whole_channels_of_each_of_the_four_features(family, monkeypatch):
    """The head receives cat(features, k dropout2d copies) for every feature it decodes: each copy's
    channel is either zero or the clean one times 2."""
    torch.manual_seed(0)
    channels = 6 if family is SiameseDPT else 3
    model = family(3, "vit_tiny", in_channels=channels).eval()
    x = image(2, channels, 42, 56)
    seen = []
    decode = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda features: seen.append(list(features)) or decode(features))
    with torch.no_grad():
        clean = model.encoder_features(x)
        model(x, need_fp=2)
    assert len(seen) == 1 and len(seen[0]) == 4
    for feature, fed in zip(clean, seen[0]):
        assert torch.equal(fed[:2], feature)
        for copy in fed[2:].split(2):
            dropped = copy.abs().amax(dim=(2, 3)) == 0
            assert 0.3 < dropped.float().mean() < 0.7
            torch.testing.assert_close(copy, 2 * feature * ~dropped[:, :, None, None])


# ---- complementary dropout --------------------------------------------------------------------------
def reference_masks(seed, batch, channels):
    """The official draw, written here from the paper's code: Binomial(0.5) x 2 for the first half,
    its complement for the second, then int(half * 0.5) random pairs kept whole."""
    torch.manual_seed(seed)
    half = batch // 2
    first = torch.distributions.Binomial(probs=0.5).sample((half, channels)) * 2.0
    kept = torch.randperm(half)[:half // 2]
    first[kept] = 1.0
    second = 2.0 - first
    return torch.cat([first, second]), kept


@pytest.mark.parametrize("batch", [2, 4, 8])
def test_masks_are_complementary_with_half_the_pairs_kept_and_the_official_draws(batch):
    torch.manual_seed(11)
    masks = complementary_dropout_masks(batch, 64)
    expected, kept = reference_masks(11, batch, 64)
    assert torch.equal(masks, expected)
    half = batch // 2
    first, second = masks[:half], masks[half:]
    assert torch.equal(first + second, torch.full_like(first, 2.0))
    whole = (first == 1.0).all(dim=1)
    assert sorted(torch.nonzero(whole).flatten().tolist()) == sorted(kept.tolist()) and int(whole.sum()) == half // 2
    dropped = first[~whole]
    assert set(dropped.unique().tolist()) <= {0.0, 2.0} and 0.3 < (dropped == 0).float().mean() < 0.7


def test_an_odd_batch_is_refused():
    with pytest.raises(ValueError, match="even batch"):
        complementary_dropout_masks(3, 8)


@pytest.mark.parametrize("family", [DPT, SiameseDPT])
def test_comp_drop_multiplies_every_encoder_feature_by_the_seeded_masks(family):
    """model(x, comp_drop=True) equals the head decoding the four features (the siamese
    differences) times the reference masks of the same seed."""
    torch.manual_seed(0)
    channels = 6 if family is SiameseDPT else 3
    model = family(3, "vit_tiny", in_channels=channels).eval()
    x = image(4, channels, 56, 70)
    with torch.no_grad():
        torch.manual_seed(21)
        got = model(x, comp_drop=True)
        features = model.encoder_features(x)
        masks, _ = reference_masks(21, 4, features[0].shape[1])
        expected = model.head([f * masks[:, :, None, None] for f in features])
        expected = F.interpolate(expected, (56, 70), mode="bilinear", align_corners=True)
        plain = model(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-4)
    assert model.supports_comp_drop


# ---- input sizes --------------------------------------------------------------------------------------
def test_sides_that_are_multiples_of_14_go_through_unresized():
    model = tiny_dpt()
    x = image(2, 3, 56, 70)
    with torch.no_grad():
        logits = model(x)
        head = model.head(model.encoder_features(x))
    assert torch.equal(logits, F.interpolate(head, (56, 70), mode="bilinear", align_corners=True))


@pytest.mark.parametrize("height, width, model_size", [(64, 90, (70, 84)), (32, 20, (28, 14)), (5, 50, (14, 56))])
def test_other_sides_are_resized_to_the_nearest_multiples_of_14_and_back(height, width, model_size):
    """The official evaluation's rounding, int(side / 14 + 0.5) * 14 (at least 14 here)."""
    model = tiny_dpt()
    x = image(1, 3, height, width)
    with torch.no_grad():
        logits = model(x)
        inside = model(F.interpolate(x, model_size, mode="bilinear", align_corners=True))
    expected = F.interpolate(inside, (height, width), mode="bilinear", align_corners=True)
    assert torch.equal(logits, expected)


def test_the_position_embedding_is_resampled_only_off_its_stored_grid():
    encoder = tiny_dpt().backbone
    assert encoder.position_embedding(224, 224) is encoder.pos_embed
    resampled = encoder.position_embedding(56, 70)
    assert resampled.shape == (1, 1 + 4 * 5, 128)
    assert torch.equal(resampled[:, 0], encoder.pos_embed[:, 0])
    # DINOv2's arithmetic: bicubic by the scale factor (patches + 0.1) / stored grid, not to a size
    grid = encoder.pos_embed[:, 1:].reshape(1, 16, 16, 128).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(4.1 / 16, 5.1 / 16), mode="bicubic")
    assert torch.equal(resampled[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 20, 128))


def test_the_siamese_model_decodes_the_absolute_difference_of_the_two_dates_features():
    torch.manual_seed(0)
    siamese = SiameseDPT(2, "vit_tiny", in_channels=6).eval()
    single = DPT(2, "vit_tiny").eval()
    single.load_state_dict(siamese.state_dict())
    a, b = image(2, 3, 42, 56, seed=1), image(2, 3, 42, 56, seed=2)
    with torch.no_grad():
        differences = siamese.encoder_features(torch.cat([a, b], dim=1))
        expected = [(fa - fb).abs() for fa, fb in zip(single.encoder_features(a), single.encoder_features(b))]
        swapped = siamese(torch.cat([b, a], dim=1))
        logits = siamese(torch.cat([a, b], dim=1))
    for got, want in zip(differences, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(swapped, logits, atol=1e-6, rtol=1e-6)


# ---- config: lock_backbone and refusals -----------------------------------------------------------------
def test_lock_backbone_freezes_the_encoder_and_leaves_it_out_of_the_optimiser():
    cfg = load_config(overrides=["model=dpt", "backbone=vit_tiny", "nclass=3", "lock_backbone=true"])
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    backbone, head = model.param_groups()
    assert backbone == [] and all(p.requires_grad for p in model.head.scratch.output_conv.parameters())
    optimizer = build_optimizer(model, cfg)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.head.parameters()))
    unlocked = build_model(dataclasses.replace(cfg, lock_backbone=False))
    assert [p.requires_grad for n, p in unlocked.backbone.named_parameters()].count(False) == 1   # mask_token


def test_a_backward_pass_reaches_every_trained_parameter():
    """DDP runs with find_unused_parameters=False: every parameter that requires grad must get one
    (the mask token and the deepest fusion block's unused residual unit are frozen for it)."""
    model = tiny_dpt().train()
    model(image(2), comp_drop=True).sum().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["backbone.mask_token"] + [f"head.scratch.refinenet4.resConfUnit1.{c}.{t}"
                                                for c in ("conv1", "conv2") for t in ("bias", "weight")]


@pytest.mark.parametrize("overrides, message", [
    (["model=dpt"], "backbone: 'resnet101' is not a ViT encoder of model dpt; choose one of dinov2_small, "
                    "dinov2_base, dinov2_large, dinov2_giant, vit_tiny"),
    (["model=siamese_dpt", "backbone=dinov2_huge", "in_channels=6"],
     "backbone: 'dinov2_huge' is not a ViT encoder of model siamese_dpt; choose one of dinov2_small, dinov2_base, "
     "dinov2_large, dinov2_giant, vit_tiny"),
    (["model=dpt", "backbone=dinov2_small", "pretrained=synthetic"],
     "pretrained: synthetic trains only the demo ViT vit_tiny; backbone dinov2_small starts from Meta's "
     "dinov2_vits14_pretrain.pth (DINOv2 release), or pretrained: null"),
])
def test_a_value_the_dpt_cannot_build_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=overrides)
    assert str(error.value) == message
    with pytest.raises(ConfigError):   # also when the config was not validated
        build_model(dataclasses.replace(Config(), **dict(o.split("=") for o in overrides)))
