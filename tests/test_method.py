"""The UniMatch step: the loss of one iteration against the paper's formula, computed here
independently, and which streams each method runs.

The model is a toy whose train and eval modes differ (BatchNorm with non-trivial running
statistics) and whose feature perturbation is a fixed channel mask, so every number of the step
can be recomputed: which forward a prediction came from, in which mode and with which batch,
changes the loss and would make these tests fail.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import TinySegmentationSet, deterministic, tiny_config
from unimatch.config import Config
from unimatch.distributed import DistContext
from unimatch.engine import Trainer
from unimatch.losses import CrossEntropyDice
from unimatch.method import StepSettings, UniMatchStep
from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
from unimatch.report import EvalResult

NCLASS, SIZE, N_L, N_U = 3, 16, 2, 3
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def setup_module():
    deterministic()


class ToyNet(nn.Module):
    """1x1 conv + BatchNorm. ``need_fp=k`` decodes the clean features and k copies multiplied by
    fixed channel masks (x2, like Dropout2d's rescaling) in one BatchNorm batch, as the real
    models decode clean and perturbed features in one forward. Every call is recorded."""

    def __init__(self, in_channels=3, nclass=NCLASS):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, nclass, 1)
        self.bn = nn.BatchNorm2d(nclass)
        with torch.no_grad():
            self.conv.weight.mul_(6.0)
            self.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, nclass))
            self.bn.running_var.fill_(3.0)
        self.fp_masks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])[:, :nclass]
        self.calls = []

    def forward(self, x, need_fp=False):
        self.calls.append({"n": x.shape[0], "need_fp": need_fp, "training": self.training,
                           "grad": torch.is_grad_enabled()})
        features = self.conv(x)
        if not need_fp:
            return self.bn(features)
        copies = [features * 2 * self.fp_masks[k].view(1, -1, 1, 1) for k in range(int(need_fp))]
        out = self.bn(torch.cat([features] + copies))
        return out[:x.shape[0]], out[x.shape[0]:]


class RecordingPerturbation(StrongPerturbation):
    """The real perturbation; it also keeps what it was given and what it drew."""

    def __init__(self, settings, seed=0):
        super().__init__(settings, torch.Generator().manual_seed(seed))
        self.views, self.boxes = [], []

    def __call__(self, images):
        out = super().__call__(images)
        self.views.append((images.clone(), out.clone()))
        return out

    def cutmix_boxes(self, n, height, width, device=None):
        boxes = super().cutmix_boxes(n, height, width, device)
        self.boxes.append(boxes.clone())
        return boxes


def batch(seed=0, channels=3, ignore=True):
    """A labelled batch (uint8 images, masks with 255), weak views with padding, and partners
    padded elsewhere, so a CutMix box that takes the wrong ignore mask changes the loss.
    ``ignore=False``: no 255 anywhere, like the official ACDC batches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N_L, channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.randint(0, NCLASS, (N_L, SIZE, SIZE), generator=g)
    if ignore:
        y[:, 0] = 255
    weak = torch.randint(0, 256, (N_U, channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    partner = torch.randint(0, 256, (N_U, channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    ignore_w = torch.zeros(N_U, SIZE, SIZE, dtype=torch.long)
    ignore_m = torch.zeros(N_U, SIZE, SIZE, dtype=torch.long)
    if ignore:
        ignore_w[:, -5:] = 255          # bottom rows padded
        ignore_m[:, :, :SIZE // 2] = 255  # the partner's left half padded
    return (x, y), (weak, ignore_w), (partner, ignore_m)


def make_step(method="unimatch", unsup_loss="ce", criterion=None, channels=3, seed=0, **changes):
    cfg = dataclasses.replace(Config(method=method, unsup_loss=unsup_loss, conf_thresh=0.7, cutmix_p=1.0,
                                     in_channels=channels), **changes)
    cfg.validate()
    torch.manual_seed(seed)
    model = ToyNet(channels).train()
    perturbation = RecordingPerturbation(PerturbationSettings.from_config(cfg), seed)
    step = UniMatchStep(model, StepSettings.from_config(cfg), criterion or nn.CrossEntropyLoss(ignore_index=255),
                        perturbation, Normalizer(MEAN, STD, channels), NCLASS)
    return step, model, perturbation


def normalize(images):
    """(x - mean) / std per channel of images in [0, 1] (uint8 images are divided by 255 first)."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    channels = images.shape[1]
    mean = torch.tensor(MEAN * (channels // 3)).view(1, -1, 1, 1)
    std = torch.tensor(STD * (channels // 3)).view(1, -1, 1, 1)
    return (images - mean) / std


def official_dice(probs, target, ignore, nclass=NCLASS):
    keep = ignore != 1
    loss = 0.0
    for c in range(nclass):
        s, t = probs[:, c][keep], (target[keep] == c).float()
        loss = loss + 1 - (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
    return loss / nclass


def expected_loss(model_before, perturbation, batches, strong_views, fp_streams, strong_weight, fp_weight,
                  thresh=0.7, dice=False, variant=None):
    """The paper's step written out: partner labels from an eval-mode no-grad forward; one
    train-mode forward of cat(x, weak) with the FP stream; one forward of cat(strong views);
    CutMix boxes take the partner's label, confidence and ignore mask; unlabelled CE summed
    over confident, non-ignored pixels and divided by the non-ignored pixels.

    ``variant`` names a deliberate deviation, used to show the test tells it apart.
    """
    (x, y), (weak, ignore_w), (partner, ignore_m) = batches
    model = copy.deepcopy(model_before)
    model.calls = []
    weak_u, partner_u = weak.float() / 255, partner.float() / 255

    if variant != "partner_from_batch":
        with torch.no_grad():
            model.train(variant == "partner_in_train_mode")
            conf_m, label_m = model(normalize(partner_u)).softmax(1).max(1)
    model.train()
    inputs = torch.cat((normalize(x), normalize(weak_u)))
    if fp_streams:
        preds, preds_fp = model(inputs, need_fp=fp_streams)
        preds_fp = preds_fp.view(fp_streams, -1, *preds_fp.shape[1:])[:, N_L:]
    else:
        preds = model(inputs)
    pred_x, pred_w = preds[:N_L], preds[N_L:]
    if variant == "weak_alone":
        pred_w = model(normalize(weak_u))
    conf_w, label_w = pred_w.detach().softmax(1).max(1)
    if variant == "partner_from_batch":  # image i's partner is image i-1; its label from the weak forward
        conf_m, label_m = conf_w.roll(1, 0), label_w.roll(1, 0)

    views = []
    for (_, strong), box in zip(perturbation.views, perturbation.boxes):
        own, pasted = strong[:N_U], strong[N_U:]
        views.append(torch.where(box.unsqueeze(1), pasted, own))
    if variant == "views_apart":
        preds_s = [model(normalize(v)) for v in views]
    else:
        preds_s = model(normalize(torch.cat(views))).chunk(len(views)) if views else []

    def unsup(pred, label, conf, ignore):
        valid = ignore != 255
        if dice:
            return official_dice(pred.softmax(1), label, ~((conf >= thresh) & valid))
        confident = (conf >= thresh) & valid
        ce = F.cross_entropy(pred, label, reduction="none")
        divisor = confident.sum() if variant == "divide_by_confident" else valid.sum()
        return (ce * confident).sum() / divisor

    loss_x = F.cross_entropy(pred_x, y, ignore_index=255)
    if dice:
        # 255 labels (crop padding, absent from the official ACDC batches) are left out of the Dice too
        loss_x = (loss_x + official_dice(pred_x.softmax(1), y, (y == 255).long())) / 2
    strong_losses = []
    for box, pred_s in zip(perturbation.boxes, preds_s):
        if variant == "no_label_mix":
            box = torch.zeros_like(box)
        label = torch.where(box, label_m, label_w)
        conf = torch.where(box, conf_m, conf_w)
        ignore = ignore_w if variant == "own_ignore_in_box" else torch.where(box, ignore_m, ignore_w)
        strong_losses.append(unsup(pred_s, label, conf, ignore))
    fp_losses = [unsup(p, label_w, conf_w, ignore_w) for p in preds_fp] if fp_streams else []
    loss = (loss_x + strong_weight * sum(strong_losses) + fp_weight * sum(fp_losses)) / 2
    mask_ratio = ((conf_w >= thresh) & (ignore_w != 255)).sum() / (ignore_w != 255).sum()
    return loss.item(), {"loss_x": loss_x.item(), "mask_ratio": mask_ratio.item(),
                         "loss_s": (sum(strong_losses) / len(strong_losses)).item() if strong_losses else 0.0,
                         "loss_w_fp": (sum(fp_losses) / len(fp_losses)).item() if fp_losses else 0.0}


def run_step(step, model, batches):
    before = copy.deepcopy(model)
    model.calls = []
    loss, stats = step(*batches)
    return before, loss, stats


# ---- spec 1: the loss of one step is the paper's formula ------------------------------------------
def test_unimatch_loss_equals_the_formula():
    step, model, perturbation = make_step()
    batches = batch()
    before, loss, stats = run_step(step, model, batches)
    # (L_sup + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2
    expected, parts = expected_loss(before, perturbation, batches, 2, 1, 0.25, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for key, value in parts.items():
        assert stats[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    # the batch makes every ingredient matter: some pixels confident, some not, boxes everywhere
    assert 0.05 < stats["mask_ratio"] < 0.95
    assert all(box.flatten(1).any(1).all() for box in perturbation.boxes)
    # ... and each deviation from the paper gives a different number
    for variant in ("partner_in_train_mode", "weak_alone", "views_apart", "divide_by_confident", "no_label_mix",
                    "own_ignore_in_box"):
        wrong, _ = expected_loss(before, perturbation, batches, 2, 1, 0.25, 0.5, variant=variant)
        assert abs(wrong - expected) > 1e-4 * abs(expected), variant


def test_partner_from_batch_takes_the_previous_image_and_its_weak_prediction():
    """Opt-in (not the paper): the CutMix partner of image i is image i-1 of the same unlabelled
    batch, with its ignore mask, and its pseudo-label comes from the train-mode weak forward:
    two forwards instead of three, and the partner batch is not used."""
    step, model, perturbation = make_step(partner_from_batch=True)
    (x, y), (weak, ignore_w), _ = batch(seed=7)
    rolled = ((x, y), (weak, ignore_w), (weak.roll(1, 0), ignore_w.roll(1, 0)))
    before = copy.deepcopy(model)
    model.calls = []
    loss, stats = step((x, y), (weak, ignore_w))
    assert model.calls == [
        {"n": N_L + N_U, "need_fp": 1, "training": True, "grad": True},   # cat(x, weak)
        {"n": 2 * N_U, "need_fp": False, "training": True, "grad": True},  # cat(strong views)
    ]
    for images, _ in perturbation.views:  # each view perturbs the batch and the batch rolled by one
        assert torch.equal(images, torch.cat((weak, weak.roll(1, 0))).float() / 255)
    expected, parts = expected_loss(before, perturbation, rolled, 2, 1, 0.25, 0.5, variant="partner_from_batch")
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss_s"] == pytest.approx(parts["loss_s"], rel=1e-5)
    # the eval-mode partner labels of the paper's step give another loss on the same views
    paper, _ = expected_loss(before, perturbation, rolled, 2, 1, 0.25, 0.5)
    assert abs(paper - expected) > 1e-4 * abs(expected)


@pytest.mark.parametrize("changes", [{}, {"partner_from_batch": True}, {"dist_align": True, "class_thresh": True}])
def test_gradient_reaches_the_model_and_not_through_pseudo_labels(changes):
    step, model, _ = make_step(**changes)
    seen = []
    unsup_loss = step.unsup_loss

    def recording(logits, pseudo_label, confidence, ignore_mask, thresholds=None):
        seen.append((logits, pseudo_label, confidence, thresholds))
        return unsup_loss(logits, pseudo_label, confidence, ignore_mask, thresholds)

    step.unsup_loss = recording
    loss, _ = step(*batch())
    # every unlabelled loss (2 strong views, 1 FP stream) learns through its prediction only: its
    # pseudo-labels, their confidences (the weak and the partner's, mixed in the box) and thresholds
    # come from detached or no-grad predictions
    assert len(seen) == 3
    for logits, pseudo_label, confidence, thresholds in seen:
        assert logits.requires_grad
        assert not pseudo_label.requires_grad and not confidence.requires_grad
        assert pseudo_label.grad_fn is None and confidence.grad_fn is None
        assert thresholds is None or not thresholds.requires_grad
    # the partners' forward ran without autograd
    assert [call["grad"] for call in model.calls] == [True, True] if changes.get("partner_from_batch") \
        else [call["grad"] for call in model.calls] == [False, True, True]
    loss.backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0


def test_strong_views_are_perturbed_copies_with_the_partner_in_the_box():
    step, model, perturbation = make_step(seed=3)
    (x, y), (weak, ignore_w), (partner, ignore_m) = batches = batch(seed=3)
    step(*batches)
    assert len(perturbation.views) == 2 and len(perturbation.boxes) == 2
    for images, strong in perturbation.views:
        # each view perturbs both the unlabelled images and their partners (independent draws)
        assert torch.equal(images, torch.cat((weak, partner)).float() / 255)
        assert not torch.equal(strong[:N_U], images[:N_U])
    assert not torch.equal(perturbation.views[0][1], perturbation.views[1][1])
    assert not torch.equal(perturbation.boxes[0], perturbation.boxes[1])


def test_pair_images_share_one_box_over_all_channels():
    step, model, perturbation = make_step(channels=6)
    (_, _), (weak, _), (partner, _) = batch(channels=6)
    views = step.strong_views(weak.float() / 255, partner.float() / 255)
    for (view, box), (_, strong) in zip(views, perturbation.views):
        expected = torch.where(box.unsqueeze(1), strong[N_U:], strong[:N_U])
        assert view.shape == (N_U, 6, SIZE, SIZE) and torch.equal(view, expected)


def test_fp_streams_two_copies_average_their_losses():
    step, model, perturbation = make_step(fp_streams=2)
    batches = batch(seed=1)
    before, loss, stats = run_step(step, model, batches)
    # two FP copies, each weighted 0.5 / 2
    expected, parts = expected_loss(before, perturbation, batches, 2, 2, 0.25, 0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss_w_fp"] == pytest.approx(parts["loss_w_fp"], rel=1e-5)


def test_dice_variant_as_the_official_medical_code():
    """ACDC: labelled (CE + Dice) / 2; unlabelled Dice with low-confidence pixels ignored."""
    step, model, perturbation = make_step(unsup_loss="dice", criterion=CrossEntropyDice(NCLASS))
    batches = batch(seed=2, ignore=False)
    before, loss, stats = run_step(step, model, batches)
    expected, parts = expected_loss(before, perturbation, batches, 2, 1, 0.25, 0.5, dice=True)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss_s"] == pytest.approx(parts["loss_s"], rel=1e-5)
    assert stats["loss_w_fp"] == pytest.approx(parts["loss_w_fp"], rel=1e-5)


def test_dice_variant_also_ignores_padded_pixels():
    step, model, perturbation = make_step(unsup_loss="dice", criterion=CrossEntropyDice(NCLASS))
    batches = batch(seed=2, ignore=True)
    before, loss, _ = run_step(step, model, batches)
    expected, _ = expected_loss(before, perturbation, batches, 2, 1, 0.25, 0.5, dice=True)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---- spec 2: each method runs exactly its streams, with its weights --------------------------------
METHODS = {
    # method: (strong views, fp streams, weight of each strong view, weight of each fp stream)
    "unimatch": (2, 1, 0.25, 0.5),
    "fixmatch": (1, 0, 1.0, 0.0),     # (L_x + L_s) / 2, as the official fixmatch.py
    "uniperb": (1, 1, 0.5, 0.5),
    "dusperb": (2, 0, 0.5, 0.0),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_streams_and_weights(method):
    views, fp, strong_weight, fp_weight = METHODS[method]
    step, model, perturbation = make_step(method=method)
    batches = batch(seed=5)
    before, loss, stats = run_step(step, model, batches)
    expected_calls = [
        {"n": N_U, "need_fp": False, "training": False, "grad": False},          # partner pseudo-labels
        {"n": N_L + N_U, "need_fp": fp if fp else False, "training": True, "grad": True},  # cat(x, weak)
        {"n": views * N_U, "need_fp": False, "training": True, "grad": True},    # cat(strong views)
    ]
    assert model.calls == expected_calls
    assert len(perturbation.views) == views and len(perturbation.boxes) == views
    expected, parts = expected_loss(before, perturbation, batches, views, fp, strong_weight, fp_weight)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss_w_fp"] == pytest.approx(parts["loss_w_fp"], abs=1e-7)
    assert model.training


def test_supervised_runs_only_the_labelled_forward_with_the_plain_loss():
    """As the official supervised.py: loss = criterion(model(x), y), nothing unlabelled."""
    step, model, perturbation = make_step(method="supervised")
    (x, y), unlabeled, partner = batch(seed=6)
    before = copy.deepcopy(model)
    model.calls = []
    loss, stats = step((x, y), unlabeled, partner)
    assert model.calls == [{"n": N_L, "need_fp": False, "training": True, "grad": True}]
    assert perturbation.views == [] and perturbation.boxes == []
    expected = F.cross_entropy(before(normalize(x)), y, ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["loss_s"] == 0.0 and stats["loss_w_fp"] == 0.0


@pytest.mark.parametrize("method, reads_unlabeled, streams", [("supervised", False, 0), ("fixmatch", True, 2),
                                                              ("fixmatch partner_from_batch", True, 1)])
def test_trainer_consumes_unlabelled_batches_only_when_the_method_needs_them(tmp_path, method, reads_unlabeled,
                                                                             streams):
    method, *flags = method.split()
    cfg = tiny_config(method=method, epochs=1, crop_size=16, **{flag: True for flag in flags})
    labeled = TinySegmentationSet(4, "labeled", size=16, seed=1)
    unlabeled = TinySegmentationSet(8, "unlabeled", size=16, seed=2)
    model = ToyNet()
    trainer = Trainer(cfg, model, labeled, unlabeled, lambda m: EvalResult({"mIoU": 0.0}), DistContext(),
                      tmp_path / method, progress=False)
    trainer.fit()
    iterations = len(unlabeled) // cfg.batch_size
    assert labeled.reads == iterations * cfg.batch_size
    # two unlabelled streams, the images and their CutMix partners; one when the partners come from the batch
    assert unlabeled.reads == streams * iterations * cfg.batch_size
    per_step = (1 + streams) if reads_unlabeled else 1
    assert len(model.calls) == iterations * per_step


def test_step_settings_take_every_config_value_by_name():
    cfg = Config(method="fixmatch", conf_thresh=0.7, sup_weight=2.0, strong_weight=0.3, fp_weight=0.4,
                 loss_divisor=3.0, unsup_loss="dice", partner_from_batch=True, dist_align=True, class_thresh=True,
                 dist_align_momentum=0.9, class_thresh_momentum=0.8, teacher="ema")
    cfg.validate()
    # every field differs from its default, so a field from_config forgets fails the comparison;
    # comp_drop needs two strong views, so it is set apart, with dusperb
    changed = StepSettings(
        strong_views=1, fp_streams=0, conf_thresh=0.7, sup_weight=2.0, strong_weight=0.3, fp_weight=0.4,
        loss_divisor=3.0, unsup_loss="dice", cutmix_partner="previous", dist_align=True, class_thresh=True,
        dist_align_momentum=0.9, class_thresh_momentum=0.8, teacher="ema")
    default = StepSettings()
    assert all(getattr(changed, f.name) != getattr(default, f.name) for f in dataclasses.fields(StepSettings)
               if f.name != "comp_drop")
    assert StepSettings.from_config(cfg) == changed
    comp_drop = dataclasses.replace(cfg, method="dusperb", comp_drop=True)
    comp_drop.validate()
    assert StepSettings.from_config(comp_drop) == dataclasses.replace(changed, strong_views=2, comp_drop=True)


def test_each_running_share_has_its_own_momentum_and_both_default_to_the_old_shared_one():
    """dist_align_momentum moves dist_align's class distributions, class_thresh_momentum
    class_thresh's running shares; both were dist_align_momentum (0.99) before the split."""
    step, _, _ = make_step(dist_align=True, class_thresh=True, dist_align_momentum=0.9, class_thresh_momentum=0.8)
    assert step.align.momentum == 0.9
    assert step.class_thresh.momentum == step.class_thresh.priors.momentum == 0.8
    step, _, _ = make_step(dist_align=True, class_thresh=True)
    assert step.align.momentum == step.class_thresh.momentum == 0.99
