"""Run configuration: every hyper-parameter of a search, as one JSON-serialisable dataclass (the
``config.json`` of a run folder). The command line builds it from flags and presets; the driver's
users below the command line (``sparseticket.deploy``) read it back from a run folder."""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sparseticket.methods.gemminer import DEFAULT_SCORE_LR
from sparseticket.methods.registry import BASELINES, METHODS, channel_methods


def method_choices() -> tuple[str, ...]:
    """``--method``'s choices: every registered method and baseline (read when the parser is built)."""
    return (*METHODS, *BASELINES)


def is_channel_method(name: str) -> bool:
    """Whether ``name``'s tickets are channel masks (EarlyBird, WORM: no ``--density``)."""
    return name in channel_methods()


HASHED_UNLESS_DEFAULT = {"samples": None}  # field -> default: see RunConfig.digest


@dataclass
class RunConfig:
    """Everything needed to rerun a search (``config.json`` of a run folder)."""

    method: str = "earlybird"
    model: str = "vgg"
    data: str = "digits"
    data_dir: str | None = None
    samples: int | None = None  # mnist1d: signals to generate (None: the mnist1d package's 5,000)
    width: int = 16
    seed: int = 0
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 30
    finetune_epochs: int = 30
    finetune_lr: float = 0.01
    lr_schedule: str = "step"  # dense training's schedule: "constant", "step" (x0.1 at 50% and 75%), "cosine"
    warmup_epochs: int = 0  # linear warm-up of the dense training's learning rate
    augment: bool = False  # digits: random affine (+-1 px, +-15 deg) and Gaussian noise 0.1 while training
    convention: str = "default"  # "original": the authors' code's semantics (sparseticket.methods.convention)
    # EarlyBird / WORM
    ratio: float = 0.5
    l1: float = 1e-4
    queue: int = 5
    eps: float = 0.1
    trigger: float = 0.15
    chi: float = 0.003
    static: str = "newest"
    truncate_filters: bool = False
    # weight tickets
    density: float = 0.05
    period: int = 5
    l2: float = 1e-4
    score_lr: float = DEFAULT_SCORE_LR  # Gem-Miner: see GemMiner's docstring (the paper: 0.1 over 58,650 steps)
    rate: float = 0.2
    rewind_step: str = "0"  # IMP: "500it" (iterations), "2ep" (epochs) or a bare number of iterations
    round_epochs: int = 5

    def to_json(self) -> str:
        """Sorted, indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse a config; ValueError if it is not a JSON object, has keys this version does not know
        (a config from another version) or a value of the wrong type. Missing keys take their defaults."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config must be a JSON object, got {type(values).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"config has unknown keys: {', '.join(sorted(unknown))}")
        if isinstance(values.get("rewind_step"), int):  # configs written before "500it"/"2ep"
            values["rewind_step"] = str(values["rewind_step"])
        hints = typing.get_type_hints(cls)
        wrong = [f"{key} ({value!r})" for key, value in sorted(values.items()) if not _fits(value, hints[key])]
        if wrong:
            raise ValueError(f"config has values of the wrong type: {', '.join(wrong)}")
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        """The config in file ``path`` (a run folder's ``config.json``); ValueError naming the file if
        it cannot be read or parsed (see ``from_json``)."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def digest(self) -> str:
        """Short hash of the config: run folders are named by it. Fields added after folders were first
        named (``HASHED_UNLESS_DEFAULT``) count only away from their default, so that a config that leaves
        them alone keeps the name it had before they existed."""
        values = asdict(self)
        for name, default in HASHED_UNLESS_DEFAULT.items():
            if values[name] == default:
                del values[name]
        return hashlib.sha256(json.dumps(values, indent=2, sort_keys=True).encode()).hexdigest()[:8]

    def run_name(self) -> str:
        """Folder name: method, model, data, seed and the config hash."""
        return f"{self.method}-{self.model}-{self.data}-s{self.seed}-{self.digest()}"


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value suits a field annotated ``hint`` (an int where a float is expected is fine)."""
    allowed = typing.get_args(hint) or (hint,)  # ``str | None`` -> (str, NoneType)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)
