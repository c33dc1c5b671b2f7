"""Backbones and DeepLabV3+: official state-dict keys and shapes, weight loading, output stride, the FP stream
(the model contract itself: tests/test_model_contract.py)."""
import pytest
import torch
import torchvision

from helpers import deterministic, tiny_deeplab
from official_keys import official_deep_stem_resnet_keys
from unimatch.errors import CheckpointError
from unimatch.models.backbones import build_backbone, load_backbone_weights
from unimatch.models.deeplabv3plus import DeepLabV3Plus

def setup_module():
    deterministic()


def meta_state_dict(build):
    with torch.device("meta"):
        return build().state_dict()


@pytest.mark.parametrize("name, blocks", [("resnet50", (3, 4, 6, 3)), ("resnet101", (3, 4, 23, 3))])
def test_deep_stem_keys_match_the_official_resnet(name, blocks):
    state = meta_state_dict(lambda: build_backbone(name, deep_stem=True))
    assert sorted(state) == sorted(official_deep_stem_resnet_keys(blocks))


def test_deep_stem_resnet50_shapes_match_the_official_resnet():
    state = meta_state_dict(lambda: build_backbone("resnet50", deep_stem=True))
    expected = {
        "conv1.0.weight": (64, 3, 3, 3), "conv1.1.weight": (64,), "conv1.3.weight": (64, 64, 3, 3),
        "conv1.4.running_var": (64,), "conv1.6.weight": (128, 64, 3, 3), "bn1.weight": (128,),
        "layer1.0.conv1.weight": (64, 128, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 128, 1, 1), "layer1.1.conv1.weight": (64, 256, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3), "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1), "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1), "layer4.2.bn3.bias": (2048,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101"])
def test_torchvision_flavour_keys_equal_torchvision_without_fc(name):
    ours = meta_state_dict(lambda: build_backbone(name, deep_stem=False))
    theirs = meta_state_dict(lambda: getattr(torchvision.models, name)())
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_deeplabv3plus_head_shapes_match_the_official_model():
    """Shapes of the official DeepLabV3+ head (its keys: tests/test_model_contract.py)."""
    state = meta_state_dict(lambda: DeepLabV3Plus(21, "resnet101"))
    shapes = {"head.b0.0.weight": (256, 2048, 1, 1), "head.b1.0.weight": (256, 2048, 3, 3),
              "head.project.0.weight": (256, 1280, 1, 1), "reduce.0.weight": (48, 256, 1, 1),
              "fuse.0.weight": (256, 304, 3, 3), "fuse.3.weight": (256, 256, 3, 3),
              "classifier.weight": (21, 256, 1, 1)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


# ---- loading pretrained backbone files --------------------------------------------------
def tiny_backbone(seed, **kwargs):
    torch.manual_seed(seed)
    return build_backbone("tiny", replace_stride_with_dilation=(False, False, True), width=8, **kwargs)


def imagenet_file(tmp_path, source, prefix="", drop=(), extra=None, name="resnet.pth"):
    """A backbone file as distributed: backbone keys plus an ImageNet classifier (fc.*)."""
    state = {k: v for k, v in source.state_dict().items() if k not in drop}
    state["fc.weight"] = torch.randn(1000, source.channels[-1])
    state["fc.bias"] = torch.randn(1000)
    state.update(extra or {})
    path = tmp_path / name
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_backbone_weights_fills_every_key_and_ignores_fc(tmp_path, prefix):
    source = tiny_backbone(seed=1)
    with torch.no_grad():
        for buffer in source.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)  # running stats differ from a fresh model's
    target = tiny_backbone(seed=2)
    load_backbone_weights(target, imagenet_file(tmp_path, source, prefix))
    expected, got = source.state_dict(), target.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_build_backbone_loads_the_file_given_as_pretrained(tmp_path):
    source = tiny_backbone(seed=1)
    path = imagenet_file(tmp_path, source)
    model = tiny_backbone(seed=3, pretrained=str(path))
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], source.state_dict()["layer4.0.conv2.weight"])


def test_missing_key_raises_and_names_it(tmp_path):
    path = imagenet_file(tmp_path, tiny_backbone(seed=1), drop=("layer2.0.conv1.weight",))
    with pytest.raises(CheckpointError, match=r"missing \['layer2.0.conv1.weight'\]"):
        load_backbone_weights(tiny_backbone(seed=2), path)


def test_extra_key_raises_and_names_it(tmp_path):
    path = imagenet_file(tmp_path, tiny_backbone(seed=1), extra={"layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected \['layer5.0.conv1.weight'\]"):
        load_backbone_weights(tiny_backbone(seed=2), path)


def test_wrong_flavour_or_shape_raises(tmp_path):
    path = imagenet_file(tmp_path, tiny_backbone(seed=1, deep_stem=False))
    with pytest.raises(CheckpointError, match="conv1.0.weight"):
        load_backbone_weights(tiny_backbone(seed=2, deep_stem=True), path)
    wide = imagenet_file(tmp_path, build_backbone("tiny", width=16), name="wide.pth")
    with pytest.raises(CheckpointError, match="shape mismatch.*conv1.0.weight"):
        load_backbone_weights(tiny_backbone(seed=2), wide)
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(tiny_backbone(seed=2), tmp_path / "absent.pth")


def test_missing_num_batches_tracked_is_tolerated(tmp_path):
    """Files without BatchNorm's counter (older torch) load every other tensor; the counters keep their values."""
    source = tiny_backbone(seed=1)
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if name.endswith("num_batches_tracked"):
                buffer.fill_(7)
    drop = tuple(k for k in source.state_dict() if k.endswith("num_batches_tracked"))
    assert drop
    target = tiny_backbone(seed=2)
    counters = {k: v.clone() for k, v in target.state_dict().items() if k in drop}
    load_backbone_weights(target, imagenet_file(tmp_path, source, drop=drop))
    expected, got = source.state_dict(), target.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected if k not in drop)
    assert all(torch.equal(got[k], counters[k]) for k in drop)


# ---- output stride ------------------------------------------------------------------------
@pytest.mark.parametrize("dilation, stride", [((False, False, False), 32), ((False, False, True), 16),
                                              ((False, True, True), 8)])
def test_output_stride_with_replace_stride_with_dilation(dilation, stride):
    torch.manual_seed(0)
    backbone = build_backbone("tiny", replace_stride_with_dilation=dilation, width=4)
    c1, c2, c3, c4 = backbone.base_forward(torch.randn(1, 3, 64, 64))
    assert c1.shape[-1] == 64 // 4 and c4.shape[-1] == 64 // stride
    assert [c.shape[1] for c in (c1, c2, c3, c4)] == [4, 8, 16, 32]


@pytest.mark.parametrize("dilation, grids", [((False, False, True), [2, 4, 8]), ((False, True, True), [4, 8, 16])])
def test_multi_grid_dilations_of_layer4_as_official(dilation, grids):
    """Official: layer4 block i dilation = base dilation x (2, 2, 4)[i], the first block from the
    previous stage's dilation."""
    with torch.device("meta"):
        backbone = build_backbone("resnet50", replace_stride_with_dilation=dilation, multi_grid=True)
    assert [block.conv2.dilation[0] for block in backbone.layer4] == grids
    assert [block.conv2.padding[0] for block in backbone.layer4] == grids


# ---- DeepLabV3+ and its feature-perturbation stream ---------------------------------------
def capture(model):
    """Hooks recording c1/c4 (backbone outputs) and what ``reduce`` and ``head`` receive."""
    seen = {}
    hooks = [
        model.backbone.layer1.register_forward_hook(lambda m, i, o: seen.__setitem__("c1", o.detach().clone())),
        model.backbone.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("c4", o.detach().clone())),
        model.reduce.register_forward_pre_hook(lambda m, i: seen.__setitem__("reduce", i[0].detach().clone())),
        model.head.register_forward_pre_hook(lambda m, i: seen.__setitem__("head", i[0].detach().clone())),
    ]
    return seen, hooks


def dropped_channels(clean, perturbed):
    """Which whole channels were zeroed, over the channels whose clean map is not all zero (a
    ReLU-dead channel looks the same dropped or kept); fails unless every perturbed channel map
    is either all zero or the clean map scaled by 1 / (1 - 0.5)."""
    informative = clean.flatten(2).abs().amax(-1) > 0
    assert informative.float().mean() > 0.5
    zero = (perturbed == 0).flatten(2).all(-1)
    scaled = torch.isclose(perturbed, 2 * clean, rtol=1e-5, atol=1e-6).flatten(2).all(-1)
    assert (zero ^ scaled)[informative].all(), "Dropout2d must zero whole channels and rescale the others by 2"
    return zero[informative]


@pytest.mark.parametrize("need_fp, copies", [(True, 1), (2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_fp_stream_drops_whole_channels_of_every_decoder_input(need_fp, copies, training):
    torch.manual_seed(0)
    model = tiny_deeplab(nclass=3).train(training)
    x = torch.randn(6, 3, 64, 64)
    seen, hooks = capture(model)
    out, out_fp = model(x, need_fp=need_fp)
    for hook in hooks:
        hook.remove()
    n = x.shape[0]
    assert out.shape == (n, 3, 64, 64) and out_fp.shape == (copies * n, 3, 64, 64)
    for feature, module in (("c1", "reduce"), ("c4", "head")):
        clean, decoded = seen[feature], seen[module]
        assert decoded.shape[0] == (copies + 1) * n
        assert torch.equal(decoded[:n], clean), f"the clean half of {module}'s input must be untouched"
        masks = [dropped_channels(clean, decoded[(k + 1) * n:(k + 2) * n]) for k in range(copies)]
        for mask in masks:
            assert 0.25 < mask.float().mean().item() < 0.75  # p = 0.5 over N x C channels
        if copies == 2:
            assert not torch.equal(masks[0], masks[1]), "each FP copy draws its own channels"


def test_plain_forward_has_no_other_dropout():
    """Only the FP stream drops channels: two train-mode forwards of the same batch are equal
    (the official ASPP has no dropout)."""
    model = tiny_deeplab().train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert torch.equal(first, model(x))
