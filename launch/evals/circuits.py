"""The state's strongest circuits: which nodes a word's audio and its object's video wired.

After cross-modal training, episodes in which every object keeps its own name
(``binding = "world"``) are run through OBS and their writes are committed to
the big state. Then, for every word ``w`` and object ``o`` among the first
``objects``:

* the nodes each input addresses are the writer's choice for that input alone
  (``S_w`` for the word's audio, ``S_o`` for the object's video, with their
  coefficients α), as at the start of a stream;
* the committed change ``D = X − X_before`` is read the way the model reads:
  ``h_w = Σ_i α_{w,i} D[S_{w,i}, :]``, and the strength of ``w → o`` is
  ``Σ_j |α_{o,j}| h_w[S_{o,j}]``;
* the strongest single entries ``D[i, j]`` with ``i`` a word node and ``j`` an
  object node, ``i ≠ j``, are listed with the word and object that address
  them (a node addressed by both a word and an object gets large self-entries
  ``D[i, i]`` from the ``S_t × S_t`` pairs; those are not a link between two
  nodes and are left out).

``match`` is the share of words whose strongest object is the one they name:
1.0 means every name is wired to its object's nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from launch.evals.learners import OBSLearner
from obs_dist.tasks.crossmodal import CrossmodalConfig, episode_batch


@torch.no_grad()
def addressed_nodes(learner: OBSLearner, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and coefficients the writer picks for each token alone.

    Returns:
        ``(ids [n, k_max], alpha [n, k_max])`` on the CPU.
    """
    model = learner.model
    model.eval()
    try:
        tok = torch.tensor(tokens, dtype=torch.long, device=learner.device)[:, None]
        feats = model.encoder({"tokens": tok})[:, 0]
        context = torch.cat([feats, torch.zeros_like(feats)], dim=1)
        prop = model.writer(context)
        return prop.ids.cpu(), prop.alpha.cpu()
    finally:
        model.train()


def circuits(learner: OBSLearner, task: CrossmodalConfig, objects: int, exposures: int,
             top: int = 24) -> dict[str, Any]:
    """Commit fixed-name episodes, then read word→object strengths from the state.

    Args:
        learner: a trained OBS learner (its state is changed by the exposures).
        task: the stand-in task (its pools and batch size are used).
        objects: the first ``objects`` objects and their names are drawn.
        exposures: batches of fixed-name episodes committed first.
        top: strongest single entries listed.

    Returns:
        ``{"words", "objects", "strength" [[w][o]], "match", "edges", "committed_entries"}``.
    """
    before = learner.state.matrix().clone()
    world = dataclasses.replace(task, binding="world", delay=0,
                                per_episode=min(task.per_episode, task.objects - 1))
    gen = torch.Generator().manual_seed(task.seed + 4242)
    committed = 0
    for _ in range(exposures):
        committed += learner.expose(episode_batch(world, world.per_episode, 0, gen))
    change = (learner.state.matrix() - before).float().cpu()
    obj_ids = list(range(objects))
    word_ids = [o % task.words for o in obj_ids]
    w_nodes, w_alpha = addressed_nodes(learner, word_ids)
    o_nodes, o_alpha = addressed_nodes(learner, [task.words + o for o in obj_ids])
    # h_w = Σ_i α_i D[S_w,i, :] for every word: [W, N].
    h = torch.einsum("wk,wkn->wn", w_alpha, change[w_nodes])
    strength = torch.einsum("ok,wok->wo", o_alpha.abs(),
                            h[:, o_nodes.reshape(-1)].reshape(len(word_ids), objects, -1))
    match = float((strength.argmax(dim=1) == torch.arange(objects)).float().mean())
    edges = _top_edges(change, w_nodes, w_alpha, o_nodes, o_alpha, word_ids, obj_ids, top)
    return {"words": word_ids, "objects": obj_ids, "strength": strength.tolist(),
            "match": match, "edges": edges, "committed_entries": committed}


def _owner(nodes: torch.Tensor, alpha: torch.Tensor, labels: list[int]) -> dict[int, int]:
    """For every node, the label (word or object) that addresses it with the largest |α|."""
    best: dict[int, tuple[float, int]] = {}
    for row, label in enumerate(labels):
        for node, a in zip(nodes[row].tolist(), alpha[row].abs().tolist()):
            if a > 0 and (node not in best or a > best[node][0]):
                best[node] = (a, label)
    return {node: label for node, (_, label) in best.items()}


def _top_edges(change: torch.Tensor, w_nodes: torch.Tensor, w_alpha: torch.Tensor,
               o_nodes: torch.Tensor, o_alpha: torch.Tensor, word_ids: list[int],
               obj_ids: list[int], top: int) -> list[dict[str, Any]]:
    """The largest committed entries from word nodes to object nodes."""
    word_of = _owner(w_nodes, w_alpha, word_ids)
    obj_of = _owner(o_nodes, o_alpha, obj_ids)
    if not word_of or not obj_of:
        return []
    rows = torch.tensor(sorted(word_of))
    cols = torch.tensor(sorted(obj_of))
    block = change[rows][:, cols].clone()
    block[rows[:, None] == cols[None, :]] = -torch.inf  # self-entries link nothing
    k = min(top, int(torch.isfinite(block).sum()))
    if k == 0:
        return []
    vals, flat = block.reshape(-1).topk(k)
    out = []
    for v, f in zip(vals.tolist(), flat.tolist()):
        i, j = int(rows[f // len(cols)]), int(cols[f % len(cols)])
        out.append({"row": i, "col": j, "value": v, "word": word_of[i], "object": obj_of[j]})
    return out
