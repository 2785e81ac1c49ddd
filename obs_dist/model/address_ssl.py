"""Two views of one picture should land on the same nodes: a label-free term on the addresses.

The pictures' contrastive term (:mod:`obs_dist.model.video_ssl`) makes two views
of a picture have *features* that find each other. Binding in the state needs
more: the same *nodes*. A picture's nodes are the top-``k_max`` pairs of the
writer's two product-key codebooks (:func:`~obs_dist.model.writer.product_key_topk`),
so a small move of the feature along a direction the codebooks care about changes
which sub-keys win, while SimCLR's cosine, which sees every direction alike, hardly
notices. Measured on held-out recordings: two pictures of one object share
0.23–0.30 of their nodes, different objects 0.02–0.03 (docs/results/notes.md,
"twelfth round"), and with perfect picture addresses the Hebbian ceiling of the
third round's model rose from 0.455 to 0.879 (novel names; docs/decisions.md §13).

This term asks for it directly, in one of two forms (``model.stream.address_ssl_loss``),
each on each codebook's softmax over its sub-keys:

* ``agree`` (:func:`agreement_loss`), the way DINO (Caron et al. 2021) trains a
  student's softmax over prototypes to match a teacher's over another view: each
  view's softmax is pulled towards its twin's *sharpened and centred* one (no
  gradient through the target). Sharpening rewards a confident choice of
  sub-keys, which a stable top-k needs; centring (the batch's mean score per
  sub-key taken off the target) is meant to keep one sub-key from winning for
  every picture, beside the writer's address balance. Measured, it was not
  enough: different objects came to share four times as many nodes.
* ``contrast`` (:func:`contrast_loss`): SimCLR's loss over the two codebooks'
  softmaxes side by side, so a view must pick its twin's address among the
  other views' and other pictures are pushed off its sub-keys.
  ``model.stream.address_ssl_gap`` leaves pictures of one recording a few clips
  apart (one scene) out of each other's negatives.

Nothing in it is about any object set: only views of pictures the recording
shows anyway. What each form measured: docs/decisions.md §20.

The views' features are those the SimCLR term already computed
(:meth:`~obs_dist.model.view_contrast.ViewContrast.twin_features`), so the
encoder runs once. The model addresses them as it addresses the window's
pictures (centred by their own statistics if ``address_centring`` is on, the
running averages that evaluation uses left alone), and hands them in here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from obs_dist.model.view_contrast import twin_loss
from obs_dist.model.writer import Writer

TEACHER_TEMPERATURE = 0.5  # the target's sharpening (student at 1, the scores' own scale)
CONTRAST_TEMPERATURE = 0.2  # as the pictures' SimCLR term
ADDRESS_LOSSES = ("agree", "contrast")


def agreement_loss(scores: Tensor, teacher_temperature: float = TEACHER_TEMPERATURE
                   ) -> Tensor:
    """Cross-entropy of each view's softmax against its twin's sharpened, centred one.

    Args:
        scores: ``[2n, s]`` one codebook's sub-key scores; rows ``i`` and ``i + n``
            are views of one picture.
        teacher_temperature: the target's temperature (< 1 sharpens).

    Returns:
        The mean over views of ``−Σ_j q_twin(j) log p(j)``.
    """
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
    n = scores.shape[0] // 2
    assert scores.shape[0] == 2 * n and n >= 1, "views come in twin pairs"
    with torch.no_grad():
        target = torch.softmax((scores - scores.mean(0, keepdim=True)) / teacher_temperature,
                               dim=1)
        target = torch.cat([target[n:], target[:n]])  # each row's twin's target
    return -(target * F.log_softmax(scores, dim=1)).sum(1).mean()


def contrast_loss(scores: tuple[Tensor, ...], temperature: float = CONTRAST_TEMPERATURE,
                  exclude: Tensor | None = None) -> Tensor:
    """SimCLR's loss over the views' sub-key softmaxes: each must pick its twin's.

    The two codebooks' softmaxes side by side, as a unit vector per view, so the
    cosine of two views is high when they favour the same sub-keys of both, which
    is when they share nodes. Unlike :func:`agreement_loss` it also pushes
    *other* pictures' addresses away, so agreement cannot come from every picture
    favouring the same few sub-keys.

    Args:
        scores: each codebook's ``[2n, s]`` sub-key scores; rows ``i`` and ``i + n``
            are views of one picture.
        temperature: the twin loss's temperature.
        exclude: ``[2n, 2n]`` pairs that are not negatives (None: every other view is).
    """
    p = torch.cat([torch.softmax(s, dim=1) for s in scores], dim=1)
    return twin_loss(F.normalize(p, dim=1), temperature, exclude)


def address_agreement(writer: Writer, features: Tensor, loss: str = "agree",
                      exclude: Tensor | None = None) -> Tensor:
    """The term for a batch of twin views' features.

    Args:
        writer: the model's writer (its query and codebooks address the nodes).
        features: ``[2n, d]`` the views' features as they address nodes (rows ``i``
            and ``i + n`` twins).
        loss: ``agree`` (:func:`agreement_loss`, both codebooks summed) or
            ``contrast`` (:func:`contrast_loss`).
        exclude: for ``contrast``, ``[2n, 2n]`` pairs of views that are not
            negatives (pictures of one scene a few seconds apart).
    """
    if loss not in ADDRESS_LOSSES:
        raise ValueError(f"loss must be one of {list(ADDRESS_LOSSES)}, got {loss!r}")
    if exclude is not None and loss != "contrast":
        raise ValueError("exclude leaves views out of the negatives: only loss='contrast' has any")
    # From the input alone, as every address is (the carried half of the context zero).
    query = writer.query(torch.cat([features, torch.zeros_like(features)], dim=1))
    scores = writer.subkey_scores(query)
    if loss == "contrast":
        return contrast_loss(scores, exclude=exclude)
    return sum((agreement_loss(s) for s in scores), start=features.new_zeros(()))
