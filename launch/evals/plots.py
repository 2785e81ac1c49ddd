"""PNG figures of the evaluation suites (matplotlib, Agg backend: no display needed).

Each function takes one suite's result dictionary (as written by ``obs eval
--task``) and a path, draws one figure and returns the path, or returns None
when the result holds nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported at the first figure, not at import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subplots(*args: Any, **kwargs: Any) -> Any:
    return _pyplot().subplots(*args, **kwargs)


STYLE = {"obs": ("tab:red", "o"), "obs-replay": ("tab:purple", "s"),
         "attention": ("tab:blue", "^"), "deltanet": ("tab:green", "v"),
         "gated_deltanet": ("tab:olive", "<"), "longhorn": ("tab:orange", "D"),
         "gru": ("tab:gray", "x")}


def _style(model: str) -> dict[str, Any]:
    color, marker = STYLE.get(model, ("black", "."))
    return {"color": color, "marker": marker, "label": model}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def mqar_pairs(result: dict[str, Any], path: Path) -> Path | None:
    """Accuracy at each ``(pairs, length)`` point, one line per model (its best lr, if swept)."""
    rows = result.get("best") or result.get("results", [])
    if not rows:
        return None
    points = sorted({(r["pairs"], r["length"]) for r in rows})
    fig, ax = _subplots(figsize=(6.4, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        acc = {(r["pairs"], r["length"]): r["accuracy"] for r in rows if r["model"] == model}
        xs = [i for i, p in enumerate(points) if p in acc]
        ax.plot(xs, [acc[points[i]] for i in xs], **_style(model))
    ax.set_xticks(range(len(points)), [f"{p} pairs\nL={n}" for p, n in points])
    ax.axhline(result.get("chance", 0.0), color="black", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("query accuracy")
    ax.set_title("MQAR: accuracy vs pairs and length")
    ax.legend(fontsize=8)
    return _save(fig, path)


def mqar_costs(result: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs recurrent state floats and vs state bytes read per token, one line per model.

    Each model's line runs through its ``(pairs, length)`` points (best lr, if
    swept), labelled with the pairs; both axes are logarithmic.
    """
    rows = [r for r in (result.get("best") or result.get("results", []))
            if "state_floats" in r and "read_bytes_per_token" in r]
    if not rows:
        return None
    fig, axes = _subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "state_floats", "recurrent state (floats)"),
                           (axes[1], "read_bytes_per_token", "state bytes read per token")):
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = sorted((r for r in rows if r["model"] == model),
                          key=lambda r: (r["pairs"], r["length"]))
            ax.plot([r[key] for r in mine], [r["accuracy"] for r in mine], **_style(model))
            for r in mine:
                ax.annotate(str(r["pairs"]), (r[key], r["accuracy"]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axhline(result.get("chance", 0.0), color="black", lw=0.8, ls=":")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("query accuracy (point labels: pairs)")
    axes[0].legend(fontsize=8)
    fig.suptitle("MQAR: accuracy against what each model keeps and reads")
    return _save(fig, path)


def mqar_state(result: dict[str, Any], path: Path) -> Path | None:
    """OBS accuracy vs state size N at the sweep's point."""
    rows = result.get("state_sweep", [])
    if not rows:
        return None
    fig, ax = _subplots(figsize=(5, 3.6))
    rows = sorted(rows, key=lambda r: r["nodes"])
    ax.plot([r["nodes"] for r in rows], [r["accuracy"] for r in rows], **_style(rows[0]["model"]))
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("state size N (nodes; the state is N×N)")
    ax.set_ylabel("query accuracy")
    ax.set_title(f"MQAR {rows[0]['pairs']} pairs, L={rows[0]['length']}: accuracy vs N")
    return _save(fig, path)


def continual_curves(result: dict[str, Any], path: Path) -> Path | None:
    """First-set accuracy after each set, and the final accuracy of every set."""
    details = result.get("details", {})
    if not details:
        return None
    fig, (left, right) = _subplots(1, 2, figsize=(10, 3.8))
    for model, d in details.items():
        curve = d["first_set_curve"]
        left.plot(range(1, len(curve) + 1), curve, **_style(model))
        final = d["matrix"][-1]
        right.plot(range(1, len(final) + 1), final, **_style(model))
    for ax, title in ((left, "accuracy on set 1 after learning set i"),
                      (right, "accuracy on each set after the last set")):
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("set")
        ax.axhline(result.get("chance", 0.0), color="black", lw=0.8, ls=":")
        ax.set_title(title, fontsize=10)
    left.set_ylabel("query accuracy")
    left.legend(fontsize=8)
    return _save(fig, path)


def memory_function(result: dict[str, Any], path: Path) -> Path | None:
    """Recall accuracy vs delay, one line per model."""
    curves = result.get("curves", {})
    delays = result.get("delays", [])
    if not curves:
        return None
    fig, ax = _subplots(figsize=(6, 3.8))
    for model, mf in curves.items():
        ax.plot(delays, mf["accuracy"], **{**_style(model),
                                           "label": f"{model} (MC={mf['capacity']:.2f})"})
    ax.axhline(result.get("chance", 0.0), color="black", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay k (steps between the item and its probe)")
    ax.set_ylabel("recall accuracy")
    ax.set_title("Memory function")
    ax.legend(fontsize=8)
    return _save(fig, path)


def crossmodal(result: dict[str, Any], path: Path, axis: str) -> Path | None:
    """Association accuracy vs ``axis`` (``objects`` or ``delay``) at the other's primary value."""
    grid = result.get("grid", {})
    primary = result.get("primary")
    if not grid or not primary:
        return None
    fixed_key, fixed = ("delay", primary[1]) if axis == "objects" else ("objects", primary[0])
    fig, ax = _subplots(figsize=(5.6, 3.8))
    chance: dict[int, float] = {}
    for model, rows in grid.items():
        sel = sorted((r for r in rows if r[fixed_key] == fixed), key=lambda r: r[axis])
        ax.plot([r[axis] for r in sel], [r["accuracy"] for r in sel], **_style(model))
        chance.update({r[axis]: r["chance"] for r in sel})
    xs = sorted(chance)
    ax.plot(xs, [chance[x] for x in xs], color="black", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    label = "objects per episode" if axis == "objects" else "clips between study and query"
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"Cross-modal association ({fixed_key} = {fixed})", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def state_tracking(result: dict[str, Any], path: Path) -> Path | None:
    """Per-position accuracy at the longest test length, one panel per task."""
    curves = result.get("curves", {})
    if not curves:
        return None
    fig, axes = _subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
    limit = result.get("train_max_len", 0)
    for ax, (kind, per_model) in zip(axes[0], curves.items()):
        for model, curve in per_model.items():
            xs = [i + 1 for i, v in enumerate(curve) if not math.isnan(v)]
            ax.plot(xs, [curve[i - 1] for i in xs], lw=1, **{**_style(model), "marker": None})
        ax.axvline(limit, color="black", lw=0.8, ls="--", label="longest training length")
        ax.axhline(result.get("chance", {}).get(kind, 0.0), color="black", lw=0.8, ls=":")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("position")
        ax.set_ylabel("accuracy")
        ax.set_title(kind)
        ax.legend(fontsize=8)
    return _save(fig, path)


def circuits(result: dict[str, Any], path: Path) -> Path | None:
    """Word→object strengths as a heatmap, and the strongest entries as a bipartite graph."""
    pic = result.get("circuits")
    if not pic:
        return None
    fig, (left, right) = _subplots(1, 2, figsize=(11, 4.6))
    im = left.imshow(pic["strength"], cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=left, fraction=0.046)
    left.set_xlabel("object (video)")
    left.set_ylabel("word (audio)")
    left.set_xticks(range(len(pic["objects"])), [str(o) for o in pic["objects"]], fontsize=6)
    left.set_yticks(range(len(pic["words"])), [str(w) for w in pic["words"]], fontsize=6)
    left.set_title(f"strength of word→object circuits (match {pic['match']:.2f})", fontsize=10)
    edges = pic.get("edges", [])
    if edges:
        rows = sorted({e["row"] for e in edges}, key=lambda n: ([e["word"] for e in edges
                                                                 if e["row"] == n][0], n))
        cols = sorted({e["col"] for e in edges}, key=lambda n: ([e["object"] for e in edges
                                                                 if e["col"] == n][0], n))
        y_row = {n: i / max(len(rows) - 1, 1) for i, n in enumerate(rows)}
        y_col = {n: i / max(len(cols) - 1, 1) for i, n in enumerate(cols)}
        top = max(e["value"] for e in edges)
        for e in edges:
            same = pic["words"][pic["objects"].index(e["object"])] == e["word"] \
                if e["object"] in pic["objects"] else False
            right.plot([0, 1], [y_row[e["row"]], y_col[e["col"]]],
                       color="tab:green" if same else "tab:red",
                       lw=0.5 + 3 * max(e["value"], 0) / max(top, 1e-9), alpha=0.7)
        for n, y in y_row.items():
            word = next(e["word"] for e in edges if e["row"] == n)
            right.text(-0.02, y, f"w{word}:n{n}", ha="right", va="center", fontsize=6)
        for n, y in y_col.items():
            obj = next(e["object"] for e in edges if e["col"] == n)
            right.text(1.02, y, f"n{n}:o{obj}", ha="left", va="center", fontsize=6)
    right.set_xlim(-0.35, 1.35)
    right.axis("off")
    right.set_title("strongest entries X[i, j]: word nodes → object nodes\n"
                    "(green: the word names that object)", fontsize=10)
    return _save(fig, path)
