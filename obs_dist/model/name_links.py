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

import torch

from obs_dist.model.model import Carry, Memory
from obs_dist.model.writer import Writer

# How the state is written while the slow weights are frozen (a study pass, a
# trial's query): "learnt", the rule trained; "name_links", :func:`name_link_step`.
STUDY_RULES = ("learnt", "name_links")


def name_link_step(writer: Writer, recall_norm: bool, f: torch.Tensor, memory: Memory,
                   carry: Carry, recall: bool, gate: torch.Tensor | None
                   ) -> tuple[torch.Tensor | None, Carry, torch.Tensor, torch.Tensor]:
    """One hear or see step of the state that writes only the names' links.

    A heard step (``recall``) reads as the trained model does (the recall
    divided by the column mass with ``recall_norm``) and writes nothing; where
    ``gate`` passes, its own nodes, equally weighted, become the carry. A seen
    step links the carry to the picture's own nodes, equally weighted, and keeps
    the carry, so a name binds to what is seen until the next speech. Nothing
    else is written. The addresses are the writer's.

    Args:
        writer: the trained writer (addresses and coefficients).
        recall_norm: divide the recall by each node's column mass.
        f: the step's addressing features ``[B, d]``.
        memory: the window's view of the state.
        carry: the nodes carried from the last heard step.
        recall: a heard step (True) or a seen one.
        gate: ``[B]`` which heard steps carried speech (None: a trial's query).

    Returns:
        As :meth:`AVStreamModel._state_step`: ``(recall or None, carry, ids, alpha)``.
    """
    prop = writer(torch.cat([f, torch.zeros_like(f)], dim=1))
    k = prop.ids.shape[1]
    even = torch.full_like(prop.alpha, k ** -0.5)
    h0 = None
    if recall:
        h0 = memory.read(prop.ids, even)
        if recall_norm:
            h0 = h0 / (1.0 + memory.column_mass())
        if gate is not None:  # its own nodes are carried, padded to m at weight 0
            m = carry.ids.shape[1]
            pad = max(m - k, 0)
            ids = torch.cat([prop.ids, prop.ids[:, :1].expand(-1, pad)], 1)[:, :m]
            vals = torch.cat([even, even.new_zeros(even.shape[0], pad)], 1)[:, :m]
            heard = gate[:, None] > 0
            carry = Carry(torch.where(heard, ids, carry.ids), torch.where(heard, vals, carry.vals))
    else:
        memory.write("name_links", carry.ids, carry.vals, prop.ids, even)
    memory.next_step()
    return h0, carry, prop.ids, prop.alpha
