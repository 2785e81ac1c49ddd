"""Sparse in-graph window deltas and reads against ``X_base + Σ Δ_τ``.

Every write of the model is a rank-1 block ``Δ[R_i, C_j] += a_i · b_j`` over a few
rows ``R`` and columns ``C`` (both the Hebbian and the delta rule have this
form). The window keeps these blocks — indices plus the two coefficient vectors,
still in the autograd graph — and never materialises a dense N×N copy per
stream. A read of a row combination ``Σ_i w_i X[S_i, :]`` is then

* the base part, one ``embedding_bag`` over the dense state (O(k·N)), plus
* for every block, the overlap ``o = Σ_{i,j} w_i a_j [S_i = R_j]`` (the row
  combination scattered into a dense vector once, then one gather for all
  blocks of the window) times ``b`` scattered at ``C``.

So a step costs O(k·N + L·(r + c)) for L blocks in the window, with no Python
loop over the history. After backward, :meth:`WindowMemory.to_delta` expands the
blocks into COO entries for the commit.

Across ranks, the sequential phase passes an ``exchange`` function (see
:func:`obs_dist.engine.collectives.make_block_exchange`): at every ``next_step`` the
step's blocks of all ranks are gathered and the other ranks' ones are kept as
*foreign* blocks, visible to every local stream from the next step on. Foreign
blocks are detached (gradients do not cross ranks: a documented truncation) and
never enter :meth:`to_delta`, because their owner commits them and the delta
sync sums them into every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from obs_dist.model.block_indices import BlockIndices
from obs_dist.model.delta import SparseDelta
from obs_dist.model.state import read_entries

Blocks = dict[str, tuple[torch.Tensor, ...]]
Exchange = Callable[[Blocks], Blocks]


class _Pick(torch.autograd.Function):
    """``dense.gather(1, index)`` whose backward keeps the index and the shape only."""

    @staticmethod
    def forward(ctx: Any, dense: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape = dense.shape
        return dense.gather(1, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        # What gather's own backward computes: zeros, then a scatter-add.
        return grad.new_zeros(ctx.shape).scatter_add_(1, index, grad), None


def pick(dense: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``dense.gather(1, index)`` (``[B, N]``, ``[B, Q]``), saving only the index for backward.

    ``gather`` saves its whole input for the backward pass: a ``[B, N]`` tensor
    per time step, kept until the window's backward (2 GiB for a 256-step window
    of 64 streams at N = 16,384), and the first window pays a page fault for every
    new page of it. The same gather and the same backward, keeping only the index.
    """
    index = index.long()
    if not (torch.is_grad_enabled() and dense.requires_grad):
        return dense.gather(1, index)
    return _Pick.apply(dense, index)


class _SpreadRows(torch.autograd.Function):
    """``w.gather(1, index)`` for each index, ``w`` the weights scattered at ``rows`` (``[B, N]``).

    ``w`` is built in a scratch buffer of zeros that the window keeps, and put
    back to zeros at ``rows`` (k entries a stream) before returning, instead of
    a fresh ``[B, N]`` of zeros per read (a megabyte at MQAR's size; the
    profile in docs/benchmarks.md, "Fewer temporaries"). The backward builds
    the dense gradient of ``w`` once for every index, in a second buffer of the
    window's (cleared, not allocated), and gathers it at ``rows``: what
    ``scatter_add_`` and :func:`pick` give through autograd, in one node.
    """

    @staticmethod
    def forward(ctx: Any, weights: torch.Tensor, rows: torch.Tensor, scratch: torch.Tensor,
                gradient: torch.Tensor, *indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        try:
            scratch.scatter_add_(1, rows, weights)
            picked = tuple(scratch.gather(1, index) for index in indices)
        finally:
            scratch.scatter_(1, rows, 0.0)
        ctx.save_for_backward(rows)
        ctx.indices = indices  # views of the window's index buffers (BlockIndices)
        ctx.gradient = gradient
        return picked

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (rows,) = ctx.saved_tensors
        dense = ctx.gradient.zero_()
        for index, grad in zip(ctx.indices, grads):
            dense.scatter_add_(1, index, grad)
        return (dense.gather(1, rows), None, None, None, *(None for _ in ctx.indices))


class _ColumnsAt(torch.autograd.Function):
    """``window.gather(1, cols)``, ``window`` the blocks' amounts scattered at their columns.

    ``window`` (dense, no graph) gives the values; the gradient goes straight
    to each kind's amounts: the gradient scattered at ``cols`` in the scratch
    buffer of zeros (put back after), gathered at the amounts' columns. Through
    :func:`pick` and ``scatter_add_`` the same gradient took a fresh ``[B, N]``
    of zeros per read.
    """

    @staticmethod
    def forward(ctx: Any, window: torch.Tensor, cols: torch.Tensor, scratch: torch.Tensor,
                columns: tuple[torch.Tensor, ...], *amounts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cols)
        ctx.columns = columns  # views of the window's index buffers (BlockIndices)
        ctx.scratch = scratch
        return window.gather(1, cols)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (cols,) = ctx.saved_tensors
        scratch = ctx.scratch
        try:
            scratch.scatter_add_(1, cols, grad)
            amounts = tuple(scratch.gather(1, c) for c in ctx.columns)
        finally:
            scratch.scatter_(1, cols, 0.0)
        return (None, None, None, None, *amounts)


# Block length of the top-m pre-filter, and how many blocks per chosen value it
# needs before it pays (below that a plain topk over N is as fast).
_TOP_BLOCK = 64
_TOP_MIN_BLOCKS_PER_PICK = 4


def top_m(h: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``h.topk(m, dim=1)`` over ``[B, N]``, through the blocks that can hold it.

    The m largest values of a row lie in the m blocks of 64 columns whose
    maxima are largest: a block whose maximum is below the m-th largest block
    maximum holds nothing above m other blocks' maxima. So a topk over the
    block maxima, then over those m blocks' 64·m values, gives the same values
    as the topk over all N (bit for bit, in the same order) at ~2× less cost.
    Where values tie at the m-th place, another of the tied columns may be
    chosen than the full topk would choose (neither order is specified). Small
    N, or N not a multiple of the block, takes the plain topk.

    Returns:
        ``(values [B, m], columns [B, m])``, values in decreasing order.
    """
    n = h.shape[1]
    blocks = n // _TOP_BLOCK
    if h.dim() != 2 or n % _TOP_BLOCK or blocks < _TOP_MIN_BLOCKS_PER_PICK * m:
        return h.topk(m, dim=1)
    best = h.view(h.shape[0], blocks, _TOP_BLOCK).amax(2).topk(m, dim=1).indices
    offsets = torch.arange(_TOP_BLOCK, device=h.device)
    cols = (best[:, :, None] * _TOP_BLOCK + offsets).flatten(1)  # [B, m·64]
    vals, where = h.gather(1, cols).topk(m, dim=1)
    return vals, cols.gather(1, where)


def entries_at(base: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``base[rows[b, i], cols[b, q]]`` as ``[B, k, Q]``.

    Through flat offsets (:func:`~obs_dist.model.state.read_entries`): about half
    the time of the same advanced indexing, whose random reads miss the cache
    either way. A strided ``base`` takes the advanced index.
    """
    rows, cols = rows.long()[:, :, None], cols.long()[:, None, :]
    return read_entries(base, rows, cols) if base.is_contiguous() else base[rows, cols]


def combine_rows(weights: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
    """``Σ_i weights[b, i] · entries[b, i, q]`` as ``[B, Q]`` (one ``bmm``).

    The same product as ``einsum("bi,biq->bq")``, without einsum's planning on
    every call (a few µs, twice a time step, forward and backward).
    """
    return torch.bmm(weights[:, None, :], entries.to(weights.dtype)).squeeze(1)


@dataclass
class BlockSeq:
    """Blocks of one shape, stacked over time: ``rows/a: [B, L, r]``, ``cols/b: [B, L, c]``."""

    rows: torch.Tensor
    a: torch.Tensor
    cols: torch.Tensor
    b: torch.Tensor
    step: torch.Tensor  # [L] the step at which each block was written (-1: carried in)

    def detach(self) -> BlockSeq:
        """The same blocks out of the autograd graph (carried to the next window)."""
        return BlockSeq(self.rows, self.a.detach(), self.cols, self.b.detach(),
                        torch.full_like(self.step, -1))


class WindowMemory:
    """The deltas of one window for ``B`` streams over a shared base state.

    Args:
        base: the dense ``[N, N]`` base state (not differentiated).
        batch: number of streams B.
        shared: if True (sequential phase) every stream sees every stream's
            writes from the next step on; otherwise each stream sees only its own
            writes (parallel phase).
        exchange: in the shared phase across ranks, gathers each step's blocks
            from the other ranks (None: this process only).
    """

    def __init__(self, base: torch.Tensor, batch: int, shared: bool = False,
                 exchange: Exchange | None = None) -> None:
        self.base = base
        self.num_nodes = base.shape[0]
        self.batch = batch
        self.shared = shared
        self.exchange = exchange if shared else None
        # This window's blocks (and carried ones) per kind; their rows, columns and
        # steps are views of _indices' buffers, their coefficients concatenated.
        self.seqs: dict[str, BlockSeq] = {}
        self._indices: dict[str, BlockIndices] = {}
        self.foreign: dict[str, BlockSeq] = {}  # other ranks' blocks, as one pseudo-stream
        self._this_step: Blocks = {}
        self.step = 0
        self._column_mass: torch.Tensor | None = None
        # [B, N] buffers made once per window, not fresh zeros per read: "zeros" is
        # all zeros between uses; "window" holds the current read's window part;
        # "gradient" the row combination's gradient.
        self._buffers: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ writing
    def write(self, kind: str, rows: torch.Tensor, a: torch.Tensor, cols: torch.Tensor,
              b: torch.Tensor) -> None:
        """Record the block ``Δ[rows_i, cols_j] += a_i·b_j`` for each stream.

        Blocks of the same ``kind`` must keep their shape across steps.
        """
        assert rows.shape == a.shape and cols.shape == b.shape, (rows.shape, cols.shape)
        if self.exchange is not None:
            self._this_step[kind] = (rows, a, cols, b)
        index = self._indices.get(kind)
        old = self.seqs.get(kind)
        if index is None or old is None:
            index = self._indices[kind] = BlockIndices(rows, cols, self.step)
            a_all, b_all = a[:, None], b[:, None]
        else:
            index.append(rows, cols, self.step)
            # The coefficients carry the gradient: concatenated (their bytes are
            # a third of a block's; the indices go to growing buffers).
            a_all, b_all = torch.cat([old.a, a[:, None]], 1), torch.cat([old.b, b[:, None]], 1)
        self.seqs[kind] = BlockSeq(index.rows, a_all, index.cols, b_all, index.step)

    def next_step(self) -> None:
        """Advance the step counter (visibility of other streams' writes).

        With an ``exchange``, this is where the step's blocks of all ranks meet
        (a collective: every rank calls it at every step).
        """
        if self.exchange is not None:
            got = self.exchange(self._this_step)
            self._this_step = {}
            for kind, (rows, a, cols, b) in got.items():
                step = torch.full((rows.shape[0],), self.step, device=rows.device)
                self._append(self.foreign, kind,
                             BlockSeq(rows[None], a[None], cols[None], b[None], step))
        self.step += 1

    def carry(self, shared: bool | None = None, exchange: Exchange | None = None
              ) -> WindowMemory:
        """A memory for the next window of the same sequences: blocks detached.

        Args:
            shared: the next window's phase (default: this window's).
            exchange: the next window's cross-rank exchange (shared phase only).
        """
        out = WindowMemory(self.base, self.batch, self.shared if shared is None else shared,
                           exchange)
        out._carry_blocks(self)
        return out

    def _carry_blocks(self, earlier: WindowMemory) -> None:
        """Take ``earlier``'s blocks and foreign blocks, detached and marked carried in."""
        for kind, seq in earlier.seqs.items():
            index = self._indices[kind] = earlier._indices[kind].carried()
            self.seqs[kind] = BlockSeq(index.rows, seq.a.detach(), index.cols, seq.b.detach(),
                                       index.step)
        self.foreign = {k: s.detach() for k, s in earlier.foreign.items()}

    @staticmethod
    def _append(into: dict[str, BlockSeq], kind: str, seq: BlockSeq) -> None:
        old = into.get(kind)
        into[kind] = seq if old is None else BlockSeq(
            torch.cat([old.rows, seq.rows], 1), torch.cat([old.a, seq.a], 1),
            torch.cat([old.cols, seq.cols], 1), torch.cat([old.b, seq.b], 1),
            torch.cat([old.step, seq.step]))

    def receive(self, kind: str, seq: BlockSeq) -> None:
        """Append foreign blocks produced elsewhere (``[1, L, ·]``), visible to all streams.

        They are read like other streams' writes (from the step after
        ``seq.step``) but never committed here: their owner commits them.
        """
        if seq.rows.shape[0] != 1:
            raise ValueError(f"foreign blocks must be one pseudo-stream [1, L, r], got "
                             f"{tuple(seq.rows.shape)}")
        self._append(self.foreign, kind, seq)

    # ------------------------------------------------------------------ reading
    def _visible(self, kind: str, seq: BlockSeq
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor | None]:
        """Blocks each stream may see, as ``[B, L', ·]`` tensors plus a mask."""
        if not self.shared:
            return seq.rows, seq.a, seq.cols, seq.b, None
        bsz, length = seq.rows.shape[:2]

        def everyone(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(1, bsz * length, -1).expand(bsz, -1, -1)

        owner = torch.arange(bsz, device=seq.rows.device).repeat_interleave(length)
        step = seq.step.repeat(bsz)
        me = torch.arange(bsz, device=seq.rows.device)[:, None]
        # Own writes are visible at once; others' from the next step on.
        mask = (owner[None, :] == me) | (step[None, :] < self.step)
        parts = [everyone(seq.rows), everyone(seq.a), everyone(seq.cols), everyone(seq.b)]
        far = self.foreign.get(kind)
        if far is not None:
            # Other ranks' blocks: visible to every local stream after their step.
            parts = [torch.cat([p, f.expand(bsz, -1, -1)], 1)
                     for p, f in zip(parts, (far.rows, far.a, far.cols, far.b))]
            mask = torch.cat([mask, (far.step < self.step)[None, :].expand(bsz, -1)], 1)
        return parts[0], parts[1], parts[2], parts[3], mask

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The window's ``[B, N]`` buffer ``name`` in ``like``'s dtype and device (made once)."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.zeros(self.batch, self.num_nodes, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf

    def _window_amounts(self, rows: torch.Tensor, weights: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each kind's ``(columns, amounts)`` ``[B, V·c]``: the read's window part, unsummed.

        ``Σ_i weights[b,i] · ΣΔ[rows[b,i], :]`` over the window's blocks is the
        amounts scattered at the columns. The row combination is scattered once
        into a dense ``[B, N]`` vector (the scratch buffer, :class:`_SpreadRows`),
        so each block's overlap ``o = Σ_j a_j · w[R_j]`` is a gather — O(N + L·r)
        per stream, with nothing of size L·k·r kept for the backward pass.
        """
        bsz = rows.shape[0]
        seen = [self._visible(kind, seq) for kind, seq in self.seqs.items()]
        picked = _SpreadRows.apply(weights, rows.long(), self._buffer("zeros", weights),
                                   self._buffer("gradient", weights),
                                   *(r.flatten(1).long() for r, *_ in seen))
        out = []
        for (r, a, c, b, mask), p in zip(seen, picked):
            o = (p.view(bsz, r.shape[1], -1) * a).sum(-1)
            if mask is not None:
                o = o * mask.to(o.dtype)
            out.append((c.flatten(1).long(), (o[:, :, None] * b).flatten(1)))
        return out

    @staticmethod
    def _scatter_into(out: torch.Tensor, amounts: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> torch.Tensor:
        """``out`` (zeros ``[B, N]``) with the amounts added at their columns, in place (an
        out-of-place scatter copies a ``[B, N]`` tensor first)."""
        for cols, values in amounts:
            out.scatter_add_(1, cols, values)
        return out

    def _window_part(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """``Σ_i weights[b,i] · ΣΔ[rows[b,i], :]`` over the window's blocks, dense ``[B, N]``."""
        if not self.seqs:
            return None
        # Autograd keeps the scatter's index for the backward pass: a copy, not
        # a view of the index buffers that later steps append to.
        amounts = [(c.clone(), v) for c, v in self._window_amounts(rows, weights)]
        return self._scatter_into(weights.new_zeros(rows.shape[0], self.num_nodes), amounts)

    def _detached_window(self, amounts: list[tuple[torch.Tensor, torch.Tensor]],
                         like: torch.Tensor) -> torch.Tensor:
        """The amounts' values scattered at their columns, out of the graph, ``[B, N]``.

        In the window's buffer ``"window"``: valid until the next read.
        """
        with torch.no_grad():
            return self._scatter_into(self._buffer("window", like).zero_(),
                                      [(c, v.detach()) for c, v in amounts])

    def _amounts_at(self, window: torch.Tensor, amounts: list[tuple[torch.Tensor, torch.Tensor]],
                    cols: torch.Tensor) -> torch.Tensor:
        """``window[b, cols[b, q]]`` ``[B, Q]``, with the amounts' gradient (``_ColumnsAt``)."""
        out: torch.Tensor = _ColumnsAt.apply(window, cols.long(), self._buffer("zeros", window),
                                             tuple(c for c, _ in amounts),
                                             *(v for _, v in amounts))
        return out

    def column_mass(self) -> torch.Tensor:
        """``Σ_i |X[i, j]|`` of the committed state per column ``[N]`` (cached, no gradient).

        How strongly every node is linked *to* at all: a node that every input
        links to carries no information about any one of them.
        """
        if self._column_mass is None:
            self._column_mass = self.base.detach().abs().sum(0)
        return self._column_mass

    def read(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``h[b] = Σ_i weights[b,i] · X_eff[rows[b,i], :]`` as a dense ``[B, N]``."""
        dt = self.base.dtype
        h = F.embedding_bag(rows, self.base, per_sample_weights=weights.to(dt), mode="sum")
        h = h.to(weights.dtype)
        # The window's part summed on its own first, then added: the sharded
        # layout's owners add the same local part to their base part, bit for bit.
        window = self._window_part(rows, weights)
        return h if window is None else h.add_(window)

    def read_top(self, rows: torch.Tensor, weights: torch.Tensor, m: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``m`` largest entries of :meth:`read` per stream, and their columns.

        The values are :meth:`read`'s, bit for bit, and so is the choice; only
        the gradient is taken differently. Through :meth:`read` it reaches the
        coefficients as ``Σ_j grad[b, j] · X[S_i, j]`` over all N columns
        (``embedding_bag``'s backward reads every selected row again, and the
        top-m's backward fills a dense ``[B, N]``), although ``grad`` is zero
        outside the m chosen columns. Here it goes through those ``k × m``
        entries of the base alone (as the sharded layout's read does); the
        window's part keeps its own gradient.

        Returns:
            ``(values [B, m], columns [B, m])``, values in decreasing order.
        """
        dt = self.base.dtype
        with torch.no_grad():
            h = F.embedding_bag(rows, self.base, per_sample_weights=weights.detach().to(dt),
                                mode="sum").to(weights.dtype)
        amounts = self._window_amounts(rows, weights) if self.seqs else []
        window = self._detached_window(amounts, weights) if amounts else None
        if window is not None:
            h.add_(window)
        vals, ids = top_m(h, m)
        if not (torch.is_grad_enabled() and (weights.requires_grad or window is not None)):
            return vals, ids
        base = entries_at(self.base, rows, ids)  # [B, k, m]
        grad_path = combine_rows(weights, base)
        if window is not None:
            grad_path = grad_path + self._amounts_at(window, amounts, ids)
        # Exactly the values above (x - x == 0), with grad_path's gradient.
        return vals + (grad_path - grad_path.detach()), ids

    def read_entries(self, rows: torch.Tensor, weights: torch.Tensor,
                     cols: torch.Tensor) -> torch.Tensor:
        """``p[b, q] = Σ_i weights[b,i] · X_eff[rows[b,i], cols[b,q]]`` as ``[B, Q]``."""
        base = entries_at(self.base, rows, cols)  # [B, k, Q]
        p = combine_rows(weights, base)
        if not self.seqs:
            return p
        amounts = self._window_amounts(rows, weights)
        return p + self._amounts_at(self._detached_window(amounts, weights), amounts, cols)

    # ------------------------------------------------------------------ commit
    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All written entries as flat ``(rows, cols, values)`` (values in the graph).

        Only blocks written in this window are included (carried ones were
        committed or belong to the sequence, not the state).
        """
        rs, cs, vs = [], [], []
        for seq in self.seqs.values():
            live = seq.step >= 0
            if not bool(live.any()):
                continue
            r = seq.rows[:, live]
            c = seq.cols[:, live]
            v = seq.a[:, live, :, None] * seq.b[:, live, None, :]  # [B, L, r, c]
            rs.append(r[:, :, :, None].expand_as(v).reshape(-1))
            cs.append(c[:, :, None, :].expand_as(v).reshape(-1))
            vs.append(v.reshape(-1))
        if not vs:
            empty = torch.empty(0, dtype=torch.int64, device=self.base.device)
            return empty, empty, torch.empty(0, device=self.base.device)
        return torch.cat(rs), torch.cat(cs), torch.cat(vs)

    def to_delta(self) -> SparseDelta:
        """The window's writes, detached, summed over streams, coalesced, zeros dropped."""
        rows, cols, vals = self.entries()
        vals = vals.detach().float()
        keep = vals != 0
        delta = SparseDelta.from_indices(rows[keep], cols[keep], vals[keep], self.num_nodes)
        return delta.coalesce()

    def write_overlap(self) -> tuple[int, int]:
        """How much the streams' writes of this window overlap (the write-conflict signal).

        Returns:
            ``(Σ_streams distinct entries written by that stream, distinct entries
            written by any stream)``; ``1 − union / total`` is the conflict.
        """
        keys = []
        for seq in self.seqs.values():
            live = seq.step >= 0
            if not bool(live.any()):
                continue
            r, c = seq.rows[:, live].long(), seq.cols[:, live].long()
            v = seq.a[:, live, :, None].detach() * seq.b[:, live, None, :].detach()
            k = r[:, :, :, None] * self.num_nodes + c[:, :, None, :]
            keys.append(torch.where(v != 0, k, torch.full_like(k, -1)).flatten(1))
        if not keys:
            return 0, 0
        ordered = torch.cat(keys, 1).sort(dim=1).values  # [B, M], unwritten (-1) first
        fresh = ordered[:, 1:] != ordered[:, :-1]
        per_stream = int(((ordered[:, 1:] >= 0) & fresh).sum() + (ordered[:, 0] >= 0).sum())
        union = int(torch.unique(ordered[ordered >= 0]).numel())
        return per_stream, union

    def gaussian_penalty(self, init_std: float) -> torch.Tensor:
        """Moment penalty of the touched entries' new values against N(0, σ0²).

        ``(mean/σ0)² + (std/σ0 − 1)²`` over the unique entries written in this
        window, each at ``X_base + Σ Δ`` (differentiable through the deltas).
        """
        rows, cols, vals = self.entries()
        if vals.numel() < 2 or init_std <= 0:
            return vals.sum() * 0.0
        keys = rows.long() * self.num_nodes + cols.long()
        uniq, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(uniq.numel(), dtype=vals.dtype, device=vals.device)
        summed = summed.index_add(0, inverse, vals)
        base = self.base[uniq // self.num_nodes, uniq % self.num_nodes].to(vals.dtype)
        new = base + summed
        return (new.mean() / init_std) ** 2 + (new.std() / init_std - 1.0) ** 2
