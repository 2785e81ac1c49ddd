"""Recall from the state as it was a window ago (``model.stream.recall_from``).

The av-stream objective (:mod:`obs_dist.model.av_stream`) hears clip ``t`` and
asks what the state recalls to pick clip ``t``'s picture against pictures of the
same recording far away in time. By default (``"current"``) the hearing step
reads the committed state *plus this window's writes up to clip t - 1*. The
last clips' links then answer for it: the sound of a second ago was linked to
the picture of a second ago, which is the same scene as picture ``t``, and every
negative is another scene. Recency alone can win, with no word and no object in
it; the question was whether that is what taught the addresses to follow the
scene (docs/results/notes.md, the eighteenth round: one object seen in two
scenes shares 0.05 of its picture nodes, two objects of one scene 0.24).

With ``"previous_window"`` the hearing step reads a copy of the committed state
taken when the *previous* window began: nothing written in this window or the
last, so every link it recalls is at least one window (64 clips) old, older than
``negative_gap``. Clip ``t``'s picture can then be found only through a sound
heard before in another scene (the same name) linked to a picture that shares
nodes with it (the same object): the cross-situational path the word–referent
test needs. It changes training only; a study pass and a trial read the state
as it is.

Measured (docs/decisions.md §29): it lowered the word–referent score (0.53–0.57
against the recipe's 0.61–0.63) and left one object's pictures in two scenes
sharing about as few nodes as before: recency was not what held the pictures to
their scene. It is off in every config.

The copy is not part of a checkpoint: a resumed run's first window reads the
state committed when that window begins (a window's lag is lost once per
resume), so such a run is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECALL_FROM = ("current", "previous_window")


class LaggedRecall:
    """A copy of the committed state one window old, and reads of it."""

    def __init__(self) -> None:
        self.lagged: torch.Tensor | None = None  # what this window reads
        self.mass: torch.Tensor | None = None  # its column mass (recall_norm)
        self._next: torch.Tensor | None = None  # the copy the next window reads

    def begin_window(self, base: torch.Tensor | None) -> None:
        """Called once per training window with the committed state ``base`` ``[N, N]``.

        This window reads the copy taken at the previous window's start (the
        first window, having none, reads ``base`` itself); ``base`` is copied
        for the next window, since the engine commits into it in place.

        Raises:
            ValueError: no dense committed state (``base`` None).
        """
        if base is None:
            raise ValueError("model.stream.recall_from = 'previous_window' reads a copy of "
                             "the dense committed state, which this window's memory has not")
        current = base.detach().clone()
        self.lagged = self._next if self._next is not None else current
        self._next = current
        self.mass = None

    def read(self, rows: torch.Tensor, weights: torch.Tensor, norm: bool) -> torch.Tensor:
        """``h[b] = Σ_i weights[b,i] · X_lagged[rows[b,i], :]`` ``[B, N]``; with ``norm``,
        divided by ``1 +`` each column's mass in the lagged state (as ``recall_norm``).
        """
        if self.lagged is None:
            raise RuntimeError("LaggedRecall.read before begin_window")
        dt = self.lagged.dtype
        h = F.embedding_bag(rows, self.lagged, per_sample_weights=weights.to(dt),
                            mode="sum").to(weights.dtype)
        if not norm:
            return h
        if self.mass is None:
            self.mass = self.lagged.abs().sum(0).to(weights.dtype)
        return h / (1.0 + self.mass)
