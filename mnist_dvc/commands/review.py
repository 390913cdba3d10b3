"""Review a change to the pipeline: the workspace's outputs against a base revision.

    mnist-dvc review [--base REV] [--rerun] [--out DIR]    (make review BASE=main RERUN=1)
    mnist-dvc review --seed-spread                          (make seed-spread)

Writes DIR (default review/): report.md, summary.json and PNG charts. The report says what
changed (params, pipeline code), what it did (eval.json and train.json side by side) and
whether that is more than noise: McNemar's exact test on the test images that one side gets
right and the other wrong, beside the accuracy spread across seeds (docs/seed_spread.json).
Without --rerun the base's numbers are the files committed at REV, perhaps made on another
machine; --rerun recomputes them here with ``dvc repro`` in a temporary worktree of REV that
shares this repository's DVC cache, so both sides come from the same hardware.
--seed-spread writes docs/seed_spread.json from the experiments (``dvc exp show``) that differ
from their commit only in train.seed: run a seed sweep first (make seed-spread does both).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mnist_dvc.commands.revisions import (
    changed_code,
    command,
    git_show,
    read_bytes,
    recomputed,
    require_committed,
    stale_stages,
)
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.digit_grid import digit_grid, png_bytes
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.spec import IDX_FILES
from mnist_dvc.errors import StageError, corrupt_file
from mnist_dvc.files import write_bytes_atomic, write_json_atomic

ALPHA = 0.05  # a McNemar p below this is called evidence of a change
GRID_LIMIT = 50  # digits per grid of fixed and broken images
SEED_SPREAD = Path("docs") / "seed_spread.json"
METRIC_FILES = ("eval.json", "train.json")


@dataclass(frozen=True)
class Comparison:
    """Image by image: what the change fixed (base wrong, workspace right) and broke."""

    fixed: np.ndarray  # test image indices
    broken: np.ndarray
    shared: int  # images wrong on both sides
    p: float  # McNemar's exact test of len(fixed) against len(broken)


@dataclass
class Review:
    """Everything report.md shows; built from git, dvc and files, or by a test."""

    base: str
    source: str  # where the base's numbers come from
    params: dict[str, dict[str, dict[str, Any]]]  # dvc params diff --json
    code: list[tuple[str, bool]]  # (changed code dep, uncommitted)
    old: dict[str, dict | None]  # METRIC_FILES at the base
    new: dict[str, dict | None]  # METRIC_FILES in the workspace
    comparison: Comparison | None = None
    images: int = 10000  # test images
    spread: dict | None = None  # docs/seed_spread.json
    notes: list[str] = field(default_factory=list)
    charts: dict[str, bytes | None] = field(default_factory=dict)  # title: PNG, or absent


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (main)")
    parser.add_argument("--rerun", action="store_true", help="recompute the base here")
    parser.add_argument("--out", type=Path, default=Path("review"), help="folder (review/)")
    parser.add_argument("--seed-spread", action="store_true", help=f"write {SEED_SPREAD}")
    args = parser.parse_args(argv)
    if shutil.which("dvc") is None:
        raise StageError("dvc is not on PATH: activate the project's environment (source "
                         ".venv/bin/activate) or run make review")
    if args.seed_spread:
        spread = seed_spread(json.loads(command("dvc", "exp", "show", "--json")), machine())
        write_json_atomic(SEED_SPREAD, spread)
        print(f"review: wrote {SEED_SPREAD} ({len(spread['accuracy_by_seed'])} seeds)")
        return
    result = review(args.base, args.rerun)
    write_report(args.out, result)
    print(f"review: {verdict_of(result) or 'no comparison'}; wrote {args.out / 'report.md'}")


def review(base: str, rerun: bool, layout: Layout = Layout()) -> Review:
    """Every input is checked before the slow work, so bad input fails before anything."""
    sha = command("git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}",
                  failure=f"unknown base revision {base!r}: git knows no commit by that "
                          "name").strip()
    if rerun:
        require_committed()
    new = {name: read_json(layout.metrics / name) for name in METRIC_FILES}
    if new["eval.json"] is None or not layout.predictions.is_file():
        raise StageError(f"no {layout.eval_metrics} or {layout.predictions} here: run dvc "
                         "repro first")
    actual, predicted = read_predictions(layout.predictions.read_bytes(), "the workspace")
    result = Review(base, f"committed at {base}, made on another machine maybe (--rerun "
                    "recomputes them here)", json.loads(command(
                        "dvc", "params", "diff", sha, "--json") or "{}"), changed_code(sha),
                    {}, new, images=len(actual), spread=read_json(layout.root / SEED_SPREAD))
    if stale := stale_stages():
        result.notes.append(f"the workspace's outputs are out of date (stage "
                            f"{', '.join(stale)}): run dvc repro first")
    with (recomputed(sha) if rerun else contextlib.nullcontext(sha)) as rev, \
            tempfile.TemporaryDirectory(prefix="review-plots-") as scratch:
        result.old = {name: read_json(f"{base}:metrics/{name}", data)
                      if (data := git_show(rev, f"metrics/{name}")) else None
                      for name in METRIC_FILES}
        old_csv, old_png = (git_show(rev, f"metrics/{name}")
                            for name in ("predictions.csv", "misclassified.png"))
        plots = json.loads(command("dvc", "plots", "diff", rev, "--json", "-o", scratch))
    if rerun:
        result.source = (f"recomputed on this machine (dvc repro of {base} in a temporary "
                         "worktree sharing this repository's DVC cache)")
    result.charts = {**render_charts(plots.get("data", {}), {rev: base + " (rerun)" * rerun}),
                     f"misclassified digits, {base}": old_png,
                     "misclassified digits, workspace": read_bytes(layout.misclassified)}
    if old_csv is None:
        result.notes.append(f"{base} has no metrics/predictions.csv (an older commit?): no "
                            "image-by-image comparison")
    else:
        old_actual, old_predicted = read_predictions(old_csv, base)
        result.comparison = compare(old_actual, old_predicted, actual, predicted)
        grids = change_grids(result.comparison, actual, old_predicted, predicted,
                             layout.raw / IDX_FILES["test"].images, result.notes)
        result.charts.update(grids)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return result


def read_json(path: Path | str, data: bytes | None = None) -> Any:
    """The JSON in ``data`` (or the file ``path``); None if there is none; a StageError
    naming ``path`` if it is not JSON."""
    if data is None:
        if not Path(path).is_file():
            return None
        data = Path(path).read_bytes()
    try:
        return json.loads(data)
    except ValueError as err:
        raise corrupt_file(path, err) from None


def read_predictions(data: bytes, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """(actual, predicted) class names in test-image order, from evaluate's predictions.csv."""
    try:
        rows = [(int(row["image"]), row["actual"], row["predicted"])
                for row in csv.DictReader(io.StringIO(data.decode()))]
        if any(name is None for row in rows for name in row[1:]):
            raise ValueError("a row is cut short")
        rows.sort()
        if [row[0] for row in rows] != list(range(len(rows))):
            raise ValueError("the image column is not 0, 1, ..., n-1")
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise StageError(f"metrics/predictions.csv at {origin}: unreadable ({err})") from None
    return (np.array([row[1] for row in rows], dtype=str),
            np.array([row[2] for row in rows], dtype=str))


def compare(old_actual: np.ndarray, old_predicted: np.ndarray, actual: np.ndarray,
            predicted: np.ndarray) -> Comparison:
    if not np.array_equal(old_actual, actual):
        raise StageError("the two predictions.csv files do not hold the same test images")
    old_right, right = old_predicted == actual, predicted == actual
    fixed, broken = np.flatnonzero(~old_right & right), np.flatnonzero(old_right & ~right)
    return Comparison(fixed, broken, int((~old_right & ~right).sum()),
                      mcnemar_exact(len(fixed), len(broken)))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p: 2 P[X <= min(b, c)], X ~ Binomial(b + c, 1/2), at most 1.
    Whole numbers until one division, so it is exact for any count (no scipy at run time)."""
    tail = sum(math.comb(fixed + broken, k) for k in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2 ** (fixed + broken))


def format_p(p: float) -> str:
    """``p = 0.48``, ``p = 0.0031``, ``p < 0.0001``: two significant digits are enough."""
    return "p = 1" if p >= 1 else f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.2g}" \
        if p >= 0.0001 else "p < 0.0001"


def verdict(fixed: int, broken: int, p: float) -> str:
    """One line; ``p`` below ALPHA counts as evidence, in the direction of the larger count."""
    if fixed == broken == 0:
        kind = "no change"
    else:
        kind = ("no evidence of a change" if p >= ALPHA else
                "evidence of an improvement" if fixed > broken else "evidence of a regression")
    return f"{kind} ({format_p(p)}): {fixed} fixed, {broken} broken"


def verdict_of(result: Review) -> str | None:
    """The verdict, or None where the base had no predictions to compare."""
    c = result.comparison
    return verdict(len(c.fixed), len(c.broken), c.p) if c else None


def render_charts(plots: dict[str, list[dict]], labels: dict[str, str]) -> dict[str, bytes]:
    """Each Vega-Lite plot of ``dvc plots diff --json`` as PNG, drawn offline by vl-convert
    (no browser, no CDN), with the revisions renamed by ``labels``."""
    import vl_convert

    charts = {}
    for plot_id, entries in plots.items():
        for spec in (relabel(e["content"], labels) for e in entries if e.get("type") == "vega"):
            title = (spec.get("title") or {}).get("text") or plot_id
            charts[title] = vl_convert.vegalite_to_png(spec, scale=1.5)
    return charts


def relabel(node: Any, labels: dict[str, str]) -> Any:
    """``node`` with every string that ``labels`` names replaced: DVC labels a revision by
    what it was given (a commit hash here), and the charts should say which side it is."""
    if isinstance(node, dict):
        return {key: relabel(value, labels) for key, value in node.items()}
    if isinstance(node, list):
        return [relabel(value, labels) for value in node]
    return labels.get(node, node) if isinstance(node, str) else node


def change_grids(comparison: Comparison, actual: np.ndarray, old_predicted: np.ndarray,
                 predicted: np.ndarray, test_images: Path, notes: list[str]) -> dict[str, bytes]:
    """The images the change fixed and broke, captioned true>base's>workspace's class."""
    try:
        images = read_idx(test_images, 3, item_shape=None)  # the dataset's size, whatever it is
    except StageError as err:
        notes.append(f"no grids of the fixed and broken digits: {err}")
        return {}
    return {f"digits the change {verb}": png_bytes(digit_grid(images, picks[:GRID_LIMIT], [
        f"{actual[i]}>{old_predicted[i]}>{predicted[i]}" for i in picks[:GRID_LIMIT]]))
        for verb, picks in (("fixed", comparison.fixed), ("broke", comparison.broken))
        if len(picks)}


def file_name(title: str) -> str:
    """A chart's file in the report folder, stable across runs for links and CI artifacts."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") + ".png"


def number(value: Any, signed: bool = False) -> str:
    """A metric as JSON holds it (at most 6 decimals: the stages round to 6), or a dash."""
    if isinstance(value, float):
        return f"{value:{'+' if signed else ''}.6f}".rstrip("0").rstrip(".")
    return "—" if value is None else f"{value:+d}" if signed else str(value)


def metric_rows(old: dict | None, new: dict | None) -> list[list[str]]:
    """One row per key of either side, so a metric added or dropped shows as a dash."""
    old, new = old or {}, new or {}
    rows = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key), new.get(key)
        both = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        change = round(b - a, 6) if both else None  # type: ignore[operator]
        rows.append([key, number(a), number(b), number(change, signed=both)])
    return rows


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def spread_line(spread: dict | None, images: int, change: float | None) -> list[str]:
    """The noise band beside the difference: how far seeds alone move the accuracy."""
    if not isinstance(spread, dict) or len(spread.get("accuracy_by_seed", {})) < 2 \
            or not {"min", "max"} <= set(spread):
        return []
    seeds = sorted(int(seed) for seed in spread["accuracy_by_seed"])
    named = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else ", ".join(map(str, seeds))
    width = spread["max"] - spread["min"]
    line = (f"Seed spread: the defaults' accuracy varies by {width * 100:.2f} % "
            f"({round(width * images)} images) across seeds {named} on "
            f"{spread.get('machine', 'an unnamed machine')}")
    if change is not None:
        line += (f"; this change moves it by {change * 100:+.2f} % "
                 f"({round(change * images):+d} images)")
    return [line + ".", ""]


def render_report(r: Review) -> str:
    """report.md: what changed, what it did, whether it is more than noise; then the charts."""
    out = [f"# Review: workspace against `{r.base}`", "", f"Base numbers: {r.source}.", ""]
    out += [f"> note: {note}" for note in r.notes] + ([""] if r.notes else [])
    rows = [[key if path == "params.yaml" else f"{path}: {key}", number(change.get("old")),
             number(change.get("new"))] for path, keys in r.params.items()
            for key, change in keys.items()]
    out += ["## What changed", "", "### Params", "",
            *(table(["Param", r.base, "workspace"], rows) if rows else ["No params changed."]),
            "", "### Pipeline code (the stages/*.py deps in dvc.yaml)", "",
            *([f"- `{name}`" + " (uncommitted)" * loose for name, loose in r.code]
              or ["No pipeline code changed."]), "", "## What it did", ""]
    for name in METRIC_FILES:
        out += [f"### metrics/{name}", "", *table(["Metric", r.base, "workspace", "Change"],
                                                  metric_rows(r.old.get(name), r.new[name])), ""]
    out += ["## Whether it is more than noise", ""]
    if (c := r.comparison) is None:
        out += [f"No image-by-image comparison: {r.base} has no metrics/predictions.csv.", ""]
    else:
        out += [f"**Verdict: {verdict_of(r)}.**", "", *table(["Test images", "count"], [
            ["fixed (base wrong, workspace right)", str(len(c.fixed))],
            ["broken (base right, workspace wrong)", str(len(c.broken))],
            ["wrong on both", str(c.shared)]]), "",
            f"McNemar's exact test on the {len(c.fixed) + len(c.broken)} images that changed "
            f"sides: two-sided {format_p(c.p)}; below {ALPHA} counts as evidence.", ""]
        if len(c.fixed) or len(c.broken):
            out += [f"The grids of these digits below are captioned true digit>{r.base}'s "
                    f"prediction>the workspace's (the first {GRID_LIMIT} of each).", ""]
    old_acc, new_acc = (r.old.get("eval.json") or {}).get("accuracy"), \
        (r.new["eval.json"] or {}).get("accuracy")
    out += spread_line(r.spread, r.images, None if old_acc is None or new_acc is None
                       else new_acc - old_acc)
    out += ["## Charts", ""]
    for title, data in r.charts.items():
        if data:
            out += [f"### {title[:1].upper()}{title[1:]}", "", f"![{title}]({file_name(title)})",
                    ""]
    return "\n".join(out)


def write_report(out: Path, r: Review) -> None:
    """report.md, the PNGs and summary.json; the previous report's files (as its summary.json
    lists them) are removed first, and nothing else in ``out`` is touched."""
    files = {file_name(title): data for title, data in r.charts.items() if data}
    for name in (read_json(out / "summary.json") or {}).get("files", []):
        if Path(name).name == name:
            (out / name).unlink(missing_ok=True)
    for name, data in {**files, "report.md": render_report(r).encode()}.items():
        write_bytes_atomic(out / name, data)
    c = r.comparison
    write_json_atomic(out / "summary.json", {
        "base": r.base, "base_numbers": r.source, "notes": r.notes, "alpha": ALPHA,
        "fixed": len(c.fixed) if c else None, "broken": len(c.broken) if c else None,
        "shared": c.shared if c else None, "p_value": c.p if c else None,
        "verdict": verdict_of(r), "files": ["report.md", *files]})


def machine() -> str:
    """The CPU model, core count and torch version: what a seed spread was measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {metadata.version('torch')}"


def seed_spread(shown: list[dict], machine_name: str) -> dict[str, Any]:
    """The test accuracy of each experiment whose params differ from its commit's in
    train.seed alone: how far seeds move the metric, to judge a change's difference by."""
    def flat(data: dict, prefix: str = "") -> dict[str, Any]:
        return {k: v for key, value in data.items() for k, v in (
            flat(value, f"{prefix}{key}.") if isinstance(value, dict)
            else {f"{prefix}{key}": value}).items()}

    def section(rev: dict, kind: str, file: str) -> dict[str, Any]:
        return ((rev.get("data") or {}).get(kind) or {}).get(file, {}).get("data") or {}

    by_seed: dict[str, float] = {}
    for commit in (c for c in shown if c.get("rev") != "workspace"):
        baseline = flat(section(commit, "params", "params.yaml"))
        for experiment in commit.get("experiments") or []:
            rev = experiment["revs"][0]
            params = flat(section(rev, "params", "params.yaml"))
            accuracy: float | None = section(rev, "metrics", "metrics/eval.json").get(
                "accuracy")
            differ = {k for k in baseline.keys() | params.keys()
                      if baseline.get(k) != params.get(k)}
            seed = params.get("train.seed")
            if differ <= {"train.seed"} and accuracy is not None and seed is not None:
                by_seed[str(seed)] = accuracy
    if len(by_seed) < 2:
        raise StageError("fewer than two experiments differ from their commit in train.seed "
                         "alone: run a seed sweep first (make seed-spread)")
    values = list(by_seed.values())
    return {"machine": machine_name,
            "accuracy_by_seed": dict(sorted(by_seed.items(), key=lambda item: int(item[0]))),
            "mean": round(sum(values) / len(values), 6), "min": min(values), "max": max(values)}

