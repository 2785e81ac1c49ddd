"""What a sequence model must keep and read to recall: two cost axes fair to a sparse model.

Issue #19 compares OBS with the baselines at equal steps and data, and along two
costs, per token of a sequence of ``length`` (fp32, 4 bytes a float):

* **recurrent state** (floats): what the model carries from one token to the
  next. OBS: its big state, ``N²``. A (gated) DeltaNet layer: ``heads · d_k ·
  d_v`` with ``d_k = d_v = d/heads``. Longhorn: ``d · state_dim``. A GRU: its
  hidden ``d``. Softmax attention: its KV cache at the sequence's end, ``2 ·
  length · d`` per layer. Every short causal convolution adds its ``(kernel −
  1) · channels`` buffer.
* **state bytes read per token**: what one token's step reads of that state.
  OBS reads the ``k_max`` selected rows of ``X`` (``4 · k_max · N``: sparse, a
  small share of ``N²``); a recurrent layer reads its whole state; attention
  reads the KV cache so far, ``2 · t · d`` floats at token ``t``, averaged over
  the sequence. Parameters are not counted (every model reads all of its
  weights each token, and the compared models have matched parameter counts).

Both are computed from the built model (its modules), so a layer the config
adds (a convolution first, more layers) is counted without a formula per config.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from obs_dist.baselines.attention import CausalSelfAttention
from obs_dist.baselines.deltanet import CausalConv1d, DeltaNetMixer
from obs_dist.baselines.gru import GRUMixer
from obs_dist.baselines.longhorn import LonghornMixer

FLOAT_BYTES = 4


def _layer_costs(module: nn.Module, length: int) -> tuple[float, float] | None:
    """``(state floats, floats read per token)`` of one stateful module, None if it has none."""
    if isinstance(module, CausalConv1d):
        buffer = (module.kernel - 1) * module.conv.in_channels
        return buffer, buffer
    if isinstance(module, DeltaNetMixer):  # GatedDeltaNetMixer is one too
        width = module.out.in_features
        state = module.heads * (width // module.heads) ** 2
        return state, state
    if isinstance(module, LonghornMixer):
        state = module.out.in_features * module.kq.out_features // 2
        return state, state
    if isinstance(module, GRUMixer):
        state = module.gru.hidden_size * module.gru.num_layers
        return state, state
    if isinstance(module, CausalSelfAttention):
        width = module.out.in_features
        # Token t reads the 2·t·d keys and values so far (itself included).
        return 2 * length * width, 2 * width * (length + 1) / 2
    return None


def baseline_costs(model: nn.Module, length: int) -> dict[str, float]:
    """Recurrent state floats and state bytes read per token of a baseline model.

    Args:
        model: a built baseline (:func:`~obs_dist.baselines.build_baseline`).
        length: the sequence length (attention's cache grows with it).
    """
    state = read = 0.0
    for module in model.modules():
        costs = _layer_costs(module, length)
        if costs is not None:
            state += costs[0]
            read += costs[1]
    return {"state_floats": state, "read_bytes_per_token": read * FLOAT_BYTES}


def obs_costs(nodes: int, k_max: int) -> dict[str, float]:
    """OBS's big state (``N²`` floats) and its ``k_max`` rows read per token."""
    return {"state_floats": float(nodes) ** 2,
            "read_bytes_per_token": float(FLOAT_BYTES * k_max * nodes)}


def recall_costs(learner: Any, length: int) -> dict[str, float]:
    """:func:`obs_costs` or :func:`baseline_costs` of a harness learner."""
    state = getattr(learner, "state", None)
    if state is not None:
        return obs_costs(state.num_nodes, learner.model.config.writer.k_max)
    return baseline_costs(learner.model, length)
