"""Which of a heard clip's negatives are likely the same thing: by picture or by sound.

The av-stream objective (``obs_dist/model/av_stream.py``) asks each heard clip to
pick the picture of its own moment against pictures of the same recording far
away in time. A recording shows its objects again and again, in other scenes, so
some of those negatives show the very object the heard word names. Two ways to
find them, both without labels and without gradient:

- :func:`alike_pictures` (``model.stream.false_negatives``): the negatives whose
  pictures look most like the heard clip's own picture. Pictures of one object in
  two scenes mostly differ in the scene, so this finds the same scene more often
  than the same object.
- :func:`alike_sounds` (``model.stream.heard_alike``): the negatives whose *sound*
  is most like the heard clip's, each the other's nearest (mutual nearest
  neighbours). Within one recording the voice and the room are shared, so two
  clips sound alike mostly when the same words are said: the same name heard in
  two scenes. That is cross-situational evidence that the two pictures share an
  object, whatever else differs between them; the objective then leaves such a
  picture out of the negatives or counts it as a second positive
  (``model.stream.heard_alike_use``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")
HEARD_ALIKE_USES = ("exclude", "positive")


def alike_pictures(fv: torch.Tensor, excluded: torch.Tensor, k: int) -> torch.Tensor:
    """``[Q, C]``: each query's ``k`` allowed candidates whose pictures look most
    like its own (cosine of the video features, no gradient).

    Args:
        fv: video features ``[B, T, d]`` (queries and candidates are the same
            ``B·T`` clips).
        excluded: ``[Q, C]`` pairs that are not negatives (never chosen).
        k: how many to choose per query.
    """
    pictures = F.normalize(fv.detach().flatten(0, 1), dim=-1)
    alike = (pictures @ pictures.t()).masked_fill(excluded, NEG_INF)
    top = alike.topk(min(k, alike.shape[1]), dim=1).indices
    drop = torch.zeros_like(excluded).scatter_(1, top, True)
    return drop & ~excluded


def alike_sounds(fa: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """``[Q, C]``: pairs of clips that sound alike: each among the other's ``k``
    nearest allowed clips (cosine of the audio features, no gradient).

    Mutual, so a clip whose sound is unlike every other's (a word said once in
    the window) is paired with none: its nearest is not near it in turn.

    Args:
        fa: audio features ``[B, T, d]``.
        allowed: ``[Q, C]`` pairs that may be chosen (both clips heard, and the
            candidate a negative of the query).
        k: how many nearest to consider per clip.

    Returns:
        A boolean ``[Q, C]``, symmetric where ``allowed`` is, false wherever
        ``allowed`` is.
    """
    if k < 1:
        raise ValueError(f"alike_sounds needs k >= 1, got {k}")
    sounds = F.normalize(fa.detach().flatten(0, 1).float(), dim=-1)
    alike = (sounds @ sounds.t()).masked_fill(~allowed, NEG_INF)
    top = alike.topk(min(k, alike.shape[1]), dim=1)
    # A row with fewer than k allowed clips picks -inf ones too: they are dropped.
    near = torch.zeros_like(allowed).scatter_(1, top.indices, top.values > NEG_INF)
    return near & near.t() & allowed


def extra_positive_loss(logits: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each extra positive pair, summed: row ``q`` asked to pick
    candidate ``c`` for every ``extra[q, c]``, against the row's other logits
    (supervised contrastive, Khosla et al. 2020, each positive its own term).

    Args:
        logits: ``[Q, C]``, with invalid candidates already at ``-inf``.
        extra: ``[Q, C]`` boolean, false wherever ``logits`` is ``-inf``.
    """
    rows, cols = extra.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return logits.new_zeros(())
    picked = logits[rows]
    return (torch.logsumexp(picked, 1) - picked.gather(1, cols[:, None]).squeeze(1)).sum()
