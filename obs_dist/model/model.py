"""``OBSModel``: encoder → writer → sparse write → propagate → read-out.

Per time step and stream (DESIGN §3):

1. encode ``f_t``;
2. context ``c_t = [f_t ; Eᵀ a_{t-1}]`` (embedding bag over the m most active nodes);
3. the writer picks up to ``k_max`` nodes ``S_t`` by product keys, a learned count
   and signed coefficients ``α``, and a write strength ``η``;
4. it writes the pairs ``(S_t ∪ A_{t-1}) × S_t``: activity in what was active
   when the input arrived (and in the input's own nodes) now flows into the new
   nodes — the associative link. With ``backward_links`` it also writes
   ``S_t × A_{t-1}`` (symmetric association);
5. activity spreads from the written nodes through their rows,
   ``h = Σ_i α_i X[S_i, :]``; ``a_t = top_m(h)``;
6. ``y_t = LN(Eᵀ a_t + f_t)`` feeds the task head.

The fast state is read through a :class:`~obs_dist.model.window.WindowMemory` (or any
object with the same ``write``/``read``/``read_entries``/``next_step`` methods,
such as the dense reference used in tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from obs_dist.model.address_ssl import ADDRESS_LOSSES
from obs_dist.model.alike_clips import HEARD_ALIKE_USES
from obs_dist.model.av_encoders import AUDIO_POOLS
from obs_dist.model.encoders import build_encoder
from obs_dist.model.lagged_recall import RECALL_FROM
from obs_dist.model.recent_attention import MATCHES
from obs_dist.model.table_bag import TableBags
from obs_dist.model.writer import Writer, WriterConfig

NEGATIVES = ("all", "recording")


@dataclass
class StreamConfig:
    """The label-free objective of ``task.name = "av-stream"``.

    Attributes:
        state_path: score candidates through the state (OBS); False gives the
            dual-encoder peer (same encoders and loss, no state).
        embed: width of the direct path's joint embedding.
        gate: clips are scored when their loudest 10 % of audio frames exceed the
            window's noise floor (20th percentile) by this much (natural-log
            mel energy; 1.5 ≈ 6.5 dB).
        negative_gap: clips of the same recording count as negatives only when at
            least this many clips away (nearer ones are mostly the same scene, a
            false negative); 0 excludes the whole recording's window. Negatives of
            the same recording make the task "which object", not "which recording".
        positive_window: the pictures up to this many clips either side of a heard
            clip (same recording) all count as its positives, the loss asking that
            one of them be picked (MIL-NCE, Miech et al. 2020); 0 keeps the
            picture of the same moment as the only positive. Narration names
            things near, not exactly at, the moment they are in view; the
            in-batch accuracy then counts any positive picked. Must be below
            ``negative_gap`` (when that is not 0), so no clip is both.
        false_negatives: leave out, for each heard clip, this many of its negatives
            whose pictures look most like its own (the video features' cosine):
            a recording shows its objects again and again, and a negative showing
            the named object teaches the word away from it. 0: none left out.
        heard_alike: pair each scored clip with the negatives that *sound* most like
            it, each among the other's this-many nearest (mutual nearest neighbours,
            cosine of the audio features, no gradient;
            ``obs_dist/model/alike_clips.py``): within a recording two clips sound
            alike mostly when one name is said in both, so their pictures likely
            show one object, in two scenes. 0: off.
        heard_alike_use: what a pair found by ``heard_alike`` becomes: ``positive``
            (the other clip's picture is a second target of the heard clip, its
            own cross-entropy term; with ``positive_window``, one more positive of
            the MIL-NCE) or ``exclude`` (left out of the negatives).
        negatives: ``all`` (other recordings' clips too) or ``recording`` (only
            the same recording's clips ``negative_gap`` or more apart). Other
            recordings differ in voice, room and scenery, so telling them apart
            needs no word at all: a shortcut that fails on recordings never heard.
            Within one recording the voice and room are shared, and only what is
            said can pick the moment.
        augment: while training, vary each clip in what does not change its
            meaning (``obs_dist/model/augment.py``: video mirrored and moved,
            audio moved in time), so rehearsed clips are not learnt by heart.
        audio_floor: hear each mel band above its own noise floor (the clip's
            10th percentile over time, subtracted from the log-mel and clipped
            at 0): the room's noise level changes from room to room and would
            otherwise tell the moment (which room) without any word.
        audio_context: clips heard on each side of a clip with it (its log-mel
            and theirs, in time order, as one input). A one-second clip cuts
            words and phrases at arbitrary places; a name said within a second
            of its object is then heard whole.
        carry: what a step hands on as the active nodes: ``propagated`` (the
            top-m of what it recalls) or ``addressed`` (its own nodes).
        recall_norm: divide the recalled activity by each node's column mass
            (how strongly everything links to it), so hub nodes that every input
            links to do not outvote the specific ones.
        direct_weight: weight of the direct path's logits in the objective (and in
            ``answer = "both"``); 0 leaves the state path alone to train the
            encoders (with ``state_path``). Where names are new in every recording,
            the slow weights can lower the loss only by learning the rehearsed
            moments by heart, and that pulls the features the addresses are made of
            toward what tells moments apart.
        answer: how a word–referent trial is answered: ``both`` (the training
            objective's logits: direct path plus state path) or ``state`` (the
            memory path alone: what the state bound, or what the attention
            peer's context retrieved, the only paths that can know a name first
            heard in the recording being tested; the direct path then only
            trains the encoders, as an auxiliary head).
        video_ssl: weight of the pictures' own contrastive term
            (``obs_dist/model/video_ssl.py``: two views of each sampled picture
            must find each other, SimCLR); 0 turns it off.
        video_ssl_pictures: pictures of a window that term samples.
        video_ssl_neighbour: 0: a picture's twin in that term is another view of
            itself; ``r`` > 0: a view of the picture of a clip 1 to ``r`` clips
            later in the same recording (a camera keeps looking at the same things
            for seconds: what stays is the object, not its place or size).
        address_ssl: weight of the pictures' address agreement
            (``obs_dist/model/address_ssl.py``: two views of a picture must land
            on the same nodes, through each codebook's softmax over its
            sub-keys); needs ``video_ssl`` > 0 (its views); 0 turns it off.
            The dual-encoder peers (``state_path = false``) have no addresses:
            for them it adds nothing, as ``recall_norm`` does not, so one
            ``train_set`` serves every learner.
        address_ssl_loss: ``agree`` (DINO's sharpened, centred twin target per
            codebook) or ``contrast`` (SimCLR over the views' sub-key
            softmaxes: other pictures are pushed off the nodes too).
        address_ssl_gap: for ``contrast``, pictures of one recording under this
            many clips apart are not each other's negatives (a camera shows one
            scene for seconds); 0: every other view is a negative.
        audio_ssl: weight of the sounds' own contrastive term
            (``obs_dist/model/audio_ssl.py``: two views of each sampled clip
            above the noise floor must find each other); 0 turns it off.
        audio_ssl_clips: clips of a window that term samples.
        audio_pool: how the audio encoder averages over time: ``mean`` or
            ``speech`` (frames weighted by their loudness above the clip's
            quietest, :func:`~obs_dist.model.av_encoders.speech_weights`).
        address_centring: centre and scale each modality's features (running
            statistics, no learned part) before they address nodes, so what all
            pictures or all sounds share does not send them to the same nodes.
        centring_scope: in training, whose statistics centre a window's
            features: ``window`` (all its streams' clips together) or ``stream``
            (each stream's own clips, one recording's stretch: what every clip
            of that recording shares is taken out as well, as the word–referent
            suite's ``study_centring = "recording"`` does for a held-out one).
        recent: attention over earlier clips of the recording, the
            context-window peer of OBS (``obs_dist/model/recent_attention.py``;
            needs ``state_path = false``): in training up to ``recent`` clips
            back; 0 turns it off.
        recent_match: how a heard clip matches the context's clips: ``learnt``
            (a query and a key projection, as a transformer's) or ``features``
            (the cosine similarity of the audio features themselves, centred over
            the context, at a learnt temperature: the same sound matches itself
            however little the projections were trained).
        recall_from: what a hearing step reads in training: ``current`` (the
            committed state and this window's writes so far) or
            ``previous_window`` (a copy of the state taken when the previous
            window began, so every link recalled is a window or more old: the
            last seconds' scene cannot answer for the word;
            ``obs_dist/model/lagged_recall.py``; measured, not adopted:
            docs/decisions.md §29).
    """

    state_path: bool = True
    embed: int = 64
    gate: float = 1.5
    negative_gap: int = 8
    positive_window: int = 0
    false_negatives: int = 0
    heard_alike: int = 0
    heard_alike_use: str = "positive"
    negatives: str = "all"
    augment: bool = False
    audio_floor: bool = False
    audio_context: int = 0
    carry: str = "propagated"
    recall_norm: bool = False
    direct_weight: float = 1.0
    answer: str = "both"
    video_ssl: float = 0.0
    video_ssl_pictures: int = 128
    video_ssl_neighbour: int = 0
    address_ssl: float = 0.0
    address_ssl_loss: str = "agree"
    address_ssl_gap: int = 0
    audio_ssl: float = 0.0
    audio_ssl_clips: int = 128
    audio_pool: str = "mean"
    address_centring: bool = False
    centring_scope: str = "window"
    recent: int = 0
    recent_match: str = "learnt"
    recall_from: str = "current"

    def __post_init__(self) -> None:
        if self.recent < 0:
            raise ValueError(f"model.stream.recent must be >= 0, got {self.recent}")
        if self.centring_scope not in ("window", "stream"):
            raise ValueError(f"model.stream.centring_scope must be 'window' or 'stream', "
                             f"got {self.centring_scope!r}")
        if self.recent_match not in MATCHES:
            raise ValueError(f"model.stream.recent_match must be one of {list(MATCHES)}, "
                             f"got {self.recent_match!r}")
        if self.recent and self.state_path:
            raise ValueError("model.stream.recent (attention over the recent clips) is the "
                             "peer without a state: set model.stream.state_path = false")
        if self.recent and self.recent <= self.negative_gap:
            raise ValueError(f"model.stream.recent ({self.recent}) must exceed "
                             f"model.stream.negative_gap ({self.negative_gap}): while training "
                             f"a clip attends to the clips negative_gap to recent before it")
        for name in ("video_ssl", "address_ssl", "audio_ssl", "gate", "direct_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"model.stream.{name} must be a finite number >= 0, "
                                 f"got {value}")
        for name, low in (("audio_ssl_clips", 2), ("video_ssl_pictures", 2), ("embed", 2),
                          ("negative_gap", 0), ("false_negatives", 0), ("positive_window", 0),
                          ("heard_alike", 0),
                          ("video_ssl_neighbour", 0), ("address_ssl_gap", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"model.stream.{name} must be >= {low}, "
                                 f"got {getattr(self, name)}")
        if self.address_ssl and not self.video_ssl:
            raise ValueError("model.stream.address_ssl needs model.stream.video_ssl > 0: it "
                             "addresses the views that term draws")
        if self.address_ssl_loss not in ADDRESS_LOSSES:
            raise ValueError(f"model.stream.address_ssl_loss must be one of "
                             f"{list(ADDRESS_LOSSES)}, got {self.address_ssl_loss!r}")
        if self.address_ssl_gap and self.address_ssl_loss != "contrast":
            raise ValueError("model.stream.address_ssl_gap leaves views out of the negatives, "
                             "which only address_ssl_loss = \"contrast\" has")
        if self.direct_weight == 0 and not self.state_path:
            raise ValueError("model.stream.direct_weight = 0 leaves the dual encoder "
                             "(state_path = false) nothing to learn with")
        if self.negative_gap and self.positive_window >= self.negative_gap:
            raise ValueError(f"model.stream.positive_window ({self.positive_window}) must be "
                             f"below model.stream.negative_gap ({self.negative_gap}): a clip "
                             f"cannot be both a positive and a negative")
        if not 0 <= self.audio_context <= 4:
            raise ValueError(f"model.stream.audio_context must be in [0, 4], "
                             f"got {self.audio_context}")
        if self.carry not in ("propagated", "addressed"):
            raise ValueError(f"model.stream.carry must be 'propagated' or 'addressed', "
                             f"got {self.carry!r}")
        if self.answer not in ("both", "state"):
            raise ValueError(f"model.stream.answer must be 'both' or 'state', got {self.answer!r}")
        if self.audio_pool not in AUDIO_POOLS:
            raise ValueError(f"model.stream.audio_pool must be one of {list(AUDIO_POOLS)}, "
                             f"got {self.audio_pool!r}")
        if self.heard_alike_use not in HEARD_ALIKE_USES:
            raise ValueError(f"model.stream.heard_alike_use must be one of "
                             f"{list(HEARD_ALIKE_USES)}, got {self.heard_alike_use!r}")
        if self.recall_from not in RECALL_FROM:
            raise ValueError(f"model.stream.recall_from must be one of {list(RECALL_FROM)}, "
                             f"got {self.recall_from!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"model.stream.negatives must be one of {list(NEGATIVES)}, "
                             f"got {self.negatives!r}")


@dataclass
class ModelConfig:
    """The slow-weight model.

    Attributes:
        d_model: feature width d.
        encoder: ``tokens`` (synthetic tasks) or ``av`` (audio-visual clips).
        vocab: input tokens (``tokens`` encoder); 0 = taken from the task.
        classes: outputs of the task head; 0 = taken from the task (or the data).
        n_mels: log-mel bands (``av`` encoder).
        image_size: frame side in pixels (``av`` encoder).
        audio_layers: strided convolutions of the audio clip encoder
            (:class:`~obs_dist.model.av_encoders.AudioClipEncoder`; ``av-stream``).
            4 was worse than 2 at 16 recordings (docs/results/notes.md, third round).
        video_width: channels of the video clip encoder's convolutions
            (:class:`~obs_dist.model.av_encoders.VideoClipEncoder`; ``av-stream``).
            128 scored no better than 64 at 64 recordings (docs/decisions.md §22).
        writer: the writer.
        stream: the label-free objective (``task.name = "av-stream"`` only).
    """

    d_model: int = 64
    encoder: Literal["tokens", "av"] = "tokens"
    vocab: int = 0
    classes: int = 0
    n_mels: int = 64
    image_size: int = 64
    audio_layers: int = 2
    video_width: int = 64
    writer: WriterConfig = field(default_factory=WriterConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if self.d_model < 2:
            raise ValueError(f"d_model must be >= 2, got {self.d_model}")
        if self.encoder not in ("tokens", "av"):
            raise ValueError(f"encoder must be 'tokens' or 'av', got {self.encoder!r}")
        if self.vocab < 0 or self.vocab == 1:
            raise ValueError(f"vocab must be 0 (from the task) or >= 2, got {self.vocab}")
        if self.classes < 0 or self.classes == 1:
            raise ValueError(f"classes must be 0 (from the task) or >= 2, got {self.classes}")
        if not 1 <= self.audio_layers <= 6:
            raise ValueError(f"model.audio_layers must be in [1, 6], got {self.audio_layers}")
        if self.video_width < 2 or self.video_width % 2:
            raise ValueError(f"model.video_width must be even and >= 2, got {self.video_width}")


class Carry(NamedTuple):
    """What one window hands to the next: the most active nodes and their weights."""

    ids: torch.Tensor  # [B, m] int64
    vals: torch.Tensor  # [B, m]

    def detach(self) -> Carry:
        """Out of the autograd graph (truncated BPTT)."""
        return Carry(self.ids, self.vals.detach())


class Memory(Protocol):
    """The read/write interface the model needs from the fast state."""

    def write(self, kind: str, rows: torch.Tensor, a: torch.Tensor, cols: torch.Tensor,
              b: torch.Tensor) -> None: ...

    def read(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor: ...

    def read_top(self, rows: torch.Tensor, weights: torch.Tensor, m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def column_mass(self) -> torch.Tensor: ...

    def read_entries(self, rows: torch.Tensor, weights: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor: ...

    def next_step(self) -> None: ...


class OBSModel(nn.Module):
    """The slow weights θ: encoder, node embeddings E, writer, read-out and head.

    Args:
        config: model settings.
        nodes: N, the size of the big state.
    """

    def __init__(self, config: ModelConfig, nodes: int) -> None:
        super().__init__()
        if config.classes < 2 or (config.encoder == "tokens" and config.vocab < 2):
            raise ValueError("model.vocab and model.classes must be resolved (>= 2) before "
                             "building the model")
        self.config = config
        self.num_nodes = nodes
        d = config.d_model
        self.encoder = build_encoder(config.encoder, d, config.vocab, config.n_mels,
                                     config.image_size)
        # E is read through TableBags: each step touches only m + k_max rows,
        # a dense [N, d] gradient per lookup would cost more than the whole state
        # read at large N (measured: 1.5 s of a 2.9 s window at N = 32768), and
        # summed sparse ones are quadratic in T; the window's lookups add into
        # one dense gradient instead.
        self.node_embed = nn.Embedding(nodes, d)
        self.writer = Writer(config.writer, nodes, context_dim=2 * d)
        self.back_gain = nn.Parameter(torch.tensor(0.5)) if config.writer.backward_links else None
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.classes)

    def initial_carry(self, batch: int, device: torch.device | str) -> Carry:
        """No active nodes (zero weights) at the start of a stream."""
        m = self.config.writer.active
        return Carry(torch.zeros(batch, m, dtype=torch.long, device=device),
                     torch.zeros(batch, m, device=device))

    def step(self, f: torch.Tensor, memory: Memory, carry: Carry, table: TableBags,
             active: torch.Tensor | None = None,
             heads: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, Carry, torch.Tensor, dict[str, torch.Tensor]]:
        """One time step for all streams.

        Args:
            f: ``[B, d]`` encoded input of this step.
            memory: the fast state as seen by this window.
            carry: the previous step's active nodes.
            table: the window's lookups of E (``Eᵀ a``: O(m·d) each).
            active: ``Eᵀ a`` of ``carry`` when it was read already (the
                previous step's read-out reads the same bag); None: read here.
            heads: ``(part, weight)``: the writer heads of ``f`` alone
                (:meth:`Writer.head_weights`' input columns and bias), taken
                for the whole window at once, and the transposed columns of
                ``Eᵀ a`` that complete them. None: the whole context here.

        Returns:
            ``(y [B, d], new carry, Eᵀ a of the new carry, per-step statistics)``;
            the statistics (``count``, ``eta``) are per stream, detached.
        """
        cfg = self.config.writer
        if active is None:
            active = table.bag(carry.ids, carry.vals)
        if heads is None:
            prop = self.writer(torch.cat([f, active], dim=1))
        else:
            # The context's other half, Eᵀ a_{t-1}: the heads' remaining columns.
            part, weight = heads
            prop = self.writer.propose(torch.addmm(part, active, weight))
        rows = torch.cat([prop.ids, carry.ids], dim=1)
        key = torch.cat([prop.alpha, carry.vals], dim=1)
        key = key / (key.norm(dim=1, keepdim=True) + 1e-6)
        a = prop.eta[:, None] * key
        if cfg.rule == "delta":
            # Error-correcting: move key·X[rows, S] towards α (Longhorn/DeltaNet
            # restricted to the selected entries).
            b = prop.alpha - memory.read_entries(rows, key, prop.ids)
        else:
            b = prop.alpha
        memory.write("link", rows, a, prop.ids, b)
        if self.back_gain is not None:
            memory.write("back", prop.ids, self.back_gain * prop.eta[:, None] * prop.alpha,
                         carry.ids, carry.vals)
        vals, ids = memory.read_top(prop.ids, prop.alpha, cfg.active)
        vals = vals / (vals.norm(dim=1, keepdim=True) + 1e-6)
        read_out = table.bag(ids, vals)
        y = self.norm(read_out + f)
        memory.next_step()
        stats = {"count": prop.k_hat.detach(), "eta": prop.eta.detach()}
        return y, Carry(ids, vals), read_out, stats

    def forward_window(self, batch: dict[str, Any], memory: Memory, carry: Carry
                       ) -> tuple[torch.Tensor, Carry, dict[str, float]]:
        """Run a window of T steps over B streams.

        Args:
            batch: encoder inputs (``tokens`` ``[B, T]`` or audio/video) and an
                optional ``reset`` ``[B]`` marking streams that start afresh.
            memory: the window's view of the fast state.
            carry: active nodes from the previous window.

        Returns:
            ``(logits [B, T, classes], carry, mean statistics)``.
        """
        feats = self.encoder(batch)
        reset = batch.get("reset")
        if reset is not None:
            keep = (~reset.to(torch.bool)).to(carry.vals.dtype)[:, None]
            carry = Carry(carry.ids, carry.vals * keep)
        outs = []
        per_step: dict[str, list[torch.Tensor]] = {}
        table = TableBags(self.node_embed.weight)
        # The writer's heads of the input half of the context, for every step
        # in one product (the other half, Eᵀ a_{t-1}, is known only step by step).
        weight, bias = self.writer.head_weights()
        d = feats.shape[2]
        from_input = F.linear(feats, weight[:, :d], bias)
        weight_active = weight[:, d:].t()
        active = None  # the first step reads its carry's bag (a new window's table)
        # unbind: one backward that stacks the steps' gradients; feats[:, t]
        # would fill a zero [B, T, d] per step in the backward pass (O(T²)).
        for feat, heads in zip(feats.unbind(1), from_input.unbind(1)):
            y, carry, active, stats = self.step(feat, memory, carry, table, active,
                                                (heads, weight_active))
            outs.append(y)
            for k, v in stats.items():
                per_step.setdefault(k, []).append(v)
        logits = self.head(torch.stack(outs, dim=1))
        # One host sync per window, not per step.
        return logits, carry, {k: float(torch.stack(v).mean()) for k, v in per_step.items()}
