"""Only the names' links in the big state while the slow weights are frozen.

:class:`~obs_dist.model.av_stream.AVStreamModel` writes its state with the rule it
was trained with (``study_rule = "learnt"``). With ``"name_links"`` (set by the
word–referent suite, ``study_rule``) a study pass and a trial's query use
:func:`name_link_step` instead; training never does.

Why: on the recipe's three trained models this binding scores 0.05 above the
learnt rule on the same addresses (six model/set pairs, +0.015 to +0.104;
docs/decisions.md §24). The learnt rule also writes links of a
node set to itself, links from pictures and links from the nodes a sound
recalls; the column mass and the recall then weigh those against the name's own
links.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from obs_dist.model.model import Carry, Memory
from obs_dist.model.writer import Writer, product_key_topk

# How the state is written while the slow weights are frozen (a study pass, a
# trial's query): "learnt", the rule trained; "name_links", :func:`name_link_step`.
STUDY_RULES = ("learnt", "name_links")


@dataclass(frozen=True)
class NameLinks:
    """How the ``name_links`` rule studies (the word–referent suite's ``study_nodes``,
    ``study_lookback`` and ``study_decay``; docs/decisions.md §25–§26).

    Attributes:
        nodes: nodes per clip, the product keys' best (0: the writer's ``k_max``).
        lookback: pictures before a heard name that it is linked to as well.
        decay: the name's weight kept after each picture it is linked to (1: held
            until the next speech).
    """

    nodes: int = 0
    lookback: int = 0
    decay: float = 1.0

    def __post_init__(self) -> None:
        if self.nodes < 0:
            raise ValueError(f"study nodes must be >= 0 (0: k_max), got {self.nodes}")
        if self.lookback < 0:
            raise ValueError(f"study lookback must be >= 0, got {self.lookback}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"study decay must be in (0, 1], got {self.decay}")

    def carry_width(self, active: int, k_max: int) -> int:
        """Nodes of a study carry: the name's (at least ``active``), then the last
        ``lookback`` pictures'."""
        k = self.nodes or k_max
        return max(active, k) + self.lookback * k


def name_nodes(writer: Writer, f: torch.Tensor, nodes: int) -> torch.Tensor:
    """A clip's ``nodes`` best nodes ``[B, nodes]`` by the writer's product keys.

    The first ``k_max`` are the writer's own addresses (the same query, the same
    keys); more reach the nodes just below its cut.

    Args:
        writer: the trained writer.
        f: the clip's addressing features ``[B, d]`` (seen or heard alone: the
            carried half of the context is zero, as in training).
        nodes: how many (0: the writer's ``k_max``).
    """
    ctx = torch.cat([f, torch.zeros_like(f)], dim=1)
    query = F.linear(ctx, writer.query.weight, writer.query.bias)
    return product_key_topk(query, writer.keys1, writer.keys2,
                            nodes or writer.config.k_max)[1]


def even_weights(ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Weights ``k ** -0.5`` for each of ``ids``' ``[B, k]`` nodes (unit norm), as ``like``'s."""
    return torch.full(ids.shape, ids.shape[1] ** -0.5, device=like.device, dtype=like.dtype)


def name_link_step(writer: Writer, recall_norm: bool, f: torch.Tensor, memory: Memory,
                   carry: Carry, recall: bool, gate: torch.Tensor | None,
                   links: NameLinks = NameLinks()
                   ) -> tuple[torch.Tensor | None, Carry, torch.Tensor, torch.Tensor]:
    """One hear or see step of the state that writes only the names' links.

    A heard step (``recall``) reads as the trained model does (the recall
    divided by the column mass with ``recall_norm``); where ``gate`` passes, its
    own nodes, equally weighted, become the carry. A seen step links the carry
    to the picture's own nodes, equally weighted, and keeps the carry, so a name
    binds to what is seen until the next speech. With ``links.lookback`` L the
    carry also holds the last L pictures' nodes, and a name heard links to them
    too: a name is said near, not only after, the moment its object is in view.
    With ``links.decay`` below 1 the name's weight is multiplied by it after each
    picture it is linked to, so the pictures right after a name weigh most (a
    trace that fades, not a switch held until the next speech). Nothing else is
    written. The addresses are the writer's best ``links.nodes``.

    Args:
        writer: the trained writer (addresses and coefficients).
        recall_norm: divide the recall by each node's column mass.
        f: the step's addressing features ``[B, d]``.
        memory: the window's view of the state.
        carry: the name's nodes carried from the last heard step, then (with
            ``lookback``) the last pictures' nodes, most recent first.
        recall: a heard step (True) or a seen one.
        gate: ``[B]`` which heard steps carried speech (None: a trial's query).
        links: how many nodes a clip, pictures back, fading
            (:class:`NameLinks`); the carry is :meth:`NameLinks.carry_width` wide.

    Returns:
        As :meth:`AVStreamModel._state_step`: ``(recall or None, carry, ids, weights)``,
        the weights even (``nodes ** -0.5`` each).
    """
    ids = name_nodes(writer, f, links.nodes)
    k = ids.shape[1]
    even = even_weights(ids, f)
    lookback = links.lookback
    m = carry.ids.shape[1] - lookback * k  # the name's part of the carry
    assert m >= k, f"a carry of {m} nodes cannot hold a name's {k}"
    name, seen = Carry(carry.ids[:, :m], carry.vals[:, :m]), Carry(carry.ids[:, m:],
                                                                   carry.vals[:, m:])
    h0 = None
    if recall:
        h0 = memory.read(ids, even)
        if recall_norm:
            h0 = h0 / (1.0 + memory.column_mass())
        if gate is not None:  # its own nodes are carried, padded to m at weight 0
            pad = m - k
            held = torch.cat([ids, ids[:, :1].expand(-1, pad)], 1)
            vals = torch.cat([even, even.new_zeros(even.shape[0], pad)], 1)
            heard = gate[:, None] > 0
            if lookback:  # the name to the pictures just before it
                memory.write("name_links_back", held, vals * heard.to(vals.dtype),
                             seen.ids, seen.vals)
            name = Carry(torch.where(heard, held, name.ids), torch.where(heard, vals, name.vals))
    else:
        memory.write("name_links", name.ids, name.vals, ids, even)
        if links.decay != 1.0:
            name = Carry(name.ids, name.vals * links.decay)
        if lookback:
            seen = Carry(torch.cat([ids, seen.ids[:, :-k]], 1),
                         torch.cat([even, seen.vals[:, :-k]], 1))
    memory.next_step()
    return h0, Carry(torch.cat([name.ids, seen.ids], 1), torch.cat([name.vals, seen.vals], 1)), \
        ids, even
