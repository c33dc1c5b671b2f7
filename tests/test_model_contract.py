"""The model contract (docs/architecture.md) for every model of the registry ``unimatch.models.MODELS``:
``model(x) -> logits``, ``model(x, need_fp=k) -> (logits, k perturbed decodings)``, the official
state-dict keys, and ``param_groups()`` for models with a backbone. A model added to the registry
must be added to ``CASES`` (its tiny and official configurations), or the first test fails."""
import dataclasses

import pytest
import torch

from helpers import deterministic
from official_keys import (OFFICIAL_DEEPLAB_HEAD_KEYS, OFFICIAL_PSPNET_HEAD_KEYS, RESNET50_BLOCKS, RESNET101_BLOCKS,
                           official_deep_stem_resnet_keys, official_dpt_shapes, official_unet_shapes)
from unimatch.config import Config
from unimatch.engine import build_optimizer
from unimatch.models import MODELS, build_model
from unimatch.models.architecture import mismatch_causes

TINY_RESNET = dict(backbone="tiny", width=8, reduce_channels=8, decoder_channels=16, dilations=[1, 2, 3])


def backbone_keys(blocks):
    return ["backbone." + k for k in official_deep_stem_resnet_keys(blocks)]


# model name -> (tiny config values, official config values, the official state-dict keys)
CASES = {
    "deeplabv3plus": (dict(nclass=3, **TINY_RESNET), dict(backbone="resnet101", nclass=21),
                      backbone_keys(RESNET101_BLOCKS) + OFFICIAL_DEEPLAB_HEAD_KEYS),
    "unet": (dict(nclass=4, in_channels=1, mean=[0.0], std=[1.0], feature_channels=[4, 8, 8, 16, 16]),
             dict(nclass=4, in_channels=1, mean=[0.0], std=[1.0]), list(official_unet_shapes())),
    "siamese_deeplabv3plus": (dict(nclass=2, in_channels=6, **TINY_RESNET),
                              dict(nclass=2, in_channels=6, backbone="resnet50"),
                              backbone_keys(RESNET50_BLOCKS) + OFFICIAL_DEEPLAB_HEAD_KEYS),
    "siamese_pspnet": (dict(nclass=2, in_channels=6, backbone="tiny", width=8),
                       dict(nclass=2, in_channels=6, backbone="resnet50",
                            replace_stride_with_dilation=[False, True, True]),
                       backbone_keys(RESNET50_BLOCKS) + OFFICIAL_PSPNET_HEAD_KEYS),
    "dpt": (dict(nclass=3, backbone="vit_tiny"), dict(nclass=21, backbone="dinov2_small"),
            list(official_dpt_shapes("small", 21))),
    "siamese_dpt": (dict(nclass=2, in_channels=6, backbone="vit_tiny"),
                    dict(nclass=2, in_channels=6, backbone="dinov2_base"), list(official_dpt_shapes("base", 2))),
}


def setup_module():
    deterministic()


def build(name, values, seed=0):
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(Config(), model=name, **values))


def batch(name, n=2, size=32):
    channels = CASES[name][0].get("in_channels", 3)
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_every_registered_model_has_a_case():
    assert set(CASES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
class TestModelContract:
    def test_plain_forward_gives_logits_at_the_input_size(self, name):
        model = build(name, CASES[name][0]).eval()
        with torch.no_grad():
            assert model(batch(name, 3, 32)).shape == (3, CASES[name][0]["nclass"], 32, 32)

    @pytest.mark.parametrize("k", [True, 2])
    def test_need_fp_k_gives_the_clean_logits_and_k_perturbed_decodings(self, name, k):
        model = build(name, CASES[name][0]).eval()  # eval: the perturbation still acts, as official
        x = batch(name)
        with torch.no_grad():
            logits, logits_fp = model(x, need_fp=k)
            plain = model(x)
        nclass, copies = CASES[name][0]["nclass"], int(k)
        assert logits.shape == (2, nclass, 32, 32) and logits_fp.shape == (2 * copies, nclass, 32, 32)
        torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
        decodings = logits_fp.split(2)
        assert all(not torch.allclose(d, plain, atol=1e-4) for d in decodings)
        if copies == 2:
            assert not torch.allclose(decodings[0], decodings[1]), "each copy draws its own channels"

    def test_state_dict_keys_are_the_official_ones(self, name):
        with torch.device("meta"):
            model = build(name, CASES[name][1])
        assert sorted(model.state_dict()) == sorted(CASES[name][2])

    def test_a_checkpoint_of_other_classes_or_channels_is_explained_in_config_keys(self, name):
        """load_model_weights names the cause first; every model must show its classes and input
        channels to that diagnosis (unimatch.models.architecture)."""
        values = CASES[name][0]
        channels = values.get("in_channels", 3)
        with torch.device("meta"):
            built = build(name, values).state_dict()
            saved = build(name, {**values, "nclass": values["nclass"] + 1, "in_channels": 2 * channels}).state_dict()
        reads = channels // 2 if name.startswith("siamese") else channels
        assert mismatch_causes(saved, built) == [
            f"the checkpoint's first convolution reads {2 * reads} channel(s), the model built from the config "
            f"reads {reads} (in_channels)",
            f"the checkpoint has {values['nclass'] + 1} classes, the config says nclass: {values['nclass']}"]

    def test_param_groups_split_backbone_and_head(self, name):
        model = build(name, CASES[name][0])
        if not hasattr(model, "backbone"):
            assert not hasattr(model, "param_groups")
            assert len(build_optimizer(model, Config(lr=0.1, lr_multi=10.0)).param_groups) == 1
            return
        backbone, head = model.param_groups()
        # the backbone parameters that train (a ViT's mask token never does), every other one
        assert {id(p) for p in backbone} == {id(p) for p in model.backbone.parameters() if p.requires_grad}
        named_head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        assert {id(p) for p in head} == {id(p) for p in named_head}
        frozen = [p for p in model.backbone.parameters() if not p.requires_grad]
        assert len(backbone) + len(frozen) + len(head) == len(list(model.parameters()))
        groups = build_optimizer(model, Config(lr=0.1, lr_multi=10.0)).param_groups
        assert [g["lr"] for g in groups] == [0.1, pytest.approx(1.0)]


def test_stem_width_and_model_family_are_explained_in_config_keys():
    with torch.device("meta"):
        official = build("deeplabv3plus", dict(nclass=21, **TINY_RESNET)).state_dict()
        seven_by_seven = build("deeplabv3plus", dict(nclass=21, deep_stem=False, **TINY_RESNET)).state_dict()
        wider = build("deeplabv3plus", dict(nclass=21, **{**TINY_RESNET, "width": 16})).state_dict()
        unet = build("unet", CASES["unet"][0]).state_dict()
    assert mismatch_causes(official, seven_by_seven) == [
        "the checkpoint's backbone has the deep 3-convolution stem, the config says deep_stem: false"]
    assert mismatch_causes(official, wider) == [
        "the checkpoint's backbone is 8 channels wide, the config says width: 16"]
    assert mismatch_causes(unet, official) == ["the checkpoint is a UNet, the config builds a DeepLabV3+ (model)"]
