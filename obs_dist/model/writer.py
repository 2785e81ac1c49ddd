"""The writer: which nodes to write, how many, and with what signed amounts.

Addressing uses *product keys* (Lample et al.): two codebooks of about √N sub-keys
whose Cartesian product indexes the N nodes. Scoring costs O(√N·d + k_max²) per
stream, never O(N·d), so the cost of choosing nodes stays flat as N grows.

The node count is learned: ``k̂ ∈ [k_min, k_max]`` from the context, applied as
a soft mask ``μ_r = σ((k̂ − r − ½)/τ)`` over the ranked candidates so that it is
differentiable; ranks whose mask is negligible are zeroed exactly, so they write
nothing when committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

MASK_FLOOR = 1e-4  # below this the soft count mask is set to exactly 0


@dataclass
class WriterConfig:
    """The writer.

    Attributes:
        k_min: fewest nodes written per step.
        k_max: most nodes written per step (candidates ranked by product keys).
        active: m, the number of most active nodes kept after propagation.
        rule: ``hebbian`` (Δ = η·α·β) or ``delta`` (error-correcting, Longhorn/DeltaNet
            restricted to the selected entries).
        count_tau: temperature τ of the soft count mask.
        backward_links: also write new → previously-active links (symmetric
            association, e.g. sound ↔ image), with a learned gain.
        key_dim: width of the product-key query (split in two halves).
        balance: weight of the address-balance loss (0: off). Addresses learnt
            from encoder features tend to collapse onto a few hub nodes (most
            inputs share a large common component, and hubs read back whatever
            was written); the loss is the switch-transformer load-balancing term
            on each codebook, ``n · Σ_i p_i² − 1`` with ``p_i`` the batch's mean
            softmax over sub-keys: 0 when every sub-key is used equally.
    """

    k_min: int = 2
    k_max: int = 8
    active: int = 16
    rule: Literal["hebbian", "delta"] = "hebbian"
    count_tau: float = 0.5
    backward_links: bool = False
    key_dim: int = 64
    balance: float = 0.0

    def __post_init__(self) -> None:
        if self.k_min < 1:
            raise ValueError(f"k_min must be >= 1, got {self.k_min}")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        if self.active < 1:
            raise ValueError(f"active must be >= 1, got {self.active}")
        if self.rule not in ("hebbian", "delta"):
            raise ValueError(f"rule must be 'hebbian' or 'delta', got {self.rule!r}")
        if self.count_tau <= 0:
            raise ValueError(f"count_tau must be > 0, got {self.count_tau}")
        if not math.isfinite(self.balance) or self.balance < 0:
            raise ValueError(f"balance must be a finite number >= 0, got {self.balance}")
        if self.key_dim < 2 or self.key_dim % 2:
            raise ValueError(f"key_dim must be an even number >= 2, got {self.key_dim}")

    def check_nodes(self, nodes: int) -> None:
        """Refuse sizes that the state of ``nodes`` nodes cannot hold."""
        if self.k_max > nodes:
            raise ValueError(
                f"model.writer.k_max ({self.k_max}) must be <= state.nodes ({nodes})"
            )
        if self.active > nodes:
            raise ValueError(
                f"model.writer.active ({self.active}) must be <= state.nodes ({nodes})"
            )
        n1, n2 = codebook_sizes(nodes)
        if self.k_max > n1 * n2 or min(n1, n2) < 1:
            raise ValueError(f"state.nodes ({nodes}) cannot be split into product keys")


def codebook_sizes(nodes: int) -> tuple[int, int]:
    """Factor N = n1·n2 with n1 the smallest divisor >= √N (n2 <= n1).

    Powers of two give sizes within a factor 2 of √N (32768 = 256·128); a prime N
    degenerates to N·1, which still works but scores O(N·d).
    """
    root = math.isqrt(nodes)
    for n2 in range(root, 0, -1):
        if nodes % n2 == 0:
            return nodes // n2, n2
    return nodes, 1  # pragma: no cover - n2 = 1 always divides


class WriteProposal(NamedTuple):
    """What the writer proposes for one step of a batch of streams.

    ``ids`` are ranked node indices ``[B, k_max]``; ``alpha`` the signed per-node
    coefficients (mask included) ``[B, k_max]``; ``mask`` the soft count mask;
    ``eta`` the write strength ``[B]``; ``k_hat`` the learned ``k̂`` ``[B]``.
    """

    ids: torch.Tensor
    alpha: torch.Tensor
    mask: torch.Tensor
    eta: torch.Tensor
    k_hat: torch.Tensor


def product_key_topk(
    query: torch.Tensor, keys1: torch.Tensor, keys2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``<q1, K1[i]> + <q2, K2[j]>`` over all ``(i, j)``; id = i·n2 + j.

    Args:
        query: ``[B, 2h]`` queries (first half against ``keys1``, second against ``keys2``).
        keys1: ``[n1, h]`` sub-keys.
        keys2: ``[n2, h]`` sub-keys.
        k: number of nodes to return (``k <= n1·n2``).

    Returns:
        ``(scores [B, k], ids [B, k])`` sorted by decreasing score.
    """
    h = keys1.shape[1]
    n1, n2 = keys1.shape[0], keys2.shape[0]
    s1 = query[:, :h] @ keys1.t()  # [B, n1]
    s2 = query[:, h:] @ keys2.t()  # [B, n2]
    # The best k pairs use only each half's top-k sub-keys: O(√N·d + k²).
    c1, i1 = s1.topk(min(k, n1), dim=1)
    c2, i2 = s2.topk(min(k, n2), dim=1)
    pair = (c1[:, :, None] + c2[:, None, :]).flatten(1)  # [B, k1·k2]
    scores, flat = pair.topk(k, dim=1)
    k2 = c2.shape[1]
    ids = i1.gather(1, flat // k2) * n2 + i2.gather(1, flat % k2)
    return scores, ids


class Writer(nn.Module):
    """Maps a context ``c_t`` to a :class:`WriteProposal`.

    Args:
        config: writer settings.
        nodes: N.
        context_dim: width of ``c_t``.
    """

    def __init__(self, config: WriterConfig, nodes: int, context_dim: int) -> None:
        super().__init__()
        config.check_nodes(nodes)
        self.config = config
        n1, n2 = codebook_sizes(nodes)
        half = config.key_dim // 2
        self.query = nn.Linear(context_dim, config.key_dim)
        self.keys1 = nn.Parameter(torch.randn(n1, half) / math.sqrt(half))
        self.keys2 = nn.Parameter(torch.randn(n2, half) / math.sqrt(half))
        self.count = nn.Linear(context_dim, 1)
        self.balance_terms: list[torch.Tensor] = []  # address-balance terms since pop_balance
        self.sign = nn.Linear(context_dim, config.k_max)
        self.strength = nn.Linear(context_dim, 1)
        with torch.no_grad():
            # The second half of the context is Eᵀ a_{t-1}. Its weights start at
            # zero so that early addresses depend on the input alone and the same
            # input lands on the same nodes; the writer learns to use the active
            # nodes where that helps.
            half_ctx = context_dim // 2
            for lin in (self.query, self.count, self.sign, self.strength):
                lin.weight[:, half_ctx:] = 0.0
            # Start positive (tanh(2) ≈ 0.96) so early writes reinforce; the sign is
            # free to flip per rank as training finds it useful.
            self.sign.weight.mul_(0.1)
            self.sign.bias.fill_(2.0)
            self.strength.bias.fill_(1.0)
            self.count.bias.zero_()

    def subkey_scores(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each codebook's sub-key scores ``[B, n1]``, ``[B, n2]`` of queries ``[B, key_dim]``."""
        h = self.keys1.shape[1]
        return query[:, :h] @ self.keys1.t(), query[:, h:] @ self.keys2.t()

    def address_balance(self, query: torch.Tensor) -> torch.Tensor:
        """``n · Σ p² − 1`` per codebook, summed: how unevenly the batch uses the sub-keys."""
        total = query.new_zeros(())
        for scores in self.subkey_scores(query):
            p = torch.softmax(scores, dim=1).mean(0)
            total = total + scores.shape[1] * (p * p).sum() - 1.0
        return total

    def pop_balance(self) -> torch.Tensor | None:
        """The balance loss of the steps since the last call (mean), None if none."""
        if not self.balance_terms:
            return None
        out = torch.stack(self.balance_terms).mean() * self.config.balance
        self.balance_terms = []
        return out

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The four heads of the context as one linear map: ``(weight, bias)``.

        Rows in the order query (``key_dim``), count (1), sign (``k_max``),
        strength (1): ``F.linear(context, *head_weights())`` is what
        :meth:`propose` takes. One product a step instead of four, and a caller
        that knows part of the context for a whole window ahead (the input
        half) can take that part's product once per window.
        """
        heads = (self.query, self.count, self.sign, self.strength)
        return torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads])

    def forward(self, context: torch.Tensor) -> WriteProposal:
        """Propose this step's write for every stream.

        Args:
            context: ``[B, context_dim]``.
        """
        return self.propose(F.linear(context, *self.head_weights()))

    def propose(self, heads: torch.Tensor) -> WriteProposal:
        """The write for the context's heads ``[B, key_dim + k_max + 2]`` (``head_weights``)."""
        cfg = self.config
        query, count_logit, sign_logit, eta_raw = heads.split(
            [cfg.key_dim, 1, cfg.k_max, 1], dim=1)
        scores, ids = product_key_topk(query, self.keys1, self.keys2, cfg.k_max)
        if cfg.balance > 0 and self.training and torch.is_grad_enabled():
            self.balance_terms.append(self.address_balance(query))
        weights = torch.softmax(scores, dim=1)
        count = cfg.k_min + (cfg.k_max - cfg.k_min) * torch.sigmoid(count_logit[:, 0])
        ranks = torch.arange(cfg.k_max, device=heads.device, dtype=heads.dtype)
        mask = torch.sigmoid((count[:, None] - ranks[None, :] - 0.5) / cfg.count_tau)
        mask = mask * (mask >= MASK_FLOOR)
        alpha = mask * weights * torch.tanh(sign_logit)
        # L2-normalised so the read-out scale does not depend on k̂.
        alpha = alpha / (alpha.norm(dim=1, keepdim=True) + 1e-6)
        eta_raw = eta_raw[:, 0]
        eta = torch.sigmoid(eta_raw) if cfg.rule == "delta" else F.softplus(eta_raw)
        return WriteProposal(ids, alpha, mask, eta, count)
