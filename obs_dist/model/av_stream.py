"""``AVStreamModel``: label-free audio–visual learning through the big state.

The input is a long recording cut into clips (video frames and the audio of the
same second). Each clip is two time steps of the state machine, first its sound,
then its picture:

1. **hear** — the audio feature ``f_a`` addresses nodes ``S_a`` (product keys,
   from the input alone: the same sound lands on the same nodes wherever it is
   heard). *Before* writing, the step reads the state through those rows,
   ``h = Σ_i α_i X[S_a,i, :]`` (committed state plus this window's blocks): the
   activity that what is heard now recalls from the past. Then it writes
   ``S_a`` with the nodes active when it arrived (the previous picture), in both
   directions (``backward_links``): sound → picture and picture → sound;
2. **see** — the video feature ``f_v`` addresses nodes ``S_v`` and writes them
   with the active nodes (the sound just heard), as :class:`~obs_dist.model.model.OBSModel`
   does.

**The objective needs no labels.** Hearing clip ``t``'s audio, the model must
pick clip ``t``'s video among the other clips of the batch (other recordings)
and of the recent past. A candidate video ``j`` is scored by

* the *state path*: how strongly the recalled activity ``h_t`` falls on the
  nodes that video ``j`` addresses, ``⟨h_t/‖h_t‖, α_j⟩`` over ``S_v,j``: a name
  heard once next to an object, and heard again, activates that object's nodes
  (fast mapping, which only the state can hold), plus
* the *direct path*: ``cos(P f_a, Q f_v)`` (what a CVCL-style dual encoder
  learns in its slow weights: names consistent across recordings).

Only clips with sound above their window's noise floor are scored (a label-free
speech-activity gate: silence predicts nothing). The dual-encoder peer is the
same model with ``stream.state_path = false``: same encoders, same loss, no state;
with ``stream.recent`` too it is the attention peer, which keeps the recent clips
instead of a state (:mod:`obs_dist.model.recent_attention`).

Word–referent trials use :meth:`probe` (a word heard alone, cold: no carried
activity) and :meth:`candidates` (frames seen alone) with :meth:`scores`;
:meth:`addresses` gives the nodes a clip lands on (the suite's address diagnostic).

Options against what measuring found (``model.stream``, ``model.writer.balance``;
``docs/decisions.md`` §8): negatives from the same recording only
(``negatives``), the room's noise floor removed (``audio_floor``), augmentation
(``augment``), each clip heard with its neighbours (``audio_context``), a word
linked to the picture's own nodes (``carry = "addressed"``), recall divided by
each node's column mass (``recall_norm``), and balanced product-key addresses.
The pictures also teach the encoder and the writer by themselves: their own
contrastive term (``video_ssl``, §13) and the agreement of two views' addresses
(``address_ssl``, §20).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.model.address_centring import AddressCentring
from obs_dist.model.address_ssl import address_agreement
from obs_dist.model.alike_clips import (
    NEG_INF,
    alike_pictures,
    alike_sounds,
    extra_positive_loss,
)
from obs_dist.model.audio_floor import above_floor, speech_gate
from obs_dist.model.audio_ssl import SoundContrast, sample_sounds
from obs_dist.model.augment import shift_and_flip, time_shift
from obs_dist.model.av_encoders import AudioClipEncoder, VideoClipEncoder, encode_present
from obs_dist.model.clip_context import clip_positions
from obs_dist.model.lagged_recall import LaggedRecall
from obs_dist.model.model import Carry, Memory, ModelConfig, StreamConfig
from obs_dist.model.name_links import (
    STUDY_RULES,
    NameLinks,
    even_weights,
    name_link_step,
    name_nodes,
)
from obs_dist.model.recent_attention import RecentAttention
from obs_dist.model.video_ssl import (
    PictureContrast,
    first_frames,
    sample_neighbour_clips,
    sample_pictured_clips,
)
from obs_dist.model.writer import Writer


class WindowResult(NamedTuple):
    """One window's objective: summed loss over scored clips, counts, carry, statistics."""

    loss_sum: torch.Tensor
    scored: int
    correct: int
    carry: Carry
    stats: dict[str, float]


class Probe(NamedTuple):
    """A cold query: its direct embedding ``[Q, e]``, recalled activity ``[Q, N]``
    (the state) and what attention over the recent clips retrieved ``[Q, e]``."""

    embed: torch.Tensor
    recall: torch.Tensor | None
    retrieved: torch.Tensor | None = None


class Candidates(NamedTuple):
    """Candidate pictures: direct embeddings ``[C, e]``, addressed nodes and weights ``[C, k]``."""

    embed: torch.Tensor
    ids: torch.Tensor | None
    alpha: torch.Tensor | None


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x / ‖x‖`` along the last axis with a gradient that stays finite at 0."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-8)


class AVStreamModel(nn.Module):
    """Slow weights of the label-free stream model (encoders, writer, two heads).

    Args:
        config: model settings (``d_model``, ``n_mels``, ``image_size``, ``writer``,
            ``stream``).
        nodes: N, the size of the big state.
    """

    def __init__(self, config: ModelConfig, nodes: int) -> None:
        super().__init__()
        self.config = config
        self.stream_cfg: StreamConfig = config.stream
        self.num_nodes = nodes
        d, e = config.d_model, config.stream.embed
        self.audio = AudioClipEncoder(d, config.n_mels, layers=config.audio_layers,
                                      pool=config.stream.audio_pool)
        self.video = VideoClipEncoder(d, config.image_size, width=config.video_width)
        self.modality = nn.Parameter(torch.randn(2, d) * 0.02)  # row 0 video, row 1 audio
        self.norm_a = nn.LayerNorm(d)
        self.norm_v = nn.LayerNorm(d)
        self.head_a = nn.Linear(d, e)
        self.head_v = nn.Linear(d, e)
        self.direct_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.picture_contrast: PictureContrast | None = (
            PictureContrast(d) if config.stream.video_ssl > 0 else None)
        self.sound_contrast: SoundContrast | None = (
            SoundContrast(d) if config.stream.audio_ssl > 0 else None)
        self.recent: RecentAttention | None = (
            RecentAttention(d, e, config.stream.recent_match) if config.stream.recent > 0
            else None)
        self.writer: Writer | None = None
        self.centring: nn.ModuleList | None = None  # row 0 video, row 1 audio
        if config.stream.state_path and config.stream.address_centring:
            per_stream = config.stream.centring_scope == "stream"
            self.centring = nn.ModuleList([AddressCentring(d, per_stream=per_stream),
                                           AddressCentring(d, per_stream=per_stream)])
        if config.stream.state_path:
            self.writer = Writer(config.writer, nodes, context_dim=2 * d)
            self.back_gain = nn.Parameter(torch.tensor(1.0))
            self.state_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.study_rule = "learnt"  # set by the evaluation (`set_study_rule`); not trained
        self.lagged_recall = (LaggedRecall() if config.stream.recall_from == "previous_window"
                              else None)
        self.name_links = NameLinks()  # how the name_links rule studies

    # ------------------------------------------------------------------ parts
    def initial_carry(self, batch: int, device: torch.device | str) -> Carry:
        """No active nodes (zero weights) at the start of a stream (as wide as a
        name's nodes when studying with ``name_links``)."""
        m = self.config.writer.active
        if self._name_links():  # the name's nodes, then the last pictures' (lookback)
            m = self.name_links.carry_width(m, self.config.writer.k_max)
        return Carry(torch.zeros(batch, m, dtype=torch.long, device=device),
                     torch.zeros(batch, m, device=device))

    def _state_step(self, f: torch.Tensor, memory: Memory, carry: Carry, recall: bool,
                    gate: torch.Tensor | None = None, lag: LaggedRecall | None = None
                    ) -> tuple[torch.Tensor | None, Carry, torch.Tensor, torch.Tensor]:
        """One step: address from the input, optionally read first, write, propagate.

        ``gate`` ``[B]`` (hearing steps): where it is 0 nothing was heard, so the
        step writes nothing and the carried activity stays as it was; otherwise
        every silent second would bind its (always the same) nodes to everything
        seen, and those nodes would become hubs that recall everything. ``lag``:
        the read is of the state one window old (``recall_from``).

        Returns:
            ``(recalled activity [B, N] or None, new carry, ids [B, k], alpha [B, k])``.
        """
        assert self.writer is not None
        if self._name_links():
            return name_link_step(self.writer, self.stream_cfg.recall_norm, f, memory, carry,
                                  recall, gate, self.name_links)
        # Addresses come from the input alone, so a sound or a picture lands on
        # the same nodes wherever it occurs; the carry enters only the links.
        prop = self.writer(torch.cat([f, torch.zeros_like(f)], dim=1))
        h0 = memory.read(prop.ids, prop.alpha) if recall and lag is None else None
        if h0 is not None and self.stream_cfg.recall_norm:
            h0 = h0 / (1.0 + memory.column_mass())
        if recall and lag is not None:
            h0 = lag.read(prop.ids, prop.alpha, self.stream_cfg.recall_norm)
        rows = torch.cat([prop.ids, carry.ids], dim=1)
        key = _unit(torch.cat([prop.alpha, carry.vals], dim=1))
        eta = prop.eta if gate is None else prop.eta * gate
        memory.write("link", rows, eta[:, None] * key, prop.ids, prop.alpha)
        memory.write("back", prop.ids, self.back_gain * eta[:, None] * prop.alpha,
                     carry.ids, carry.vals)
        h = memory.read(prop.ids, prop.alpha)
        vals, ids = h.topk(self.config.writer.active, dim=1)
        vals = _unit(vals)
        if self.stream_cfg.carry == "addressed":  # its own nodes, padded to m with weight 0
            m, k = ids.shape[1], prop.ids.shape[1]
            ids = torch.cat([prop.ids, ids[:, k:]], dim=1)[:, :m]
            vals = torch.cat([_unit(prop.alpha), torch.zeros_like(vals[:, k:])], dim=1)[:, :m]
        memory.next_step()
        if gate is not None:
            heard = gate[:, None] > 0
            ids = torch.where(heard, ids, carry.ids)
            vals = torch.where(heard, vals, carry.vals)
        return h0, Carry(ids, vals), prop.ids, prop.alpha

    def set_study_rule(self, rule: str, links: NameLinks | None = None) -> None:
        """How the state is written when not training: ``learnt`` (the rule trained)
        or ``name_links`` (:func:`~obs_dist.model.name_links.name_link_step`, as
        ``links`` says: nodes a clip, pictures back, fading)."""
        if rule not in STUDY_RULES:
            raise ValueError(f"study rule must be one of {list(STUDY_RULES)}, got {rule!r}")
        links = links or NameLinks()
        if links.nodes > self.num_nodes:
            raise ValueError(f"study nodes must be in [0, {self.num_nodes}] "
                             f"(0: k_max), got {links.nodes}")
        self.study_rule, self.name_links = rule, links

    def _name_links(self) -> bool:
        return self.study_rule == "name_links" and not self.training

    def _addressing(self, f: torch.Tensor, kind: int, present: torch.Tensor | None = None,
                    track: bool = True) -> torch.Tensor:
        """What addresses nodes: the feature, centred per modality if so configured
        (``track``: :class:`AddressCentring`'s)."""
        if self.centring is None:
            return f
        return self.centring[kind](f, present, track)

    def _features(self, batch: dict[str, Any]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio and video features ``[B, T, d]`` (zero where a modality is absent).

        Also returns the log-mel as the encoder hears it before augmentation,
        ``[B, T, n_mels, A']`` (the sounds' contrastive term draws its views from it).
        """
        b, t = batch["video_mask"].shape
        heard = self._heard_window(batch["audio"], batch["audio_mask"])
        audio, video = heard, batch["video"]
        if self.training and self.stream_cfg.augment:
            audio = time_shift(audio.flatten(0, 1)).view_as(audio)
            video = shift_and_flip(video.flatten(0, 1)).view_as(video)
        fa = encode_present(self.audio, audio, batch["audio_mask"], self.modality[1])
        fv = encode_present(self.video, video, batch["video_mask"], self.modality[0])
        return fa.view(b, t, -1), fv.view(b, t, -1), heard

    @property
    def audio_context(self) -> int:
        """Clips heard on each side of a clip (``model.stream.audio_context``)."""
        return self.stream_cfg.audio_context

    def _in_context(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, M, A]`` → ``[B, T, M, (2c+1)·A]``: each clip with its neighbours' log-mel.

        A neighbour outside the window or without audio is heard as the quietest
        frame of the window (silence), so it adds nothing above the floor.
        """
        c = self.audio_context
        if c == 0:
            return audio
        b, t = mask.shape
        quiet = audio[mask.bool()].amin() if bool(mask.any()) else audio.new_zeros(())
        padded = torch.where(mask.bool()[:, :, None, None], audio, quiet)
        pad = quiet.expand(b, c, *audio.shape[2:])
        padded = torch.cat([pad, padded, pad], dim=1)
        return torch.cat([padded[:, j:j + t] for j in range(2 * c + 1)], dim=-1)

    def _heard_window(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A window's log-mel ``[B, T, M, A]`` as the encoder hears it, with context.

        ``_hearable(_in_context(audio, mask))``, bit for bit, with each clip's floor
        taken once before its neighbours join it (a third of the quantiles at
        ``audio_context = 1``): a neighbour that is silence is 0 above the floor
        either way, and a clip's floor is its own in every place it is heard.
        """
        floored = above_floor(audio) if self.stream_cfg.audio_floor else audio
        return self._in_context(floored, mask)

    def _hearable(self, audio: torch.Tensor) -> torch.Tensor:
        """What the audio encoder hears of log-mel clips (above the floor, if so configured).

        With context the floor is taken per clip of the concatenation, as each
        clip would be heard alone.
        """
        if not self.stream_cfg.audio_floor:
            return audio
        parts = audio.chunk(2 * self.audio_context + 1, dim=-1)
        return torch.cat([above_floor(p) for p in parts], dim=-1)

    def _embed_audio(self, fa: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_a(self.norm_a(fa)), dim=-1)

    def _embed_video(self, fv: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_v(self.norm_v(fv)), dim=-1)

    def _state_scores(self, recall: torch.Tensor, ids: torch.Tensor, alpha: torch.Tensor
                      ) -> torch.Tensor:
        """``[Q, C]``: each query's normalised recalled activity on each candidate's nodes."""
        r = _unit(recall)
        q, c, k = recall.shape[0], ids.shape[0], ids.shape[1]
        picked = r[:, ids.reshape(-1)].view(q, c, k)
        return (picked * alpha[None]).sum(-1)

    def scores(self, probe: Probe, cands: Candidates) -> torch.Tensor:
        """Logits ``[Q, C]`` of every query against every candidate picture."""
        logits = (probe.embed @ cands.embed.t()) * (
            self.direct_scale.exp().clamp(max=100.0) * self.stream_cfg.direct_weight)
        if probe.recall is not None and cands.ids is not None and cands.alpha is not None:
            logits = logits + self.state_scale.exp().clamp(max=100.0) * self._state_scores(
                probe.recall, cands.ids, cands.alpha)
        if probe.retrieved is not None and self.recent is not None:
            logits = logits + self.recent.scores(probe.retrieved, cands.embed)
        return logits

    def answer_scores(self, probe: Probe, cands: Candidates) -> torch.Tensor:
        """Logits ``[Q, C]`` a word–referent trial is answered with (``stream.answer``).

        ``both`` is :meth:`scores`; ``state`` keeps only the memory path: the
        state path of a model with a state, the attention path of the attention
        peer (what its context retrieved), the only paths that can know a name
        first heard in the recording tested. Their scale is then irrelevant to the
        choice but kept so summed log-probabilities over an utterance's clips stay
        calibrated. The dual encoder has no memory path and answers with ``both``.
        """
        if self.stream_cfg.answer == "state":
            if probe.recall is not None and cands.ids is not None and cands.alpha is not None:
                return self.state_scale.exp().clamp(max=100.0) * self._state_scores(
                    probe.recall, cands.ids, cands.alpha)
            if probe.retrieved is not None and self.recent is not None:
                return self.recent.scores(probe.retrieved, cands.embed)
        return self.scores(probe, cands)

    # ------------------------------------------------------------ objective
    def count_scored(self, batch: dict[str, Any]) -> int:
        """Clips of the batch the objective scores (sound above the floor, picture present)."""
        gate = speech_gate(batch["audio"], batch["audio_mask"], self.stream_cfg.gate)
        return int((gate * batch["video_mask"].float()).sum())

    def window_objective(self, batch: dict[str, Any], memory: Memory, carry: Carry
                         ) -> WindowResult:
        """Run a window of clips through the state and score hearing → seeing.

        Args:
            batch: ``audio``/``video`` with their masks ``[B, T]`` and an optional
                ``reset`` ``[B]`` (streams starting afresh).
            memory: the window's view of the fast state.
            carry: active nodes from the previous window.
        """
        fa, fv, heard = self._features(batch)
        b, t = fa.shape[:2]
        reset = batch.get("reset")
        if reset is not None:
            keep = (~reset.to(torch.bool)).to(carry.vals.dtype)[:, None]
            carry = Carry(carry.ids, carry.vals * keep)
        recalls: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []
        alphas: list[torch.Tensor] = []
        gate = speech_gate(batch["audio"], batch["audio_mask"], self.stream_cfg.gate)
        lag = self.lagged_recall if self.training else None
        if lag is not None:
            lag.begin_window(getattr(memory, "base", None))
        if self.writer is not None:
            xa = self._addressing(fa, 1, batch["audio_mask"])
            xv = self._addressing(fv, 0, batch["video_mask"])
            # unbind, not [:, s]: a slice's backward fills a whole [B, T, ·] per step.
            for xa_s, xv_s, gate_s in zip(xa.unbind(1), xv.unbind(1), gate.unbind(1)):
                h0, carry, _, _ = self._state_step(xa_s, memory, carry, recall=True,
                                                   gate=gate_s, lag=lag)
                assert h0 is not None
                recalls.append(h0)
                _, carry, v_ids, v_alpha = self._state_step(xv_s, memory, carry, False)
                ids.append(v_ids)
                alphas.append(v_alpha)
        probe = Probe(self._embed_audio(fa).flatten(0, 1),
                      torch.stack(recalls, 1).flatten(0, 1) if recalls else None)
        cands = Candidates(self._embed_video(fv).flatten(0, 1),
                           torch.stack(ids, 1).flatten(0, 1) if ids else None,
                           torch.stack(alphas, 1).flatten(0, 1) if alphas else None)
        stream, when = clip_positions(batch, b, t, fa.device)
        if self.recent is not None:
            present = (batch["audio_mask"].bool() & batch["video_mask"].bool()).reshape(-1)
            probe = probe._replace(retrieved=self.recent.window_read(
                fa.flatten(0, 1), cands.embed, stream, when, present,
                max(self.stream_cfg.negative_gap, 1), self.stream_cfg.recent))
        logits = self.scores(probe, cands)
        eye = torch.eye(b * t, dtype=torch.bool, device=fa.device)
        no_picture = ~batch["video_mask"].bool().reshape(-1)[None, :].expand(b * t, -1)
        invalid = no_picture
        gap = self.stream_cfg.negative_gap or t  # 0: none of the same recording's window
        near = (when[:, None] - when[None, :]).abs() < gap
        same = stream[:, None] == stream[None, :]
        invalid = invalid | (same & near)
        if self.stream_cfg.negatives == "recording":
            invalid = invalid | ~same
        if self.stream_cfg.false_negatives:
            invalid = invalid | alike_pictures(fv, invalid | eye, self.stream_cfg.false_negatives)
        keep = (gate * batch["video_mask"].float()).reshape(-1) > 0
        bridged = self._heard_alike(fa, keep, invalid | eye)
        stats: dict[str, float] = {} if bridged is None else {"heard_alike": float(bridged.sum())}
        if bridged is not None and self.stream_cfg.heard_alike_use == "exclude":
            invalid, bridged = invalid | bridged, None
        positive = eye if bridged is None else eye | bridged
        window = self.stream_cfg.positive_window
        if window:
            # The clips around the heard one are positives too (MIL-NCE): a name is
            # said near, not always at, the moment its object is in view.
            close = (when[:, None] - when[None, :]).abs() <= window
            positive = positive | (same & close & ~no_picture)
        logits = logits.masked_fill(invalid & ~positive, NEG_INF)
        if bool(keep.any()) and window:
            kept = logits[keep]
            loss = (torch.logsumexp(kept, 1)
                    - torch.logsumexp(kept.masked_fill(~positive[keep], NEG_INF), 1)).sum()
            correct = int(positive[keep].gather(1, kept.argmax(1, keepdim=True)).sum())
        elif bool(keep.any()):
            target = torch.arange(b * t, device=fa.device)
            loss = F.cross_entropy(logits[keep], target[keep], reduction="sum")
            correct = int((logits[keep].argmax(1) == target[keep]).sum())
            if bridged is not None:
                loss = loss + extra_positive_loss(logits, bridged)
        else:
            loss = (fa.sum() + fv.sum()) * 0.0  # logits hold -inf: their sum is not 0
            correct = 0
        balance = self.writer.pop_balance() if self.writer is not None else None
        if balance is not None:  # per scored clip, as the loss is summed over them
            loss = loss + balance * int(keep.sum())
        if self.training and self.picture_contrast is not None:
            reach = self.stream_cfg.video_ssl_neighbour
            if reach:
                first, second = sample_neighbour_clips(
                    batch["video_mask"], stream, when, reach, self.stream_cfg.video_ssl_pictures)
            else:
                first = second = sample_pictured_clips(batch["video_mask"],
                                                       self.stream_cfg.video_ssl_pictures)
            views = self.picture_contrast.twin_features(
                self.video, first_frames(batch["video"], first),
                first_frames(batch["video"], second))
            stats["video_ssl"] = 0.0  # fewer than two pictures: nothing to tell apart
            if views is not None:
                contrast = self.picture_contrast.loss(views)
                stats["video_ssl"] = float(contrast.detach())
                # Per scored clip too; a window with none still trains the pictures.
                loss = loss + self.stream_cfg.video_ssl * contrast * max(int(keep.sum()), 1)
                if self.stream_cfg.address_ssl and self.writer is not None:
                    # Addressed as the window's pictures are, the running average left alone.
                    agree = address_agreement(
                        self.writer, self._addressing(views + self.modality[0], 0, track=False),
                        self.stream_cfg.address_ssl_loss,
                        self._near_views(torch.cat([first, second]), stream, when))
                    stats["address_ssl"] = float(agree.detach())
                    loss = loss + self.stream_cfg.address_ssl * agree * max(int(keep.sum()), 1)
        if self.training and self.sound_contrast is not None:
            sounds = sample_sounds(heard, gate, self.stream_cfg.audio_ssl_clips)
            contrast = self.sound_contrast(self.audio, sounds)
            stats["audio_ssl"] = float(contrast.detach())
            loss = loss + self.stream_cfg.audio_ssl * contrast * max(int(keep.sum()), 1)
        return WindowResult(loss, int(keep.sum()), correct, carry, stats)

    def _near_views(self, clips: torch.Tensor, stream: torch.Tensor, when: torch.Tensor
                    ) -> torch.Tensor | None:
        """``[V, V]``: which of the views' clips are of one recording and under
        ``stream.address_ssl_gap`` clips apart (None when the gap is 0): the same
        scene a few seconds on, not a negative for the address term."""
        gap = self.stream_cfg.address_ssl_gap
        if not gap:
            return None
        s, w = stream[clips], when[clips]
        return (s[:, None] == s[None, :]) & ((w[:, None] - w[None, :]).abs() < gap)

    def _heard_alike(self, fa: torch.Tensor, heard: torch.Tensor, excluded: torch.Tensor
                     ) -> torch.Tensor | None:
        """``[Q, C]``: negatives that sound like their query (``stream.heard_alike``
        mutual nearest over the scored clips; :func:`alike_sounds`), or None when off."""
        k = self.stream_cfg.heard_alike
        if not k:
            return None
        return alike_sounds(fa, heard[:, None] & heard[None, :] & ~excluded, k)

    # -------------------------------------------------------------- trials
    def probe(self, audio: torch.Tensor, memory: Memory | None,
              recent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> Probe:
        """Hear ``audio`` ``[Q, n_mels, A]`` alone, from no carried activity, and recall.

        With ``audio_context`` c, each query is ``2c+1`` clips' log-mel in time
        order, ``[Q, n_mels, (2c+1)·A]`` (:func:`~obs_dist.model.clip_context.with_neighbours`).

        Args:
            audio: log-mel clips.
            memory: the state as it stands (a fresh window over it); None for the
                dual encoder.
            recent: for attention over the recent clips (``stream.recent``): the
                context's audio features ``[K, d]`` and picture embeddings ``[K, e]``
                (:meth:`context_features`) and ``[Q, K]`` which of them each query
                may attend to.
        """
        fa = self.audio(self._hearable(audio)) + self.modality[1]
        recall = retrieved = None
        if self.writer is not None:
            assert memory is not None
            recall, _, _, _ = self._state_step(self._addressing(fa, 1), memory, self.initial_carry(
                audio.shape[0], audio.device), recall=True)
        if self.recent is not None and recent is not None:
            retrieved = self.recent.read(fa, *recent)
        return Probe(self._embed_audio(fa), recall, retrieved)

    def context_features(self, audio: torch.Tensor, video: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips heard and seen, as attention's context: audio features ``[K, d]``
        and picture embeddings ``[K, e]`` (audio as :meth:`probe` hears it)."""
        fa = self.audio(self._hearable(audio)) + self.modality[1]
        return fa, self._embed_video(self.video(video) + self.modality[0])

    def candidates(self, video: torch.Tensor) -> Candidates:
        """See ``video`` clips ``[C, F, 3, H, W]`` alone: embeddings and addressed nodes."""
        fv = self.video(video) + self.modality[0]
        if self.writer is None:
            return Candidates(self._embed_video(fv), None, None)
        xv = self._addressing(fv, 0)
        if self._name_links():  # the nodes the names were linked to, as they were
            ids = name_nodes(self.writer, xv, self.name_links.nodes)
            return Candidates(self._embed_video(fv), ids, even_weights(ids, xv))
        prop = self.writer(torch.cat([xv, torch.zeros_like(xv)], dim=1))
        return Candidates(self._embed_video(fv), prop.ids, prop.alpha)

    def addresses(self, clips: torch.Tensor, kind: str, nodes: int = 0) -> torch.Tensor:
        """The nodes ``[n, k_max]`` the writer addresses for clips seen or heard alone.

        Args:
            clips: video ``[n, F, 3, H, W]`` (``kind = "video"``) or log-mel
                ``[n, n_mels, A]`` (``kind = "audio"``).
            kind: ``video`` or ``audio``.
            nodes: the product keys' best ``nodes`` instead (``[n, nodes]``; the
                ``name_links`` rule's, :func:`~obs_dist.model.name_links.name_nodes`).
        """
        if self.writer is None:
            raise ValueError("the dual encoder (state_path = false) addresses no nodes")
        if kind == "video":
            f = self.video(clips) + self.modality[0]
        elif kind == "audio":
            f = self.audio(self._hearable(clips)) + self.modality[1]
        else:
            raise ValueError(f"kind must be 'video' or 'audio', got {kind!r}")
        f = self._addressing(f, 0 if kind == "video" else 1)
        if nodes:
            return name_nodes(self.writer, f, nodes)
        return self.writer(torch.cat([f, torch.zeros_like(f)], dim=1)).ids
