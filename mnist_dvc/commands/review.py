"""Review a change to the pipeline: the workspace's outputs against a base revision.

    mnist-dvc review [--base REV] [--rerun] [--out DIR]    (make review BASE=main RERUN=1)
    mnist-dvc review --base REV --seeds N [--out DIR]      (make review BASE=main SEEDS=5)
    mnist-dvc review --seed-spread                          (make seed-spread)

With --seeds N, both sides train here on the same N seeds (100, 101, ...: apart from the
seeds the defaults were chosen on) through DVC's queue, so runs DVC has seen restore from
its run-cache; the report leads with the paired comparison: the mean difference in test
images with its 95 % interval, the paired t-test, how many seeds improved. It answers
"does this change train better", where one run a side answers only "do these two models
differ on this test set" (docs/review-across-seeds.md).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mnist_dvc.commands import review_charts
from mnist_dvc.commands.paired_stats import (
    CONFIDENCE,
    POWER,
    PairedTest,
    paired_test,
    smallest_visible_effect,
)
from mnist_dvc.commands.revisions import (
    SeedRuns,
    cache_sharing_worktree,
    changed_code,
    command,
    git_show,
    read_bytes,
    recomputed,
    require_committed,
    seed_runs,
    stale_stages,
    untracked_code,
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
CALIBRATION = Path("docs") / "review_calibration.json"  # written by mnist-dvc calibrate
FIRST_SEED = 100  # --seeds: 100, 101, ...; the defaults were chosen on seeds 0-9
# --seeds runs SEED_JOBS pipelines at a time with train.threads SEED_THREADS on both sides
# (the thread count changes the bits, so both sides must share it): on 2 cores two runs of
# one thread finish sooner than one run of two threads after another (measured, see
# docs/review-across-seeds.md).
SEED_JOBS = 2
SEED_THREADS = 1
MAX_SEEDS = 50
SEED_FILES = ("metrics/predictions.csv", "metrics/train_steps.csv")


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
    seeds: SeedReview | None = None  # --seeds


@dataclass(frozen=True)
class SeedReview:
    """--seeds: both sides' predictions for each seed, and the paired comparison."""

    actual: np.ndarray  # the test labels
    base: dict[int, np.ndarray]  # seed: predicted classes
    head: dict[int, np.ndarray]
    pairs: dict[int, Comparison]  # seed: McNemar between its two models
    test: PairedTest  # of the images right, head minus base
    runs: dict[str, str]  # side: how its runs went (count, restored, seconds)
    calibration: dict | None = None  # docs/review_calibration.json

    @property
    def seeds(self) -> list[int]:
        return sorted(self.base)

    def errors(self, side: str) -> dict[int, int]:
        predicted = self.base if side == "base" else self.head
        return {seed: int((predicted[seed] != self.actual).sum()) for seed in self.seeds}

    def accuracy(self, side: str) -> dict[str, float]:
        return {str(seed): 1 - errors / len(self.actual)
                for seed, errors in self.errors(side).items()}

    @property
    def identical(self) -> bool:
        return all(np.array_equal(self.base[s], self.head[s]) for s in self.seeds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (main)")
    parser.add_argument("--rerun", action="store_true", help="recompute the base here")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help=f"train N seeds a side here (seeds {FIRST_SEED}, "
                             f"{FIRST_SEED + 1}, ...) and compare them pair by pair")
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
    if args.seeds is not None and not 2 <= args.seeds <= MAX_SEEDS:
        raise StageError(f"--seeds {args.seeds}: a paired comparison needs 2 to {MAX_SEEDS} "
                         "seeds (docs/review-across-seeds.md says what each number sees)")
    result = review(args.base, args.rerun) if args.seeds is None else \
        review_seeds(args.base, args.seeds)
    write_report(args.out, result)
    print(f"review: {verdict_of(result) or 'no comparison'}; wrote {args.out / 'report.md'}")


def resolve(base: str) -> str:
    return command("git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}",
                   failure=f"unknown base revision {base!r}: git knows no commit by that "
                           "name").strip()


def review(base: str, rerun: bool, layout: Layout = Layout()) -> Review:
    """Every input is checked before the slow work, so bad input fails before anything."""
    sha = resolve(base)
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
    # the full confusion matrix at 99 % is a dark diagonal: the errors alone are drawn below
    plots.get("data", {}).pop(str(layout.predictions.relative_to(layout.root)), None)
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
        result.charts.update(error_charts(actual, {base: {0: old_predicted},
                                                   "workspace": {0: predicted}}))
        grids = change_grids(result.comparison, actual, old_predicted, predicted,
                             layout.raw / IDX_FILES["test"].images, result.notes)
        result.charts.update(grids)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return result


def review_seeds(base: str, count: int, layout: Layout = Layout()) -> Review:
    """Train ``count`` seeds of the workspace (uncommitted changes included) and of ``base``
    (in a temporary worktree sharing this repository's DVC cache), then compare seed by
    seed. The workspace's own outputs are neither needed nor touched."""
    sha = resolve(base)
    if loose := untracked_code():
        raise StageError(f"pipeline code that git does not track ({', '.join(loose[:3])}): "
                         "DVC's queue copies tracked files only: git add it and review again")
    seeds = list(range(FIRST_SEED, FIRST_SEED + count))
    overrides = [f"train.threads={SEED_THREADS}"]
    result = Review(base, f"trained on this machine, seeds {seeds[0]}-{seeds[-1]} on both "
                    f"sides (train.threads {SEED_THREADS}, {SEED_JOBS} runs at a time)",
                    json.loads(command("dvc", "params", "diff", sha, "--json") or "{}"),
                    changed_code(sha), {}, {})
    runs, sides = {}, {}
    for side in ("head", "base"):  # the change first: if it fails, it fails early
        started = time.perf_counter()
        with (cache_sharing_worktree(sha, "review-base-") if side == "base"
              else contextlib.nullcontext(None)) as tree:
            sides[side] = seed_runs(side, seeds, overrides, SEED_JOBS, SEED_FILES, cwd=tree)
        runs[side] = run_summary(sides[side], time.perf_counter() - started)
    actual, base_predicted = seed_predictions(sides["base"], base)
    head_actual, head_predicted = seed_predictions(sides["head"], "the workspace")
    if not np.array_equal(actual, head_actual):
        raise StageError(f"{base} and the workspace hold different test images")
    result.images = len(actual)
    result.seeds = seed_review(actual, base_predicted, head_predicted, runs,
                               read_json(layout.root / CALIBRATION))
    steps = {side: {seed: files["metrics/train_steps.csv"] for seed, files
                    in sides[side].files.items()} for side in sides}
    result.charts = seed_charts(result.seeds, base, steps)
    for side, name in (("base", base), ("head", "the workspace")):
        if not all(steps[side].values()):
            result.notes.append(f"{name}'s runs wrote no metrics/train_steps.csv (an older "
                                "revision?): the training curves show the other side only")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return result


def seed_review(actual: np.ndarray, base: dict[int, np.ndarray], head: dict[int, np.ndarray],
                runs: dict[str, str], calibration: dict | None = None) -> SeedReview:
    """Each seed's McNemar test, and the paired t-test of the images right, head - base."""
    seeds = sorted(base)
    pairs = {seed: compare(actual, base[seed], actual, head[seed]) for seed in seeds}
    right = {side: [int((predicted[seed] == actual).sum()) for seed in seeds]
             for side, predicted in (("base", base), ("head", head))}
    return SeedReview(actual, base, head, pairs, paired_test(right["base"], right["head"]),
                      runs, calibration)


def run_summary(runs: SeedRuns, seconds: float) -> str:
    return (f"{len(runs.files)} seeds in {seconds:.0f} s, {runs.restored} of them restored "
            "from DVC's run-cache")


def seed_predictions(runs: SeedRuns, side: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The test labels and each seed's predicted classes, from its predictions.csv."""
    actual: np.ndarray | None = None
    predicted = {}
    for seed, files in sorted(runs.files.items()):
        data = files["metrics/predictions.csv"]
        if data is None:
            raise StageError(f"{side}, seed {seed}: its run wrote no metrics/predictions.csv "
                             "(an older revision?): --seeds needs per-image predictions")
        labels, predicted[seed] = read_predictions(data, f"{side}, seed {seed}")
        if actual is not None and not np.array_equal(actual, labels):
            raise StageError(f"{side}: the seeds' predictions.csv hold different test images")
        actual = labels
    assert actual is not None
    return actual, predicted


def error_charts(actual: np.ndarray,
                 sides: dict[str, dict[int, np.ndarray]]) -> dict[str, bytes]:
    """The errors-only confusion matrices of two sides (mean over seeds) and their
    difference, second side minus first: red where it errs more."""
    labels = class_labels(actual, *(p for by_seed in sides.values() for p in by_seed.values()))
    index = {name: i for i, name in enumerate(labels)}

    def indices(names: np.ndarray) -> np.ndarray:
        return np.array([index[str(name)] for name in names.tolist()], dtype=np.int64)

    matrices = {side: np.mean([review_charts.error_matrix(indices(actual), indices(p),
                                                          len(labels))
                               for p in by_seed.values()], axis=0)
                for side, by_seed in sides.items()}
    (first, old), (second, new) = matrices.items()
    title = "errors by true and predicted class" + (
        f" (mean over {len(next(iter(sides.values())))} seeds)"
        if len(next(iter(sides.values()))) > 1 else "")
    spec = review_charts.confusion_chart(
        title[:1].upper() + title[1:], {first: old, second: new, f"{second} - {first}":
                                        new - old}, labels,
        difference=f"{second} - {first}")
    return {title: review_charts.render(spec)}


def class_labels(*names: np.ndarray) -> list[str]:
    """The class names in ``names``, numbers in numeric order ("2" before "10"), then words."""
    found = {str(name) for array in names for name in array.tolist()}
    return sorted(found, key=lambda name: (not name.isdigit(), int(name) if name.isdigit()
                                           else 0, name))


def seed_charts(seeds: SeedReview, base: str,
                steps: dict[str, dict[int, bytes | None]]) -> dict[str, bytes | None]:
    """--seeds: each seed's errors on both sides, the errors-only confusion matrices, and
    every run's training curve."""
    label = {"base": base, "head": "workspace"}
    charts: dict[str, bytes | None] = {
        "test errors per seed": review_charts.render(review_charts.paired_chart(
            "Test errors per seed", {label[side]: seeds.errors(side)
                                     for side in ("base", "head")}))}
    charts.update(error_charts(seeds.actual, {base: seeds.base, "workspace": seeds.head}))
    if any(data for by_seed in steps.values() for data in by_seed.values()):
        charts["training curves, every seed"] = review_charts.render(
            review_charts.curves_chart("Training curves, every seed (every 25 steps)", {
                label[side]: steps[side] for side in ("base", "head")}))
    return charts


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
    if result.seeds is not None:
        return seed_verdict(result.seeds)
    c = result.comparison
    return verdict(len(c.fixed), len(c.broken), c.p) if c else None


def seed_verdict(seeds: SeedReview) -> str:
    """One line: "better" or "worse" only when the 95 % interval of the mean difference
    excludes 0 (the same as the paired t-test's p < 0.05); "no change" only when every
    seed's two models predict every test image alike."""
    t = seeds.test
    if seeds.identical:
        return (f"no change: the same predictions on all {len(t.differences)} seeds "
                "(difference 0 images)")
    kind = t.direction or "no evidence of a change"
    low, high = t.ci95
    return (f"{kind}: {t.mean:+.1f} test images right (95 % interval {low:+.1f} to "
            f"{high:+.1f}, {format_p(t.p)}); {t.improved} of {len(t.differences)} seeds "
            "improved")


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


def what_changed(r: Review) -> list[str]:
    rows = [[key if path == "params.yaml" else f"{path}: {key}", number(change.get("old")),
             number(change.get("new"))] for path, keys in r.params.items()
            for key, change in keys.items()]
    return ["## What changed", "", "### Params", "",
            *(table(["Param", r.base, "workspace"], rows) if rows else ["No params changed."]),
            "", "### Pipeline code (the code deps in dvc.yaml)", "",
            *([f"- `{name}`" + " (uncommitted)" * loose for name, loose in r.code]
              or ["No pipeline code changed."]), ""]


def chart_lines(r: Review) -> list[str]:
    out = ["## Charts", ""]
    for title, data in r.charts.items():
        if data:
            out += [f"### {title[:1].upper()}{title[1:]}", "", f"![{title}]({file_name(title)})",
                    ""]
    return out


def render_report(r: Review) -> str:
    """report.md: what changed, what it did, whether it is more than noise; then the charts."""
    if r.seeds is not None:
        return render_seed_report(r, r.seeds)
    out = [f"# Review: workspace against `{r.base}`", "", f"Base numbers: {r.source}.", ""]
    out += [f"> note: {note}" for note in r.notes] + ([""] if r.notes else [])
    out += [*what_changed(r), "## What it did", ""]
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
    return "\n".join(out + chart_lines(r))


def render_seed_report(r: Review, s: SeedReview) -> str:
    """report.md for --seeds: the paired comparison first, then what changed, the charts."""
    t, seeds = s.test, s.seeds
    base_errors, head_errors = s.errors("base"), s.errors("head")
    rows = [[str(seed), str(base_errors[seed]), str(head_errors[seed]),
             number(int(d), signed=True), str(len(s.pairs[seed].fixed)),
             str(len(s.pairs[seed].broken)), format_p(s.pairs[seed].p)[4:]]
            for seed, d in zip(seeds, t.differences, strict=True)]
    rows.append(["mean", f"{np.mean(list(base_errors.values())):.1f}",
                 f"{np.mean(list(head_errors.values())):.1f}", f"{t.mean:+.1f}", "", "", ""])
    low, high = t.ci95
    level = f"{CONFIDENCE * 100:.0f} %"
    out = [f"# Review: workspace against `{r.base}`, {len(seeds)} seeds a side", "",
           f"**Verdict: {seed_verdict(s)}.**", "",
           f"Both sides {r.source}: {r.base}: {s.runs['base']}; workspace: {s.runs['head']}.",
           ""]
    out += [f"> note: {note}" for note in r.notes] + ([""] if r.notes else [])
    out += ["## The change across seeds", "",
            *table(["Seed", f"{r.base} errors", "workspace errors", "difference", "fixed",
                    "broken", "McNemar p"], rows), "",
            "Difference: test images the workspace gets right minus those the base gets "
            f"right ({r.images} test images), seed by seed.", "",
            f"- Mean difference {t.mean:+.2f} images, {level} interval {low:+.2f} to "
            f"{high:+.2f} (paired t, {len(seeds) - 1} degrees of freedom); paired t-test "
            f"{format_p(t.p)}; {t.improved} of {len(seeds)} seeds improved, {t.worsened} "
            "worsened.",
            f"- The verdict says better or worse only when the {level} interval excludes 0."
            + sensitivity(s.calibration, len(seeds)),
            "- McNemar's exact test per seed (fixed against broken) asks only whether that "
            "seed's two models differ on this test set, not whether the change trains better.",
            ""]
    return "\n".join(out + what_changed(r) + chart_lines(r))


def sensitivity(calibration: dict | None, seeds: int) -> str:
    """What ``seeds`` pairs can see, from the committed calibration sweep (if any)."""
    calibration = calibration or {}
    sd = calibration.get("sd_images")
    if not isinstance(sd, int | float) or sd <= 0:
        return ""
    line = (f" Runs of the defaults spread by {sd:.1f} test images (SD over "
            f"{len(calibration.get('errors', {}).get('defaults', {})) or 'the'} seeds, "
            f"{CALIBRATION}): {seeds} seeds a side see a change of about "
            f"{smallest_visible_effect(sd, seeds):.0f} images {POWER * 100:.0f} % of the time; "
            "smaller real changes often read as no evidence.")
    measured = (calibration.get("false_positive_rate") or {}).get(str(seeds))
    if isinstance(measured, int | float):
        line += (f" On that sweep the verdict called a change where there was none in "
                 f"{measured * 100:.1f} % of random splits at {seeds} seeds.")
    return line


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
    summary = {
        "base": r.base, "base_numbers": r.source, "notes": r.notes, "alpha": ALPHA,
        "fixed": len(c.fixed) if c else None, "broken": len(c.broken) if c else None,
        "shared": c.shared if c else None, "p_value": c.p if c else None,
        "verdict": verdict_of(r), "files": ["report.md", *files]}
    if (s := r.seeds) is not None:
        summary.update(seed_summary(s, r.images))
    write_json_atomic(out / "summary.json", summary)


def seed_summary(s: SeedReview, images: int) -> dict[str, Any]:
    """--seeds' part of summary.json: head minus base, in test images."""
    return {
        "seeds": {"base": s.accuracy("base"), "head": s.accuracy("head")},
        "seed_test": {"mean_difference_images": s.test.mean,
                      "ci95_images": list(s.test.ci95), "p_value": s.test.p,
                      "sd_images": s.test.sd, "improved": s.test.improved,
                      "worsened": s.test.worsened, "test_images": images},
        "seed_pairs": {str(seed): {"fixed": len(c.fixed), "broken": len(c.broken),
                                   "p_value": c.p} for seed, c in s.pairs.items()},
        "seed_runs": {"threads": SEED_THREADS, "jobs": SEED_JOBS, **s.runs}}


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

