"""``sparseticket`` / ``python -m sparseticket``: search, compare and info.

Bad flags, an unknown model or a missing data directory print one line and exit with code 2.
Under ``torchrun --nproc_per_node N -m sparseticket search ...`` the processes train one model
with DistributedDataParallel (gloo on the CPU, NCCL on GPUs); rank 0 writes the files and the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import fields, replace
from pathlib import Path

import torch

from sparseticket.cli import distributed, presets
from sparseticket.cli.deploy import add_deploy_parser, run_deploy
from sparseticket.cli.report import summarize_compare, summarize_search
from sparseticket.driver.config import RunConfig, is_channel_method, method_choices
from sparseticket.driver.threads import choose_threads
from sparseticket.methods.convention import CONVENTIONS

_HELP = {  # where a default differs from the papers' code: "paper: VALUE" and why (docs/DEFAULTS.md)
    "method": "ticket method",
    "model": "built-in model: for images vgg, resnet20, preresnet20, transformer; for 1-D signals (mnist1d) "
             "cnn1d, resnet1d; mlp for both; paper: resnet20 (Gem-Miner, open_lth; EarlyBird: VGG-16) on CIFAR; "
             "a 4-conv VGG here trains on 8x8 digits in seconds",
    "data": "dataset: digits and mnist1d are built in (mnist1d generated offline by the mnist1d package, cached); "
            "npz (--data-dir FILE.npz with arrays x, y[, x_test, y_test]) and idx (--data-dir FOLDER of MNIST-style "
            "IDX files) are read with NumPy; cifar10, cifar100, imagefolder need torchvision and --data-dir; "
            "paper: cifar10; digits here: built in, nothing to download",
    "data_dir": "folder (file, for npz) holding the dataset files (never downloaded)",
    "samples": "mnist1d: signals to generate, 80%% for training (default: the mnist1d package's 5,000 = 4,000 "
               "train / 1,000 test)",
    "width": "model width (channels of the first layer; cnn1d: its channel count, 32 unless --width is given)",
    "seed": "seed of initialization and data order",
    "batch_size": "training batch size; paper: 128 (open_lth, Gem-Miner; EarlyBird 256); 64 here: digits has "
                  "1,348 training images (22 steps per epoch)",
    "lr": "learning rate of the dense training (EarlyBird/WORM search, IMP rounds); paper: 0.1 at batch 128 "
          "(EarlyBird, open_lth); 0.05 here: the same rate per example at batch 64",
    "momentum": "SGD momentum (also Gem-Miner's score momentum)", "weight_decay": "SGD weight decay",
    "epochs": "search epochs: at most this many for EarlyBird/WORM, Gem-Miner's mining epochs E; paper: 160 "
              "(EarlyBird, open_lth; Gem-Miner mines 150) on CIFAR; 30 here: digits are learnt in tens of epochs "
              "and the default compare stays short (its time: docs/cli.md) (--preset paper: 160)",
    "finetune_epochs": "epochs of fine-tuning the ticket; paper: 150 (Gem-Miner fine-tunes as many epochs as it "
                       "mines; EarlyBird retrains to the end of its 160); 30 here: the same rule on --epochs' 30",
    "finetune_lr": "fine-tuning learning rate",
    "convention": "whose semantics the methods follow; paper: original (the authors' code bit for bit: open_lth's "
                  "IMP count, ties and fresh optimizer at k; Gem-Miner's per-round count; the untrained mask in "
                  "EarlyBird/WORM queues; no L1 for WORM unless --l1 is given); default here: exact counts, the "
                  "optimizer state restored at IMP's rewind, queues of trained masks (docs/fidelity.md)",
    "ratio": "EarlyBird/WORM: fraction of channels pruned", "l1": "EarlyBird/WORM: L1 on BN gamma",
    "queue": "EarlyBird/WORM: masks kept in the queue", "eps": "EarlyBird/WORM: stop when max distance <= eps",
    "trigger": "WORM: truncate once the mean queue distance < trigger",
    "chi": "WORM: gradient scale of static channels (0 = hard truncation)",
    "static": "WORM: static channels = pruned in the newest mask, or in every mask of the queue",
    "truncate_filters": "WORM: also scale the gradients of the conv filters producing static channels",
    "density": "weight methods: target density (fraction of weights kept); paper: 0.0144 (Gem-Miner's headline "
               "ResNet-20 ticket); 0.05 here: the 16.6K-weight digits VGG keeps 830 weights (239 at 0.0144)",
    "period": "Gem-Miner: freeze every T epochs", "l2": "Gem-Miner: lambda of lambda*||p||^2",
    "score_lr": "Gem-Miner: score learning rate; paper: 0.1 for 150 epochs of 391 CIFAR steps; 10 here keeps "
                "lr x steps alike (22 steps x 30 epochs); 0.1 leaves the digits masks near chance",
    "rate": "IMP: fraction of surviving weights pruned per round (the last round stops at --density)",
    "rewind_step": "IMP: rewind step k: '500it' (iterations), '2ep' (epochs) or a bare number of iterations",
    "lr_schedule": "dense training's learning-rate schedule over its length: constant, step (x0.1 at 50%% and "
                   "75%%) or cosine; IMP rewinds it with the weights",
    "warmup_epochs": "linear learning-rate warm-up epochs of the dense training",
    "augment": "digits: train on random affine (+-1 px, +-15 deg) and Gaussian-noise (0.1) copies; paper: on "
               "(random crop and flip on CIFAR); off here: the quick default task is clean digits (--preset hard: "
               "on)",
    "round_epochs": "IMP: training epochs per round; paper: 160 (open_lth trains every round in full); 5 here: "
                    "14 rounds reach density 0.05 at rate 0.2 in a short default compare (--preset paper: 160)",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit code 2), no usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"sparseticket: error: {message} (see --help)\n")


def _value_type(hint: object) -> object:
    """The type a RunConfig field's flag parses: ``int | None`` -> int."""
    return next((kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)), str)


def _add_run_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    defaults, hints = RunConfig(), typing.get_type_hints(RunConfig)
    for field in fields(RunConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=presets.Flag, default=default, help=_HELP.get(field.name, field.name))
            continue
        kind = {int: int, float: float}.get(_value_type(hints[field.name]), str)
        choices = {"static": ("newest", "queue"), "lr_schedule": ("constant", "step", "cosine"),
                   "convention": CONVENTIONS}.get(field.name)
        parser.add_argument(flag, type=kind, default=default, choices=choices, action=presets.Store,
                            help=f"{_HELP.get(field.name, field.name)} (default: {default})")
    parser.add_argument("--preset", choices=tuple(presets.PRESETS), default="default",
                        help="named settings applied before the flags above (an explicit flag wins): default; "
                             "hard = digits with random affine + noise while training, clean and distorted test "
                             "accuracy, resnet20 width 16, lr 0.05, batch 64, 40 epochs; paper = hard with 160 "
                             "epochs of search, fine-tuning and IMP rounds (default: default)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder for run folders (default: runs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the usable cores idle when the run starts, at least 1; "
                             "OMP_NUM_THREADS also sets it)")
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
    search.add_argument("--method", choices=method_choices(), default="earlybird", help="ticket method")
    _add_run_flags(search, skip=("method",))
    search.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted run folder (its config.json; other run flags are ignored)")
    compare = commands.add_parser("compare", help="several methods on the same model, data and seed")
    compare.add_argument("--methods", nargs="+", choices=method_choices(),
                         default=["earlybird", "worm", "gemminer", "imp", "random"], help="methods to compare")
    compare.add_argument("--densities", nargs="+", type=float, default=[0.05],
                         help="densities for the weight methods (default: 0.05)")
    compare.add_argument("--seeds", nargs="+", type=int, default=None,
                         help="seeds: every method runs on each, in its own run folder; rerunning skips finished "
                              "runs and resumes interrupted ones; tables give mean ± std, 95%% intervals and "
                              "paired tests (default: the one --seed)")
    _add_run_flags(compare, skip=("method", "density"))
    commands.add_parser("info", help="versions, active kernels, threads")
    build = commands.add_parser("build", help="build the C++ CPU kernels now into the cache (e.g. in a Docker image), "
                                             "as the first import would when no install-time build loads")
    build.add_argument("--force", action="store_true",
                       help="build into the cache even when the install-time kernels load")
    commands.add_parser("reproduce", help="the papers' claims on the built-in task, over seeds (claims.md)",
                        add_help=False)  # its own flags: sparseticket.studies.claims
    add_deploy_parser(commands)
    return parser


def _config(arguments: argparse.Namespace, **overrides) -> RunConfig:
    """The run's config: the flags' values, then --preset's (except for flags given explicitly), then ``overrides``."""
    values = {f.name: getattr(arguments, f.name) for f in fields(RunConfig) if hasattr(arguments, f.name)}
    explicit = presets.explicit_flags(arguments)
    config = replace(presets.apply_preset(RunConfig(**values), getattr(arguments, "preset", "default"), explicit),
                     **overrides)
    if config.convention == "original" and config.method == "worm" and "l1" not in explicit:
        config = replace(config, l1=0.0)  # the WORM authors' code has no L1 on gamma
    if "width" not in explicit:
        from sparseticket.builtin.models import default_width

        config = replace(config, width=default_width(config.model, config.width))  # cnn1d: 32 channels
    return config


def _check(config: RunConfig) -> None:
    from sparseticket.builtin.datasets import AUGMENTABLE, DATASETS, check_options
    from sparseticket.builtin.models import MODELS

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose from {', '.join(MODELS)}")
    if config.data not in DATASETS:
        raise ValueError(f"unknown data {config.data!r}; choose from {', '.join(DATASETS)}")
    if config.augment and config.data not in AUGMENTABLE:
        raise ValueError(f"--augment (random affine and noise; --preset hard and paper turn it on) is for the image "
                         f"data sets {', '.join(AUGMENTABLE)}, not --data {config.data}; --no-augment turns it off")
    check_options(config.data, samples=config.samples)
    if config.width < 1:
        raise ValueError(f"--width must be >= 1, got {config.width}")
    if not 0 < config.density <= 1:
        raise ValueError(f"--density must be in (0, 1], got {config.density}")
    if not 0 <= config.ratio < 1:
        raise ValueError(f"--ratio must be in [0, 1), got {config.ratio}")


def _refuse_other_flags(arguments: argparse.Namespace, config: RunConfig, config_path: Path) -> None:
    """ValueError when a run flag given with --resume differs from the run's config (it would be
    ignored: a run resumes with the config it started with)."""
    explicit = presets.explicit_flags(arguments)
    names = {f.name for f in fields(RunConfig)}
    differing = [f"--{name.replace('_', '-')} {getattr(arguments, name)!r} (the run has {getattr(config, name)!r})"
                 for name in sorted(explicit & names) if getattr(arguments, name) != getattr(config, name)]
    if getattr(arguments, "preset", "default") != "default":
        differing.append(f"--preset {arguments.preset}")
    if differing:
        raise ValueError(f"--resume continues the run with its own {config_path}; these flags would be ignored: "
                         f"{', '.join(differing)}. Drop them, or start a new run without --resume")


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
        config = RunConfig.read(config_path)
        _refuse_other_flags(arguments, config, config_path)
        run_dir = arguments.resume
    else:
        config = _config(arguments)
        _check(config)
        run_dir = arguments.out / config.run_name()
    arguments.resume_hint = f"the run folder resumes with --resume {run_dir}"
    result = Search(config, run_dir, progress=not arguments.no_progress, processes=processes).run()
    if processes.is_main:
        if result.finished_before:
            print(f"{run_dir}: already finished; nothing retrained, nothing rewritten")
        print(summarize_search(result, write=not result.finished_before))


def _compare(arguments: argparse.Namespace, processes: distributed.Processes) -> None:
    """Every method (and density) on every seed, each run in its own folder; finished runs are read
    back without training, interrupted ones resume; then compare.md and the plots."""
    from sparseticket.cli.search import Search, finished_run

    seeds = [arguments.seed] if arguments.seeds is None else list(arguments.seeds)
    if len(set(seeds)) != len(seeds) or any(seed < 0 for seed in seeds):
        raise ValueError(f"--seeds must be distinct integers >= 0, got {' '.join(map(str, seeds))}")
    configs = []
    for seed in seeds:
        for method in arguments.methods:
            densities = [None] if is_channel_method(method) else arguments.densities
            for density in densities:
                config = _config(arguments, method=method, seed=seed, **({"density": density} if density else {}))
                _check(config)
                configs.append(config)
    say = print if processes.is_main else (lambda *_args, **_kwargs: None)
    results = []
    for index, config in enumerate(configs, 1):
        run_dir = arguments.out / config.run_name()
        arguments.resume_hint = f"the same compare command resumes it (run folder {run_dir})"
        finished = finished_run(run_dir, config)
        what = config.method + (f" at density {config.density:g}" if not is_channel_method(config.method) else "")
        say(f"== run {index}/{len(configs)}: seed {seeds.index(config.seed) + 1}/{len(seeds)} ({config.seed}), "
            f"{what}" + (f": already finished, not retrained ({run_dir.name})" if finished else ""), flush=True)
        result = Search(config, run_dir, progress=not arguments.no_progress and not finished, processes=processes,
                        log=(lambda _message: None) if finished else print).run()
        if processes.is_main and not finished:
            summarize_search(result)  # the run folder's own plots and summary.md
        results.append(result)
    if processes.is_main:
        print(summarize_compare(results, arguments.out))


def _build(arguments: argparse.Namespace) -> int:
    """``sparseticket build``: the first-use build of the C++ kernels, ahead of time; exit 1 if it fails."""
    import subprocess

    from sparseticket._kernels.cpp import cpp_source

    if cpp_source() == "installed" and not arguments.force:
        print("the C++ kernels built at install time load for this torch and CPU: nothing to build "
              "(--force builds the first-use cache anyway)")
        return 0
    # in a fresh process that loads no C++ kernels: one process cannot hold two copies of their ops
    script = ("from sparseticket._kernels.jit import build_kernels\n"
              "module, reason, path = build_kernels()\n"
              "print(f'C++ kernels ready: {path}' if module is not None else f'C++ kernels not built: {reason}')\n"
              "raise SystemExit(0 if module is not None else 1)\n")
    environment = {**os.environ, "SPARSETICKET_DISABLE_CPP": "1"}
    return subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", script], env=environment).returncode


def _info(threads_why: str) -> None:
    """``sparseticket info``: versions, which kernels run, threads (``threads_why``: why that many)."""
    import platform

    import sparseticket

    info = sparseticket.backends()
    print(f"sparseticket {sparseticket.__version__}, torch {torch.__version__}, python {platform.python_version()}")
    from sparseticket._kernels.cpp import KERNELS_FROM, cpp_source

    cpp = f"on ({KERNELS_FROM[cpp_source()]})" if info["cpp"] else f"off ({info['cpp_reason']})"
    print(f"kernels: C++ {cpp}; "
          f"Triton {'on' if info['triton'] else 'off (' + info['triton_reason'] + ')'}; "
          f"CUDA GPU {'yes' if info['cuda'] else 'no'}")
    print(f"CPU ops run on: {info['cpu_backend']}; CUDA ops run on: {info['cuda_backend']}")
    print(f"threads: {torch.get_num_threads()} ({threads_why}; --threads overrides)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:  # its own parser and flags
        from sparseticket.studies.claims import main as reproduce

        return reproduce(argv[1:])
    arguments = build_parser().parse_args(argv)
    try:
        threads, threads_why = choose_threads(getattr(arguments, "threads", None))
    except ValueError as error:
        print(f"sparseticket: error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(threads)
    if getattr(arguments, "device", "auto") == "cuda" and not torch.cuda.is_available():
        print("sparseticket: error: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    rank, finished, processes, code = "", False, distributed.Processes(), 0
    try:
        if arguments.command == "info":
            _info(threads_why)
        elif arguments.command == "build":
            code = _build(arguments)
        elif arguments.command == "deploy":
            code = run_deploy(arguments)
        else:
            processes = distributed.start(_device(arguments), arguments.dist_timeout)
            rank = f" (rank {processes.rank})" if processes.distributed else ""
            {"search": _search, "compare": _compare}[arguments.command](arguments, processes)
        finished = True
    except KeyboardInterrupt:
        hint = getattr(arguments, "resume_hint", "nothing was written yet")
        print(f"\nsparseticket: interrupted{rank}; {hint}", file=sys.stderr)
        code = 130
    except Exception as error:  # noqa: BLE001 - user errors become one line
        from sparseticket.builtin.datasets import DatasetUnavailable

        if not isinstance(error, (ValueError, DatasetUnavailable, OSError)):  # OSError: files, folders, disks
            raise
        print(f"sparseticket: error{rank}: {error}", file=sys.stderr)
        code = 2
    finally:
        released = distributed.stop(finished)
    # every exit path, errors included: a thread left to interpreter finalization could turn the code into SIGABRT
    distributed.exit_if_threads_left(released, processes, code)
    return code
