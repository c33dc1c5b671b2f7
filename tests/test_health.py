"""Pseudo-label health: the per-class counts on a hand-made batch (expected values worked out by
hand below, not by the code under test), and the guarantee that the labels loaded for statistics
never reach the loss."""
import math

import numpy as np

import pytest
import torch

from test_method import batch, make_step
from unimatch.health import PseudoLabelHealth, describe


def hand_made():
    """One 2x3 image, 3 classes. Pixel by pixel (row, col):
    (0,0) pred 0 conf .99 valid, true 0   -> confident, right
    (0,1) pred 0 conf .50 valid, true 1   -> not confident
    (0,2) pred 1 conf .97 valid, true 1   -> confident, right
    (1,0) pred 0 conf .96 valid, true 2   -> confident, wrong
    (1,1) pred 1 conf .20 valid, true 255 -> not confident, truth unknown
    (1,2) pred 2 conf .99 padded (ignore) -> not counted at all
    """
    pseudo = torch.tensor([[[0, 0, 1], [0, 1, 2]]])
    conf = torch.tensor([[[0.99, 0.50, 0.97], [0.96, 0.20, 0.99]]])
    ignore = torch.tensor([[[0, 0, 0], [0, 0, 255]]])
    truth = torch.tensor([[[0, 1, 1], [2, 255, 1]]])
    return pseudo, conf, ignore, truth


def test_counts_of_a_hand_made_batch():
    health = PseudoLabelHealth(3)
    pseudo, conf, ignore, truth = hand_made()
    health.update(pseudo, conf, ignore, 0.95, truth)
    s = health.summary(["bg", "a", "b"])
    # 5 valid pixels, 3 of them confident: (0,0) and (1,0) say bg, (0,2) says a
    assert s["health/confident_ratio"] == pytest.approx(3 / 5)
    assert s["health/confident_share/bg"] == pytest.approx(2 / 3)
    assert s["health/confident_share/a"] == pytest.approx(1 / 3)
    assert s["health/confident_share/b"] == 0.0
    # known truth on 4 valid pixels: bg 1, a 2, b 1
    assert s["health/label_share/bg"] == pytest.approx(1 / 4)
    assert s["health/label_share/a"] == pytest.approx(2 / 4)
    assert s["health/label_share/b"] == pytest.approx(1 / 4)
    # confident pixels per true class: bg (0,0) right; a (0,2) right; b (1,0) wrong
    assert s["health/confident_accuracy/bg"] == 1.0
    assert s["health/confident_accuracy/a"] == 1.0
    assert s["health/confident_accuracy/b"] == 0.0
    # confident and right over all pixels of the class: bg 1/1, a 1/2, b 0/1
    assert s["health/confident_recall/bg"] == 1.0
    assert s["health/confident_recall/a"] == pytest.approx(0.5)
    assert s["health/confident_recall/b"] == 0.0
    assert "b 0.0% (true 25.0%, recall 0.0%)" in describe(s)


def test_counts_accumulate_over_batches_and_restart_after_a_summary():
    health = PseudoLabelHealth(3)
    pseudo, conf, ignore, truth = hand_made()
    health.update(pseudo, conf, ignore, 0.95, truth)
    # the second batch: everything valid and confident, all predicted b, all truly b (6 pixels)
    health.update(torch.full_like(pseudo, 2), torch.ones_like(conf), torch.zeros_like(ignore), 0.95,
                  torch.full_like(truth, 2))
    s = health.summary()
    assert s["health/confident_ratio"] == pytest.approx((3 + 6) / (5 + 6))
    assert s["health/confident_share/2"] == pytest.approx(6 / 9)
    assert s["health/confident_accuracy/2"] == pytest.approx(6 / 7)
    assert s["health/confident_recall/2"] == pytest.approx(6 / 7)
    empty = health.summary()
    assert math.isnan(empty["health/confident_ratio"])


def test_without_labels_only_the_confident_shares_are_reported():
    health = PseudoLabelHealth(3)
    pseudo, conf, ignore, _ = hand_made()
    health.update(pseudo, conf, ignore, 0.95)
    s = health.summary()
    assert set(s) == {"health/confident_ratio", "health/confident_share/0", "health/confident_share/1",
                      "health/confident_share/2"}


def test_labels_for_statistics_never_change_the_loss():
    labeled, (weak, ignore_w), partner = batch()
    losses = []
    for truth in (None, torch.zeros_like(ignore_w), torch.full_like(ignore_w, 2)):
        step, model, _ = make_step()
        step.health = PseudoLabelHealth(3)
        unlabeled = (weak, ignore_w) if truth is None else (weak, ignore_w, truth)
        loss, _ = step(labeled, unlabeled, partner)
        losses.append(loss.item())
        summary = step.health.summary()
        assert ("health/confident_recall/0" in summary) == (truth is not None)
    assert losses[0] == losses[1] == losses[2]


# ---- the unlabelled datasets return the label only when asked, cropped exactly like the view ----
def same_views(unlabeled, labeled, plain):
    """``unlabeled`` (with labels) gives the images and ignore masks of ``plain`` (without) and the
    masks of ``labeled``: all three built with the same seed, so they draw the same augmentation."""
    for index in range(len(plain)):
        for _ in range(3):
            image, ignore, label = unlabeled[index]
            plain_image, plain_ignore = plain[index]
            _, mask = labeled[index]
            assert torch.equal(image, plain_image) and torch.equal(ignore, plain_ignore)
            assert torch.equal(label, mask)


def test_change_detection_pairs_with_labels_for_statistics(tmp_path):
    from tasks.change_detection.data import LabeledPairs, UnlabeledPairs
    from test_cd_data import make_pair_root

    root = make_pair_root(tmp_path, ["a.png", "b.png"], size=(20, 28))
    options = dict(crop_size=24, seed=3)
    same_views(UnlabeledPairs(root, root / "list.txt", label_for_stats=True, **options),
               LabeledPairs(root, root / "list.txt", **options), UnlabeledPairs(root, root / "list.txt", **options))


def test_natural_images_with_labels_for_statistics_keep_padding_apart_from_the_label_ignore(tmp_path):
    from PIL import Image

    from tasks.natural.data import LabeledDataset, UnlabeledDataset
    from test_natural_data import make_voc, write_lines

    root = make_voc(tmp_path / "voc", ["a", "b"], height=20, width=30, jpeg=False)
    mask_path = root / "SegmentationClass" / "a.png"
    mask = np.array(Image.open(mask_path))
    mask[:4] = 255  # the label's own ignore (a VOC object boundary) must not become padding
    Image.fromarray(mask).save(mask_path)
    split = write_lines(tmp_path / "u.txt", [f"JPEGImages/{i}.png SegmentationClass/{i}.png" for i in "ab"])
    options = dict(crop_size=32, seed=5)
    unlabeled = UnlabeledDataset("pascal", root, split, label_for_stats=True, nclass=6, **options)
    same_views(unlabeled, LabeledDataset("pascal", root, split, nclass=6, **options),
               UnlabeledDataset("pascal", root, split, **options))
    _, ignore, label = unlabeled[0]
    assert ((label == 255) & (ignore == 0)).any()


def test_acdc_slices_with_labels_for_statistics():
    from tasks.acdc.data import LabeledSlices, UnlabeledSlices

    rng = np.random.default_rng(0)
    images = [rng.random((20, 30)).astype(np.float32) for _ in range(2)]
    labels = [rng.integers(0, 4, (20, 30)) for _ in range(2)]
    same_views(UnlabeledSlices(images, 16, seed=2, labels_for_stats=labels),
               LabeledSlices(list(zip(images, labels)), 16, seed=2), UnlabeledSlices(images, 16, seed=2))


def test_trainer_logs_health_per_epoch(tmp_path):
    import json

    from helpers import TinySegmentationSet, tiny_config, tiny_deeplab
    from unimatch.distributed import DistContext
    from unimatch.engine import Trainer
    from unimatch.report import EvalResult

    class WithLabels(TinySegmentationSet):
        def __getitem__(self, index):
            image, ignore = super().__getitem__(index)
            return image, ignore, torch.zeros_like(ignore)

    cfg = tiny_config(method="fixmatch", epochs=2, crop_size=16, class_names=["x", "y", "z"])
    trainer = Trainer(cfg, tiny_deeplab(), TinySegmentationSet(4, "labeled", size=16),
                      WithLabels(8, "unlabeled", size=16, seed=2, flip=False), lambda m: EvalResult({"mIoU": 0.0}),
                      DistContext(), tmp_path, progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["health/label_share/x"] == 1.0  # every label is class x in WithLabels
        assert 0.0 <= record["health/confident_ratio"] <= 1.0
        shares = [record[f"health/confident_share/{c}"] for c in "xyz"]
        assert sum(shares) == pytest.approx(1.0) or record["health/confident_ratio"] == 0.0
