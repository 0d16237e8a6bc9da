"""``sparseticket deploy RUN_FOLDER``: the ticket of a finished search made into its slim network,
checked against the masked dense network, measured, and exported if asked (docs/deploy.md).

Writes ``deploy.md`` (the table printed) and ``deploy.json`` (the report) to ``--out`` (default:
``RUN_FOLDER/deploy``), and ``model.pt2`` / ``model.onnx`` with ``--export``; every file atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparseticket.files import atomic_write_text

EXPORTS = {"torch": "model.pt2", "onnx": "model.onnx"}


def add_deploy_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``deploy`` and its flags."""
    parser = commands.add_parser("deploy", help="the slim network of a run's ticket: checked, measured, exported")
    parser.add_argument("run_folder", type=Path, metavar="RUN_FOLDER", help="a finished `sparseticket search` run")
    parser.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="channel tickets: keep a multiple of N channels per layer (the largest-|gamma| "
                             "pruned ones added); a new ticket, checked against its own masked model")
    parser.add_argument("--export", choices=tuple(EXPORTS), default=None,
                        help="also export the slim network (torch.export program or ONNX) and check it")
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: RUN_FOLDER/deploy)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="B",
                        help="batch sizes whose latency is measured (default: 1 64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency, median (default: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the usable cores idle at the start, as for search)")
    parser.add_argument("--target", choices=("cpu", "cuda"), default="cpu",
                        help="device the model runs and the sparse formats are timed on (default: cpu)")


def _check(arguments: argparse.Namespace) -> None:
    if arguments.round_to is not None and arguments.round_to <= 0:
        raise ValueError(f"--round-to must be >= 1, got {arguments.round_to}")
    if any(size < 1 for size in arguments.batch_sizes):
        raise ValueError(f"--batch-sizes must be >= 1, got {' '.join(map(str, arguments.batch_sizes))}")
    if arguments.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {arguments.repeats}")
    if not arguments.run_folder.is_dir():
        raise ValueError(f"RUN_FOLDER {arguments.run_folder}: no such folder")


def run_deploy(arguments: argparse.Namespace) -> int:
    """Run ``sparseticket deploy``; the exit code (a bad argument raises ValueError: main prints it, code 2)."""
    from sparseticket.deploy import DeployMismatch, check_run_folder, deploy

    _check(arguments)
    try:
        check_run_folder(arguments.run_folder)
    except ValueError as error:
        raise ValueError(f"RUN_FOLDER: {error}") from None
    out = arguments.out if arguments.out is not None else arguments.run_folder / "deploy"
    try:
        result = deploy(arguments.run_folder, round_to=arguments.round_to, target=arguments.target,
                        batch_sizes=arguments.batch_sizes, repeats=arguments.repeats)
        exported = None
        if arguments.export:
            out.mkdir(parents=True, exist_ok=True)
            exported = result.export(out / EXPORTS[arguments.export], arguments.export)
    except (DeployMismatch, ImportError) as error:
        print(f"sparseticket: error: {error}", file=sys.stderr)
        return 1
    table = result.report.table() + (f"\n- {exported.summary()}" if exported else "")
    data = result.report.to_dict()
    if exported:
        data["export"] = {"format": exported.format, "path": str(exported.path), "error": exported.error,
                          "dynamic_batch": exported.dynamic_batch, "densified": exported.densified}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "deploy.md", table + "\n")
    atomic_write_text(out / "deploy.json", json.dumps(data, indent=2, default=str) + "\n")
    print(table)
    print(f"written: {out / 'deploy.md'}, {out / 'deploy.json'}" + (f", {exported.path}" if exported else ""))
    return 0
