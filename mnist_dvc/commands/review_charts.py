"""The charts review draws itself, as Vega-Lite specs (rendered offline by vl-convert):
confusion matrices of the errors alone, per side and their difference; each seed's test
errors on both sides; the training curves of every seed, finer than epochs.

At 99 % accuracy a full confusion matrix is a dark diagonal and a pale rest: the errors
alone, the diagonal left out, show which digits a change confuses more or less.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
PANEL = 230  # pixels, width and height of one confusion matrix


def error_matrix(actual: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true, predicted) over the wrong predictions; the diagonal stays 0."""
    matrix = np.zeros((classes, classes))
    wrong = actual != predicted
    np.add.at(matrix, (actual[wrong], predicted[wrong]), 1)
    return matrix


def confusion_chart(title: str, panels: Mapping[str, np.ndarray], labels: Sequence[str],
                    difference: str | None = None) -> dict[str, Any]:
    """One heatmap per panel, side by side, each cell labelled with its value; the panel
    named ``difference`` is coloured blue (fewer errors) to red (more) around 0."""
    views = []
    for name, matrix in panels.items():
        cells = [(labels[i], labels[j], round(float(v), 2))
                 for (i, j), v in np.ndenumerate(matrix) if i != j]
        values = [{"true": true, "predicted": predicted, "value": value}
                  for true, predicted, value in cells]
        scale = ({"scheme": "redblue", "reverse": True, "domainMid": 0} if name == difference
                 else {"scheme": "oranges", "domainMin": 0})
        whole = all(value.is_integer() for _, _, value in cells)
        views.append({
            "title": name, "width": PANEL, "height": PANEL, "data": {"values": values},
            "encoding": {
                "x": {"field": "predicted", "type": "ordinal", "sort": list(labels),
                      "title": "predicted"},
                "y": {"field": "true", "type": "ordinal", "sort": list(labels),
                      "title": "true"}},
            "layer": [
                {"mark": "rect", "encoding": {"color": {
                    "field": "value", "type": "quantitative", "scale": scale,
                    "legend": {"title": None}}}},
                {"transform": [{"filter": "datum.value != 0"}],
                 "mark": {"type": "text", "fontSize": 9},
                 "encoding": {"text": {"field": "value", "type": "quantitative",
                                       "format": "d" if whole else ".1f"}}}]})
    return {"$schema": SCHEMA, "title": {"text": title}, "hconcat": views,
            "resolve": {"scale": {"color": "independent"}}}


def paired_chart(title: str, errors: Mapping[str, Mapping[int, int]]) -> dict[str, Any]:
    """Each seed's test errors on each side, a line per seed from side to side."""
    values = [{"side": side, "seed": str(seed), "errors": count}
              for side, by_seed in errors.items() for seed, count in by_seed.items()]
    return {"$schema": SCHEMA, "title": {"text": title}, "width": 260, "height": 260,
            "data": {"values": values}, "mark": {"type": "line", "point": True},
            "encoding": {
                "x": {"field": "side", "type": "ordinal", "sort": list(errors), "title": None,
                      "axis": {"labelAngle": 0}},
                "y": {"field": "errors", "type": "quantitative", "scale": {"zero": False},
                      "title": "test images wrong"},
                "color": {"field": "seed", "type": "nominal"}}}


def curves_chart(title: str, steps: Mapping[str, Mapping[int, bytes | None]]) -> dict[str, Any]:
    """Training loss and error (1 - accuracy) of every seed on each side against the epoch,
    from each run's train_steps.csv, on log scales: early and late training both show."""
    values = []
    for side, by_seed in steps.items():
        for seed, data in by_seed.items():
            for row in csv.DictReader(io.StringIO((data or b"").decode())):
                values.append({"side": side, "seed": str(seed), "epoch": float(row["epoch"]),
                               "loss": float(row["train_loss"]),
                               "error": 1 - float(row["train_acc"])})

    def panel(field: str, axis: str) -> dict[str, Any]:
        return {"width": 300, "height": 220, "transform": [{"filter": f"datum.{field} > 0"}],
                "mark": {"type": "line", "strokeWidth": 1, "opacity": 0.7},
                "encoding": {
                    "x": {"field": "epoch", "type": "quantitative"},
                    "y": {"field": field, "type": "quantitative", "title": axis,
                          "scale": {"type": "log"}},
                    "color": {"field": "side", "type": "nominal",  # a side keeps its colour
                              "scale": {"domain": list(steps)}},
                    "detail": {"field": "seed", "type": "nominal"}}}

    return {"$schema": SCHEMA, "title": {"text": title}, "data": {"values": values},
            "hconcat": [panel("loss", "training loss"),
                        panel("error", "training error (1 - accuracy)")]}


def render(spec: dict[str, Any]) -> bytes:
    import vl_convert

    png: bytes = vl_convert.vegalite_to_png(spec, scale=1.5)
    return png
