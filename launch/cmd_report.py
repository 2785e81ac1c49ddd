"""``obs report``: turn evaluation results into ``docs/results.md`` and PNG plots.

Reads every suite result JSON written by ``obs eval --task … --out F`` in
``--results`` (default ``docs/results/json``), draws the figures under
``--figures`` (default ``docs/results``) and writes ``--out`` (default
``docs/results.md``): per result, the exact command, the machine, the table of
figures, the plots, and the headline targets of the issue checked against the
numbers (met or missed, with the figure reached). A hand-written notes file
(``--notes``, default ``docs/results/notes.md``), if present, is appended
verbatim: that is where what limits a missed target is explained.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

SUITE_ORDER = ("mqar-sweep", "crossmodal", "continual", "memory", "state-tracking")
TITLES = {"mqar-sweep": "MQAR sweep", "crossmodal": "Cross-modal association",
          "continual": "Continual learning", "memory": "Memory function",
          "state-tracking": "State tracking"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "–"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> str:
    """Scalar columns of ``rows`` as a GitHub markdown table."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k, v in row.items() if k not in columns and k not in skip
                       and not isinstance(v, (list, dict)))
    if not rows or not columns:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's headline targets that this result can check, as markdown bullets."""
    suite = result.get("suite")
    rows = result.get("results", [])
    out: list[str] = []
    if suite == "mqar-sweep":
        at = [r for r in rows if (r.get("pairs"), r.get("length")) == (32, 256)]
        obs = [r for r in at if r["model"] == "obs"]
        if obs:
            others = ", ".join(f"{r['model']} {r['accuracy']:.3f}" for r in at
                               if r["model"] != "obs")
            ok = obs[0]["accuracy"] >= 0.99
            out.append(f"MQAR 32 pairs, length 256: OBS >= 0.99 — {_verdict(ok)}"
                       f" (OBS {obs[0]['accuracy']:.3f} in {obs[0]['steps']} steps / "
                       f"{obs[0]['seconds']} s{'; ' + others if others else ''})")
    elif suite == "crossmodal" and "grid" in result:
        obs = result["grid"].get("obs", [])
        hit = [r for r in obs if (r["objects"], r["delay"]) == (16, 32)]
        if hit:
            acc = hit[0]["accuracy"]
            out.append(f"Cross-modal, 16 objects, 32 clips between study and query: top-1 >= 0.9"
                       f" — {_verdict(acc >= 0.9)} (OBS {acc:.3f}; path: {result.get('path')})")
    elif suite == "crossmodal" and "shards" in result:
        head = result["shards"].get("obs", {}).get("headline")
        if head and head["queries"] and (head["objects"], head["clips_between"]) == (16, 32):
            acc = head["accuracy"]
            out.append(f"Cross-modal on audio-visual shards, episodes of >= 16 objects, >= 32 "
                       f"clips between study and query: top-1 >= 0.9 — {_verdict(acc >= 0.9)} "
                       f"(OBS {acc:.3f} over {head['queries']} queries)")
    elif suite == "continual":
        base = [r for r in rows if not r["model"].startswith("obs")]
        best = max((r["first_set_final"] for r in base), default=0.0)
        for r in rows:
            if r["model"].startswith("obs"):
                ok = r["first_set_final"] >= 0.8 and r["first_set_final"] > best
                out.append(f"Continual, {r['model']}: first-set accuracy after the last set >= 0.8"
                           f" and above every baseline — {_verdict(ok)} ({r['first_set_final']:.3f}"
                           f" vs best baseline {best:.3f})")
    return out


def figures(result: dict[str, Any], stem: str, folder: Path) -> list[Path]:
    """Draw this result's plots; returns the files written."""
    from launch.evals import plots

    suite = result.get("suite")
    made: list[Path | None] = []
    if suite == "mqar-sweep":
        made += [plots.mqar_pairs(result, folder / f"{stem}_pairs.png"),
                 plots.mqar_state(result, folder / f"{stem}_state_size.png")]
    elif suite == "crossmodal":
        made += [plots.crossmodal(result, folder / f"{stem}_objects.png", "objects"),
                 plots.crossmodal(result, folder / f"{stem}_delay.png", "delay"),
                 plots.circuits(result, folder / f"{stem}_circuits.png")]
    elif suite == "continual":
        made.append(plots.continual_curves(result, folder / f"{stem}_forgetting.png"))
    elif suite == "memory":
        made.append(plots.memory_function(result, folder / f"{stem}_memory_function.png"))
    elif suite == "state-tracking":
        made.append(plots.state_tracking(result, folder / f"{stem}_positions.png"))
    return [p for p in made if p is not None]


def shard_tables(details: dict[str, Any]) -> str:
    """Real-shard cross-modal scores by delay, objects studied and episode size, per model."""
    by_delay = [{"model": m, **{f"delay {k}": v for k, v in d["by_delay"].items()}}
                for m, d in details.items()]
    by_seen = [{"model": m, **{f"seen {k}": v for k, v in d["by_objects_seen"].items()}}
               for m, d in details.items()]
    out = ("\nAccuracy by clips between the query and where its object was last seen:\n\n"
           + markdown_table(by_delay)
           + "\nAccuracy by distinct objects studied before the query:\n\n"
           + markdown_table(by_seen))
    by_episode = [{"model": m, **{f"{k} objects": v for k, v in d["by_episode_objects"].items()}}
                  for m, d in details.items() if "by_episode_objects" in d]
    if by_episode:
        out += ("\nAccuracy by objects studied in the episode (window):\n\n"
                + markdown_table(by_episode))
    return out


# (result key, sense, label count key, examples key, examples, accuracy key, config temperature)
FRONT_ENDS = (
    ("audio_words", "hears the words through one frozen keyword recognizer", "words",
     "utterances", "utterances", "word_accuracy", "audio_words_temperature"),
    ("video_objects", "sees the objects through one frozen object recognizer", "objects",
     "clips", "video clips", "object_accuracy", "video_objects_temperature"),
)


def front_end_lines(result: dict[str, Any]) -> list[str]:
    """One line per recognizer front end a cross-modal result was made with."""
    lines = []
    for key, sense, count, examples, what, acc, temp_key in FRONT_ENDS:
        fit = result.get(key)
        if fit:
            temp = result.get("config", {}).get(temp_key, "?")
            lines.append(f"\nEvery model {sense} ({int(fit[count])} {count}, "
                         f"{int(fit[examples])} {what} of the training shards, "
                         f"{int(fit['steps'])} steps; held-out {acc.replace('_', ' ')} "
                         f"{fit[acc]:.3f}; posterior temperature {temp}).\n")
    return lines


def section(result: dict[str, Any], stem: str, folder: Path, doc_dir: Path) -> str:
    """One result's markdown: command, machine, targets, table, plots."""
    suite = result.get("suite", "?")
    machine = result.get("machine", {})
    parts = [f"### {TITLES.get(suite, suite)} — `{stem}`\n",
             f"Command: `{result.get('command', '?')}`  \n"
             f"Finished {result.get('finished', '?')} after {result.get('wall_seconds', '?')} s; "
             f"{machine.get('cpus', '?')} CPUs, {machine.get('torch_threads', '?')} torch "
             f"thread(s), load average {_fmt(machine.get('load_average_at_start'))} at start, "
             f"torch {machine.get('torch', '?')}, git {machine.get('git', '?')}"
             f"{', data path: ' + result['path'] if 'path' in result else ''}"
             f"{' (quick sizes: not a figure)' if result.get('quick') else ''}.\n"]
    checks = targets(result)
    if checks:
        parts.append("Targets:\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if result.get("results") or not result.get("state_sweep"):
        parts.append(markdown_table(result.get("results", [])))
    if result.get("state_sweep"):
        parts.append("\nOBS alone, accuracy vs state size:\n\n" +
                     markdown_table(result["state_sweep"]))
    if suite == "crossmodal" and result.get("grid"):
        grid_rows = [{"model": m, **r} for m, rows in result["grid"].items() for r in rows]
        parts.append("\nAccuracy over the (objects, delay) grid:\n\n" + markdown_table(grid_rows))
        pic = result.get("circuits")
        if pic:
            parts.append(f"\nCircuits: {pic['committed_entries']} entries committed from "
                         f"fixed-name episodes; share of words whose strongest object is the "
                         f"one they name: {pic['match']:.3f}.\n")
    parts += front_end_lines(result)
    if result.get("shards"):
        parts.append(shard_tables(result["shards"]))
    for png in figures(result, stem, folder):
        rel = png.relative_to(doc_dir) if png.is_relative_to(doc_dir) else png
        parts.append(f"\n![{png.stem}]({rel.as_posix()})\n")
    return "\n".join(parts) + "\n"


def write_report(results_dir: Path, out: Path, folder: Path, notes: Path | None,
                 include_quick: bool = False) -> dict[str, Any]:
    """Write the markdown report and figures; returns what was written."""
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    loaded = []
    for f in files:
        try:
            result = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f} is not a result JSON: {exc}") from exc
        if not isinstance(result, dict) or "suite" not in result:
            raise ValueError(f"{f} is not an `obs eval --task` result (no 'suite' key)")
        if result.get("quick") and not include_quick:
            continue
        loaded.append((f.stem, result))
    if not loaded:
        raise ValueError(f"no evaluation results in {results_dir}; run `obs eval --task T --out "
                         f"{results_dir}/T.json` first")
    order = {s: i for i, s in enumerate(SUITE_ORDER)}
    loaded.sort(key=lambda item: (order.get(item[1]["suite"], 99), item[0]))
    doc = ["# OBS evaluation results\n",
           "Generated by `obs report` from the result files in "
           f"`{results_dir.as_posix()}`; every section names the exact command that produced "
           "it. Baselines are sized to OBS's trainable-parameter count (the big state is fast "
           "memory, not a parameter) and get the same batches, loss, optimiser and wall-time "
           "cap. How the runs were made, the issue's targets read against the figures and what "
           "limits each result are in the Notes at the end.\n"]
    for stem, result in loaded:
        doc.append(section(result, stem, folder, out.parent))
    if notes is not None and notes.is_file():
        doc.append("## Notes\n\n" + notes.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc))
    pngs = sorted(str(p) for p in folder.glob("*.png"))
    return {"out": str(out), "results": [s for s, _ in loaded], "figures": pngs}


def _run(args: argparse.Namespace) -> int:
    from launch.output import emit

    summary = write_report(Path(args.results), Path(args.out), Path(args.figures),
                           Path(args.notes) if args.notes else None, args.include_quick)
    emit(summary if args.json else {"out": summary["out"],
                                    "results": len(summary["results"]),
                                    "figures": len(summary["figures"])}, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``obs report``."""
    p = sub.add_parser("report", help="write docs/results.md and plots from eval results")
    p.add_argument("--results", default="docs/results/json",
                   help="folder of `obs eval --task` result JSON files")
    p.add_argument("--out", default="docs/results.md", help="markdown file to write")
    p.add_argument("--figures", default="docs/results", help="folder for the PNG plots")
    p.add_argument("--notes", default="docs/results/notes.md",
                   help="markdown appended verbatim if it exists (analysis of the figures)")
    p.add_argument("--include-quick", action="store_true",
                   help="also report --quick results (tiny sizes)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_run)
