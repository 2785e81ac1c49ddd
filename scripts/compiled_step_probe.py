"""Probe (issue 17): one OBS time step as a pure function, with and without torch.compile.

The step of ``OBSModel.forward_window`` (Hebbian rule, no back links, parallel
phase: each stream sees its own writes) rewritten over fixed-shape window
buffers ``[B, T, ·]`` (unwritten steps hold zeros, so they add nothing), so that
one compiled graph covers a time step forward and backward. It checks the
logits and every gradient against today's step, then times a window's forward
and backward of both, alternated, median of five.

Not part of OBS: it measures whether a compiled step is the way to issue 17's
targets (docs/benchmarks.md, "A compiled pure step").

Usage (in the repository root)::

    OMP_NUM_THREADS=1 python scripts/compiled_step_probe.py [N] [compile|eager] \\
        [k_max,m,d,batch,window]

e.g. ``1024 compile 32,32,128,8,32`` (the bench's step) or ``16384 compile
8,16,64,16,256`` (the MQAR command's shape).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.bench._step_profile import build  # noqa: E402
from obs_dist.model.window import WindowMemory  # noqa: E402
from obs_dist.trainer import masked_loss  # noqa: E402


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    mode = sys.argv[2] if len(sys.argv) > 2 else "compile"
    sizes = sys.argv[3] if len(sys.argv) > 3 else "32,32,128,8,32"
    k_max, active, d_model, batch_size, window = (int(x) for x in sizes.split(","))
    trainer, state, batches = build(nodes, k_max, active, d_model, batch_size, window, 10, "cpu")
    model = trainer.model
    batch = next(batches)
    base = state.matrix()
    streams, steps = batch["tokens"].shape
    writer, m = model.writer, model.config.writer.active

    def pure_step(f: torch.Tensor, c_ids: torch.Tensor, c_vals: torch.Tensor,
                  now: torch.Tensor, rows_buf: torch.Tensor, a_buf: torch.Tensor,
                  cols_buf: torch.Tensor, b_buf: torch.Tensor, table: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        context = torch.cat([f, (table[c_ids] * c_vals[..., None]).sum(1)], 1)
        prop = writer(context)
        rows = torch.cat([prop.ids, c_ids], 1)
        key = torch.cat([prop.alpha, c_vals], 1)
        key = key / (key.norm(dim=1, keepdim=True) + 1e-6)
        a = prop.eta[:, None] * key
        rows_buf = torch.where(now, rows[:, None, :], rows_buf)
        a_buf = torch.where(now, a[:, None, :], a_buf)
        cols_buf = torch.where(now, prop.ids[:, None, :], cols_buf)
        b_buf = torch.where(now, prop.alpha[:, None, :], b_buf)
        with torch.no_grad():
            h = F.embedding_bag(prop.ids, base, per_sample_weights=prop.alpha.detach(),
                                mode="sum")
        w_dense = torch.zeros(streams, nodes).scatter_add(1, prop.ids, prop.alpha)
        o = (w_dense.gather(1, rows_buf.flatten(1)).view(streams, steps, -1) * a_buf).sum(-1)
        part = torch.zeros(streams, nodes).scatter_add(1, cols_buf.flatten(1),
                                                       (o[:, :, None] * b_buf).flatten(1))
        vals, ids = (h + part.detach()).topk(m, dim=1)
        path = torch.einsum("bi,biq->bq", prop.alpha, base[prop.ids[:, :, None], ids[:, None, :]])
        path = path + part.gather(1, ids)
        vals = vals + (path - path.detach())
        vals = vals / (vals.norm(dim=1, keepdim=True) + 1e-6)
        y = model.norm((table[ids] * vals[..., None]).sum(1) + f)
        return y, ids, vals, rows_buf, a_buf, cols_buf, b_buf

    step = torch.compile(pure_step, dynamic=False) if mode == "compile" else pure_step

    def pure_window(carry: Any) -> torch.Tensor:
        feats = model.encoder(batch)
        r = k_max + m
        rows_buf = torch.zeros(streams, steps, r, dtype=torch.long)
        a_buf = torch.zeros(streams, steps, r)
        cols_buf = torch.zeros(streams, steps, k_max, dtype=torch.long)
        b_buf = torch.zeros(streams, steps, k_max)
        ids, vals, outs = carry.ids, carry.vals, []
        clock = torch.arange(steps)
        for t in range(steps):
            y, ids, vals, rows_buf, a_buf, cols_buf, b_buf = step(
                feats[:, t], ids, vals, (clock == t)[None, :, None], rows_buf, a_buf,
                cols_buf, b_buf, model.node_embed.weight)
            outs.append(y)
        return model.head(torch.stack(outs, 1))

    def todays_window(carry: Any) -> torch.Tensor:
        logits, _, _ = model.forward_window(batch, WindowMemory(base, streams, False), carry)
        return logits

    def run(window_fn: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = window_fn(model.initial_carry(streams, "cpu"))
        loss, n, _ = masked_loss(logits, batch["targets"])
        (loss / n).backward()
        return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                 if p.grad is not None}

    start = time.perf_counter()
    pure_logits, pure_grads = run(pure_window)
    print(f"first pure window ({mode}): {time.perf_counter() - start:.1f} s")
    logits, grads = run(todays_window)
    assert set(grads) == set(pure_grads), set(grads) ^ set(pure_grads)
    print(f"logits, max abs difference: {(pure_logits - logits).abs().max().item():.2e}")
    worst = max(((pure_grads[k] - g).abs().max() / (g.abs().max() + 1e-12)).item()
                for k, g in grads.items())
    print(f"gradients, max relative difference: {worst:.2e}")
    times: dict[str, list[float]] = {"today": [], "pure": []}
    for _ in range(6):
        for name, fn in (("today", todays_window), ("pure", pure_window)):
            start = time.perf_counter()
            run(fn)
            times[name].append(time.perf_counter() - start)
    today, pure = (statistics.median(times[k][1:]) for k in ("today", "pure"))
    print(f"window forward + backward: today {today:.4f} s, pure {mode} {pure:.4f} s, "
          f"speed-up {today / pure:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
