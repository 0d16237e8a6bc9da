"""``sparseticket`` / ``python -m sparseticket``: search, compare and info.

Bad flags, an unknown model or a missing data directory print one line and exit with code 2.
Under ``torchrun --nproc_per_node N -m sparseticket search ...`` the processes train one model
with DistributedDataParallel (gloo on the CPU, NCCL on GPUs); rank 0 writes the files and the log.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

from sparseticket.cli import distributed
from sparseticket.cli.config import METHODS, RunConfig
from sparseticket.cli.report import summarize_compare, summarize_search

_HELP = {
    "method": "ticket method", "model": "built-in model (vgg, resnet20, preresnet20, mlp, transformer)",
    "data": "dataset (digits is built in; cifar10, cifar100, imagefolder need torchvision and --data-dir)",
    "data_dir": "folder holding the dataset files (never downloaded)", "width": "model width (channels)",
    "seed": "seed of initialization and data order", "batch_size": "training batch size",
    "lr": "learning rate of the dense training (EarlyBird/WORM search, IMP rounds)",
    "momentum": "SGD momentum (also Gem-Miner's score momentum)", "weight_decay": "SGD weight decay",
    "epochs": "search epochs: at most this many for EarlyBird/WORM, Gem-Miner's mining epochs E",
    "finetune_epochs": "epochs of fine-tuning the ticket", "finetune_lr": "fine-tuning learning rate",
    "ratio": "EarlyBird/WORM: fraction of channels pruned", "l1": "EarlyBird/WORM: L1 on BN gamma",
    "queue": "EarlyBird/WORM: masks kept in the queue", "eps": "EarlyBird/WORM: stop when max distance <= eps",
    "trigger": "WORM: truncate once the mean queue distance < trigger",
    "chi": "WORM: gradient scale of static channels (0 = hard truncation)",
    "static": "WORM: static channels = pruned in the newest mask, or in every mask of the queue",
    "truncate_filters": "WORM: also scale the gradients of the conv filters producing static channels",
    "density": "weight methods: target density (fraction of weights kept)",
    "period": "Gem-Miner: freeze every T epochs", "l2": "Gem-Miner: lambda of lambda*||p||^2",
    "score_lr": "Gem-Miner: score learning rate (paper: 0.1 for hundreds of epochs on CIFAR)",
    "rate": "IMP: fraction of surviving weights pruned per round (the last round stops at --density)", "rewind_step": "IMP: rewind step k (iterations)",
    "round_epochs": "IMP: training epochs per round",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit code 2), no usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"sparseticket: error: {message} (see --help)\n")


def _add_run_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    defaults = RunConfig()
    for field in fields(RunConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=_HELP.get(field.name, field.name))
            continue
        kind = {int: int, float: float}.get(type(default), str)
        choices = {"static": ("newest", "queue")}.get(field.name)
        parser.add_argument(flag, type=kind, default=default, choices=choices,
                            help=f"{_HELP.get(field.name, field.name)} (default: {default})")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder for run folders (default: runs)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device (default: auto = cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                        help="under torchrun: seconds a rank waits for the others before failing "
                             f"(default: {distributed.DEFAULT_TIMEOUT_S})")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = _Parser(prog="sparseticket", description="Find lottery tickets fast.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    search = commands.add_parser("search", help="find, fine-tune and evaluate one ticket")
    search.add_argument("--method", choices=METHODS, default="earlybird", help="ticket method")
    _add_run_flags(search, skip=("method",))
    search.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted run folder (its config.json; other run flags are ignored)")
    compare = commands.add_parser("compare", help="several methods on the same model, data and seed")
    compare.add_argument("--methods", nargs="+", choices=METHODS,
                         default=["earlybird", "worm", "gemminer", "imp", "random"], help="methods to compare")
    compare.add_argument("--densities", nargs="+", type=float, default=[0.05],
                         help="densities for the weight methods (default: 0.05)")
    _add_run_flags(compare, skip=("method", "density"))
    commands.add_parser("info", help="versions, active kernels, threads")
    return parser


def _config(arguments: argparse.Namespace, **overrides) -> RunConfig:
    values = {f.name: getattr(arguments, f.name) for f in fields(RunConfig) if hasattr(arguments, f.name)}
    return replace(RunConfig(**values), **overrides)


def _check(config: RunConfig) -> None:
    from sparseticket.experiments.datasets import DATASETS
    from sparseticket.experiments.models import MODELS

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose from {', '.join(MODELS)}")
    if config.data not in DATASETS:
        raise ValueError(f"unknown data {config.data!r}; choose from {', '.join(DATASETS)}")
    if not 0 < config.density <= 1:
        raise ValueError(f"--density must be in (0, 1], got {config.density}")
    if not 0 <= config.ratio < 1:
        raise ValueError(f"--ratio must be in [0, 1), got {config.ratio}")


def _device(arguments: argparse.Namespace) -> str:
    """The device named by --device (auto: cuda when available)."""
    if arguments.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return arguments.device


def _search(arguments: argparse.Namespace, processes: distributed.Processes) -> None:
    from sparseticket.cli.search import Search

    if arguments.resume is not None:
        config_path = arguments.resume / "config.json"
        if not config_path.exists():
            raise ValueError(f"--resume {arguments.resume}: no config.json there (not a run folder)")
        config = RunConfig.from_json(config_path.read_text())
        run_dir = arguments.resume
    else:
        config = _config(arguments)
        _check(config)
        run_dir = arguments.out / config.run_name()
    result = Search(config, run_dir, progress=not arguments.no_progress, processes=processes).run()
    if processes.is_main:
        print(summarize_search(result))


def _compare(arguments: argparse.Namespace, processes: distributed.Processes) -> None:
    from sparseticket.cli.search import Search

    results = []
    for method in arguments.methods:
        densities = [None] if method in ("earlybird", "worm") else arguments.densities
        for density in densities:
            config = _config(arguments, method=method, **({"density": density} if density else {}))
            _check(config)
            if processes.is_main:
                print(f"== {method}" + (f" at density {density}" if density else ""), flush=True)
            result = Search(config, arguments.out / config.run_name(), progress=not arguments.no_progress,
                            processes=processes).run()
            if processes.is_main:
                summarize_search(result)  # the run folder's own summary.md and plots
            results.append(result)
    if processes.is_main:
        print(summarize_compare(results, arguments.out))


def _info() -> None:
    import platform

    import sparseticket

    info = sparseticket.backends()
    print(f"sparseticket {sparseticket.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"kernels: C++ {'on' if info['cpp'] else 'off (' + info['cpp_reason'] + ')'}; "
          f"Triton {'on' if info['triton'] else 'off (' + info['triton_reason'] + ')'}; "
          f"CUDA GPU {'yes' if info['cuda'] else 'no'}")
    print(f"CPU ops run on: {info['cpu_backend']}; CUDA ops run on: {info['cuda_backend']}")
    print(f"threads: {torch.get_num_threads()}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    arguments = build_parser().parse_args(argv)
    if getattr(arguments, "threads", None):
        torch.set_num_threads(arguments.threads)
    if getattr(arguments, "device", "auto") == "cuda" and not torch.cuda.is_available():
        print("sparseticket: error: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    rank, finished, processes, code = "", False, distributed.Processes(), 0
    try:
        if arguments.command == "info":
            _info()
        else:
            processes = distributed.start(_device(arguments), arguments.dist_timeout)
            rank = f" (rank {processes.rank})" if processes.distributed else ""
            {"search": _search, "compare": _compare}[arguments.command](arguments, processes)
        finished = True
    except KeyboardInterrupt:
        print(f"\nsparseticket: interrupted{rank}; the run folder resumes with --resume RUN_DIR", file=sys.stderr)
        code = 130
    except Exception as error:  # noqa: BLE001 - user errors become one line
        from sparseticket.experiments.datasets import DatasetUnavailable

        if not isinstance(error, (ValueError, DatasetUnavailable, FileNotFoundError)):
            raise
        print(f"sparseticket: error{rank}: {error}", file=sys.stderr)
        code = 2
    finally:
        released = distributed.stop(finished)
    # every exit path, errors included: a thread left to interpreter finalization could turn the code into SIGABRT
    distributed.exit_if_threads_left(released, processes, code)
    return code
