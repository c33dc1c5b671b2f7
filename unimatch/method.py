"""The UniMatch training step; FixMatch, UniPerb, DusPerb, UniMatch V2 and supervised are settings of it.

One step, for a labelled batch ``(x, y)``, an unlabelled batch (weak views ``x_w`` with their
``ignore_mask``) and a batch of CutMix partners (other unlabelled images, weak views):

1. strong views: each of ``strong_views`` streams perturbs ``x_w`` (and the partners) with
   independent random parameters and pastes the partner's strong view into a CutMix box;
2. partner pseudo-labels: a no-grad forward of the partners in *eval* mode through the teacher,
   the student or, under ``teacher: ema``, the EMA; with the opt-in ``cutmix_partner: previous``
   the partner of image i is image i-1 of the same batch and its pseudo-label comes from step 3's
   train-mode weak prediction: one forward less;
3. one train-mode forward of ``cat(x, x_w)`` (with the FP stream when ``fp_streams > 0``);
4. one forward of ``cat(strong views)``;
5. pseudo-labels = argmax of the weak prediction, confidence = its max softmax; inside each
   CutMix box the partner's label, confidence and ignore mask are used;
6. loss = (sup_weight L_sup + strong_weight mean_i L_s_i + fp_weight L_fp) / loss_divisor,
   with the paper's weights (1, 0.5 -> 0.25 per view, 0.5) / 2.

UniMatch V2 changes three parts, each a setting of its own (``unimatch.config.METHOD_SETTINGS``):

- ``teacher: ema``: the pseudo-labels come from a no-grad, eval-mode forward of ``x_w`` through an
  EMA of the student (:mod:`unimatch.ema`, kept by the trainer), not from step 3;
- ``cutmix_partner: flip``: the partner of image i is image n-1-i of the same batch (the batch
  flipped); each stream perturbs ``x_w`` once and pastes ``view.flip(0)``, the partner's own strong
  view of that stream, into the box; its label, confidence and ignore mask are the flipped ones;
- ``comp_drop``: the two strong views go through one forward with the model's complementary
  channel dropout, ``model(cat(s1, s2), comp_drop=True)``.

Which forwards a step runs (``StepSettings.joint_weak_forward``): the student forwards ``x_w``
with ``x`` (step 3) when something uses that prediction, the FP stream or a student teacher
without ``comp_drop`` (V1); otherwise it forwards ``x`` alone, as the official V2 scripts, and a
student teacher predicts ``x_w`` in a no-grad forward of its own in the model's current mode, as
the official bi-temporal V2 script does.

An unlabelled batch may carry a third tensor, the true labels of its pixels, loaded only when the
run asks for pseudo-label statistics (``pseudo_label_accuracy``). It goes to
:class:`unimatch.health.PseudoLabelHealth` and nowhere else: no loss ever sees it.

Supervised-only training (no unlabelled stream) uses the plain ``sup_weight L_sup``, as the
official ``supervised.py``: halving it would halve the effective learning rate of the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from unimatch.align import ClassAdaptiveThreshold, DistributionAlignment
from unimatch.data import IGNORE_INDEX
from unimatch.distributed import unwrap
from unimatch.errors import ConfigError
from unimatch.health import PseudoLabelHealth
from unimatch.losses import DiceLoss, confident_and_valid, masked_cross_entropy
from unimatch.perturb import Normalizer, StrongPerturbation, to_unit_float


@dataclass
class StepSettings:
    strong_views: int = 2
    fp_streams: int = 1
    conf_thresh: float = 0.95
    sup_weight: float = 1.0
    strong_weight: float | None = None
    fp_weight: float = 0.5
    loss_divisor: float = 2.0
    unsup_loss: str = "ce"
    dist_align: bool = False
    dist_align_momentum: float = 0.99
    class_thresh: bool = False
    class_thresh_momentum: float = 0.99
    cutmix_partner: str = "loader"   # loader | previous | flip
    teacher: str = "student"         # student | ema
    comp_drop: bool = False

    @classmethod
    def from_config(cls, cfg) -> "StepSettings":
        strong, fp = cfg.streams
        return cls(strong_views=strong, fp_streams=fp, conf_thresh=cfg.conf_thresh, sup_weight=cfg.sup_weight,
                   strong_weight=cfg.strong_weight, fp_weight=cfg.fp_weight, loss_divisor=cfg.loss_divisor,
                   unsup_loss=cfg.unsup_loss, dist_align=cfg.dist_align,
                   dist_align_momentum=cfg.dist_align_momentum, class_thresh=cfg.class_thresh,
                   class_thresh_momentum=cfg.class_thresh_momentum,
                   cutmix_partner=cfg.method_setting("cutmix_partner"), teacher=cfg.method_setting("teacher"),
                   comp_drop=cfg.method_setting("comp_drop"))

    @property
    def partner_from_batch(self) -> bool:
        """The partner is another image of the unlabelled batch: no partner loader, no partner forward."""
        return self.cutmix_partner != "loader"

    @property
    def joint_weak_forward(self) -> bool:
        """The student forwards ``cat(x, x_w)``: its weak prediction feeds the FP stream, or it is the
        teacher under V1's forwards (no ``comp_drop``). Otherwise it forwards ``x`` alone."""
        return self.fp_streams > 0 or (self.teacher == "student" and not self.comp_drop)

    @property
    def own_teacher_forward(self) -> bool:
        """The pseudo-labels come from a no-grad forward of ``x_w`` of their own: the EMA's, or the
        student's when its joint forward does not predict ``x_w`` for them."""
        return self.teacher == "ema" or not self.joint_weak_forward

    @property
    def supervised_only(self) -> bool:
        return self.strong_views == 0 and self.fp_streams == 0

    def weights(self) -> tuple[float, float]:
        """(total weight of the strong streams, weight of the FP stream).

        With both kinds of stream the paper splits the unlabelled weight in half (0.5 each);
        with one kind only, that kind takes the whole unit weight (FixMatch: (L_x + L_s) / 2).
        """
        fp = self.fp_weight if self.fp_streams else 0.0
        if self.strong_weight is not None:
            strong = self.strong_weight
        else:
            strong = (1.0 - fp) if self.strong_views else 0.0
        if not self.strong_views and self.fp_streams and self.strong_weight is None:
            fp = 1.0
        return strong, fp


class UniMatchStep:
    """Computes the loss of one training iteration; knows nothing of datasets or tasks."""

    def __init__(self, model: nn.Module, settings: StepSettings, sup_criterion: nn.Module,
                 perturbation: StrongPerturbation, normalizer: Normalizer, nclass: int,
                 health: PseudoLabelHealth | None = None, teacher: nn.Module | None = None):
        """``teacher``: the EMA model that predicts the pseudo-labels under ``teacher: ema``."""
        if settings.teacher == "ema" and teacher is None and not settings.supervised_only:
            raise ValueError("teacher: ema needs the EMA model (UniMatchStep(..., teacher=ema.model))")
        if settings.comp_drop and not getattr(unwrap(model), "supports_comp_drop", False):
            raise ConfigError(f"comp_drop: the model ({type(unwrap(model)).__name__}) has no complementary dropout "
                              f"(supports_comp_drop); use a model that has, or comp_drop: false")
        self.model = model
        self.teacher = teacher
        self.health = health
        self.settings = settings
        self.sup_criterion = sup_criterion
        self.perturbation = perturbation
        self.normalizer = normalizer
        self.dice = DiceLoss(nclass) if settings.unsup_loss == "dice" else None
        self.align = DistributionAlignment(nclass, settings.dist_align_momentum) if settings.dist_align else None
        self.class_thresh = (ClassAdaptiveThreshold(nclass, settings.conf_thresh, settings.class_thresh_momentum)
                             if settings.class_thresh else None)

    def unsup_loss(self, logits, pseudo_label, confidence, ignore_mask, thresholds=None) -> torch.Tensor:
        """``thresholds``: per-class confidence thresholds (``class_thresh``), else ``conf_thresh``."""
        valid = ignore_mask != IGNORE_INDEX
        kept = confident_and_valid(confidence, self.settings.conf_thresh if thresholds is None
                                   else thresholds[pseudo_label], valid)
        if self.dice is not None:
            return self.dice(logits.float().softmax(1), pseudo_label, ignore=~kept)
        return masked_cross_entropy(logits, pseudo_label, kept, valid)

    def strong_views(self, weak: torch.Tensor, partner: torch.Tensor | None):
        """``strong_views`` (view, CutMix box) pairs; each view perturbs its own copy of the batch and
        of the partners. ``partner`` None (``cutmix_partner: flip``): each view perturbs the batch
        alone and the box takes the flipped view, the partner's own strong view of that stream."""
        n, _, h, w = weak.shape
        views = []
        for _ in range(self.settings.strong_views):
            if partner is None:
                own = self.perturbation(weak)
                pasted = own.flip(0)
            else:
                perturbed = self.perturbation(torch.cat((weak, partner)))
                own, pasted = perturbed[:n], perturbed[n:]
            box = self.perturbation.cutmix_boxes(n, h, w, device=weak.device)
            views.append((torch.where(box.unsqueeze(1), pasted, own), box))
        return views

    def labelled_term(self, labeled, autocast=None):
        """The method's loss with the unlabelled terms weighted 0: ``sup_weight L_sup / loss_divisor``
        (the supervised warm-up, ``sup_warmup_epochs``). Returns (loss, stats) like ``__call__``."""
        s = self.settings
        x, y = labeled
        with autocast or torch.autocast("cpu", enabled=False):
            loss_x = self.sup_criterion(self.model(self.normalizer(to_unit_float(x))), y)
        return labelled_only(s.sup_weight * loss_x / s.loss_divisor, loss_x)

    def __call__(self, labeled, unlabeled=None, partner=None, autocast=None):
        """Returns (loss, stats); stats holds detached 0-d tensors (loss, loss_x, loss_s, loss_w_fp,
        mask_ratio) on the model's device, so the step never waits for the GPU; the caller turns
        them into numbers only where it logs them."""
        s = self.settings
        autocast = autocast or torch.autocast("cpu", enabled=False)
        x, y = labeled
        x = self.normalizer(to_unit_float(x))
        if s.supervised_only or unlabeled is None:
            with autocast:
                loss_x = self.sup_criterion(self.model(x), y)
            # the official supervised.py trains on the plain labelled loss: no division by 2
            return labelled_only(s.sup_weight * loss_x, loss_x)

        # the order of the steps below is the order of the random draws: keep it
        x_w_raw, ignore_mask, *label_for_stats = unlabeled
        x_w_raw = to_unit_float(x_w_raw)
        x_m_raw, ignore_mask_m = self.partners(x_w_raw, ignore_mask, partner)
        views = self.strong_views(x_w_raw, x_m_raw) if s.strong_views else []
        prob_m = None if s.partner_from_batch else self.partner_probabilities(x_m_raw, autocast)
        pred_w_teacher = self.teacher_prediction(x_w_raw, autocast) if s.own_teacher_forward else None
        valid = ignore_mask != IGNORE_INDEX
        with autocast:
            pred_x, pred_w, preds_fp, preds_s = self.forward_streams(x, x_w_raw, views)
            if pred_w_teacher is not None:
                pred_w = pred_w_teacher
            weak, mixed, thresholds = self.pseudo_labels(pred_w, prob_m, y, valid)
            if self.health is not None:
                self.health.update(*weak, ignore_mask, s.conf_thresh, *label_for_stats)
            loss_x = self.sup_criterion(pred_x, y)
            zero = loss_x.new_zeros(())
            loss_s = self.strong_loss(views, preds_s, weak, mixed, ignore_mask, ignore_mask_m, thresholds, zero)
            loss_fp = self.fp_loss(preds_fp, weak, ignore_mask, thresholds, zero)

        strong_weight, fp_weight = s.weights()
        loss = (s.sup_weight * loss_x + strong_weight * loss_s + fp_weight * loss_fp) / s.loss_divisor
        mask_ratio = confident_and_valid(weak[1], s.conf_thresh, valid).sum() / valid.sum().clamp_min(1)
        return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_s": loss_s.detach(),
                      "loss_w_fp": loss_fp.detach(), "mask_ratio": mask_ratio}

    def partners(self, x_w_raw, ignore_mask, partner):
        """The CutMix partners (images in [0, 1] or None, ignore masks): the partner batch or, with
        ``cutmix_partner: previous``, image i-1 of this batch for image i (no partner forward); with
        ``flip`` no partner images (the views paste each other's, ``strong_views``) and the batch's
        ignore masks flipped."""
        if not self.settings.partner_from_batch:
            return to_unit_float(partner[0]), partner[1]
        images = None if self.settings.cutmix_partner == "flip" else self.partner_in_batch(x_w_raw)
        return images, self.partner_in_batch(ignore_mask)

    def partner_in_batch(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (one row per image) reordered so row i holds image i's partner in the batch."""
        return t.flip(0) if self.settings.cutmix_partner == "flip" else t.roll(1, 0)

    @property
    def pseudo_label_model(self) -> nn.Module:
        """The model that predicts pseudo-labels: the EMA model under ``teacher: ema``, else the student."""
        return self.teacher if self.settings.teacher == "ema" else self.model

    @torch.no_grad()
    def teacher_prediction(self, x_w_raw, autocast):
        """The weak view's logits from the teacher: the EMA model (always in eval mode), or the
        student in its current mode, both without autograd."""
        with autocast:
            return self.pseudo_label_model(self.normalizer(x_w_raw))

    @torch.no_grad()
    def partner_probabilities(self, x_m_raw, autocast):
        """Softmax of the partners' no-grad forward in *eval* mode (step 2), through the teacher: the
        student, or the EMA model (always in eval mode) under ``teacher: ema``."""
        model = self.pseudo_label_model
        was_training = model.training
        model.eval()
        with autocast:
            prob_m = model(self.normalizer(x_m_raw)).float().softmax(1)
        model.train(was_training)
        return prob_m

    def forward_streams(self, x, x_w_raw, views):
        """(pred_x, pred_w or None, FP predictions of the weak views or None, strong predictions): one
        train-mode forward of ``cat(x, x_w)`` with the FP stream(s) (of ``x`` alone when nothing uses
        the student's weak prediction, ``joint_weak_forward``), then one of ``cat(strong views)``,
        with the complementary dropout under ``comp_drop``."""
        s = self.settings
        n_l = x.shape[0]
        pred_w_fp = None
        inputs = torch.cat((x, self.normalizer(x_w_raw))) if s.joint_weak_forward else x
        if s.fp_streams:   # fp_streams implies the joint forward (joint_weak_forward)
            preds, preds_fp = self.model(inputs, need_fp=s.fp_streams)
            pred_w_fp = preds_fp.view(s.fp_streams, -1, *preds_fp.shape[1:])[:, n_l:]
        else:
            preds = self.model(inputs)
        preds_s = []
        if views:
            strong = self.normalizer(torch.cat([v for v, _ in views]))
            preds_s = (self.model(strong, comp_drop=True) if s.comp_drop else self.model(strong)).chunk(len(views))
        return preds[:n_l], (preds[n_l:] if s.joint_weak_forward else None), pred_w_fp, preds_s

    def pseudo_labels(self, pred_w, prob_m, y, valid):
        """((label_w, conf_w), (label_m, conf_m), thresholds): argmax and max softmax of the weak
        prediction, detached (no gradient flows through a pseudo-label), and of the partners
        (``prob_m``, or for a partner in the batch the weak ones of that image,
        ``partner_in_batch``); the per-class thresholds of ``class_thresh``, else None."""
        prob_w = pred_w.detach().float().softmax(1)
        if self.align is not None:  # opt-in extension, not the paper's step (unimatch/align.py)
            self.align.observe_labels(y)
            self.align.observe_predictions(prob_w, valid)
            prob_w = self.align(prob_w)
            if prob_m is not None:
                prob_m = self.align(prob_m)
        conf_w, label_w = prob_w.max(1)
        if prob_m is None:  # a partner in the batch: that image's own weak prediction
            conf_m, label_m = self.partner_in_batch(conf_w), self.partner_in_batch(label_w)
        else:
            conf_m, label_m = prob_m.max(1)
        thresholds = None
        if self.class_thresh is not None:  # opt-in extension, not the paper's step (unimatch/align.py)
            self.class_thresh.observe(y, label_w, conf_w, valid)
            thresholds = self.class_thresh.thresholds()
        return (label_w, conf_w), (label_m, conf_m), thresholds

    def strong_loss(self, views, preds_s, weak, partner, ignore_mask, ignore_mask_m, thresholds, zero):
        """Mean unlabelled loss of the strong views; inside each CutMix box the partner's label,
        confidence and ignore mask are used."""
        (label_w, conf_w), (label_m, conf_m) = weak, partner
        losses = []
        for (_, box), pred_s in zip(views, preds_s):
            label = torch.where(box, label_m, label_w)
            conf = torch.where(box, conf_m, conf_w)
            ignore = torch.where(box, ignore_mask_m, ignore_mask)
            losses.append(self.unsup_loss(pred_s, label, conf, ignore, thresholds))
        return torch.stack(losses).mean() if losses else zero

    def fp_loss(self, preds_fp, weak, ignore_mask, thresholds, zero):
        """Mean unlabelled loss of the FP stream(s) against the weak pseudo-labels."""
        if preds_fp is None:
            return zero
        label_w, conf_w = weak
        return torch.stack([self.unsup_loss(p, label_w, conf_w, ignore_mask, thresholds) for p in preds_fp]).mean()


def labelled_only(loss, loss_x):
    """(loss, stats) of a step without unlabelled terms: those stats are 0."""
    zero = loss.detach().new_zeros(())
    return loss, {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_s": zero, "loss_w_fp": zero,
                  "mask_ratio": zero}
