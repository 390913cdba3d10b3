"""``mnist-dvc``: the commands a user runs beside the pipeline (the Make targets call them).

Each subcommand is a module of ``mnist_dvc.commands`` with a ``main(argv)``, imported only
when it runs, so that ``mnist-dvc predict`` pays for no other command's imports.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from mnist_dvc.errors import run_stage

COMMANDS = {
    "predict": "the digit in PNG or JPEG images, with the trained model",
    "review": "a change's outputs against a base revision, with a significance test",
    "push": "share every run DVC has seen (outputs, metrics, plots) with a DVC remote",
    "serve": "the digit in images POSTed over HTTP on 127.0.0.1, with the model predict uses",
    "calibrate": "review --seeds' false-positive rate and power, written to "
                 "docs/review_calibration.json",
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-dvc", description="mnist-dvc's commands; the pipeline itself runs with "
        "`dvc repro`.", epilog="`mnist-dvc COMMAND --help` describes a command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    args, rest = parser.parse_known_args(argv)
    command = importlib.import_module(f"mnist_dvc.commands.{args.command}")
    run_stage(lambda: command.main(rest), program=argv is None)  # None: the console


