"""Every registered method satisfies the ``Method`` protocol, and its members tell the truth.

Parametrised over ``sparseticket.METHODS``: a method added to the registry is checked here with no
edit (``SETTINGS``/``PREPARE`` only say how to build and warm up the ones that need it).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sparseticket
from sparseticket.methods import BASELINES, METHODS, Method, channel_methods, weight_methods
from sparseticket.methods.protocol import KINDS, METHOD_ATTRIBUTES, METHOD_HOOKS, check_method, missing_members
from sparseticket.methods.registry import methods_of_kind

# constructor keywords of a small run (a method missing here is built with its defaults)
SETTINGS: dict[str, dict[str, Any]] = {
    "earlybird": {"queue": 2},
    "worm": {"queue": 2, "trigger": 1.0, "truncate_filters": True},  # truncates from the 2nd epoch end
    "gemminer": {"density": 0.5, "epochs": 4, "period": 1, "seed": 0},
    "imp": {"rate": 0.5, "exclude": ()},
}
# what brings a method, after two warm-up epochs, to the state where after_backward acts on every
# hooked parameter (besides epoch_end, which the warm-up calls)
PREPARE: dict[str, Callable[[Any], Any]] = {"imp": lambda imp: imp.prune_round()}
NAMES = list(METHODS)


def tiny_model(seed: int = 0) -> nn.Sequential:
    """Two conv + BN blocks and a classifier: every method has something to track on it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def build(name: str, seed: int = 0) -> tuple[nn.Module, Method]:
    model = tiny_model(seed)
    return model, METHODS[name](model, **SETTINGS.get(name, {}))


def backward(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(8, 3, 6, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    nn.functional.cross_entropy(model(images), labels).backward()


def warm_up(name: str, model: nn.Module, method: Method, epochs: int = 2) -> None:
    """``epochs`` epochs of two steps through the hooks, then the method's own preparation."""
    for epoch in range(epochs):
        for step in range(2):
            model.zero_grad(set_to_none=True)
            backward(model, seed=10 * epoch + step)
            method.after_backward()
            method.after_step()
        method.epoch_end()
    prepare = PREPARE.get(name)
    if prepare is not None:
        prepare(method)


def changed_gradients(model: nn.Module, method: Method) -> set[int]:
    """ids of the tensors (the model's parameters and the hooked ones) whose ``.grad`` one
    ``after_backward`` changed, right after a backward."""
    model.zero_grad(set_to_none=True)
    backward(model, seed=99)
    candidates = {id(tensor): tensor for tensor in [*model.parameters(), *method.hooked_parameters()]}
    before = {key: None if tensor.grad is None else tensor.grad.clone() for key, tensor in candidates.items()}
    method.after_backward()
    changed = set()
    for key, tensor in candidates.items():
        old, new = before[key], tensor.grad
        if (old is None) != (new is None) or (old is not None and not torch.equal(old, new)):
            changed.add(key)
    return changed


def assert_same_state(left: Any, right: Any, where: str = "state") -> None:
    """Equal nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), where
        for key in left:
            assert_same_state(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert type(left) is type(right) and len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            assert_same_state(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


# ----------------------------------------------------------------- the registries
def test_registries_and_their_exports():
    assert NAMES == ["earlybird", "worm", "gemminer", "imp"]
    assert set(BASELINES) == {"random", "smart_ratio", "magnitude", "snip", "grasp", "synflow"}
    assert sparseticket.METHODS is METHODS and sparseticket.BASELINES is BASELINES and sparseticket.Method is Method
    assert channel_methods() == ("earlybird", "worm") and weight_methods() == ("gemminer", "imp")
    assert sorted(channel_methods() + weight_methods()) == sorted(METHODS)
    with pytest.raises(ValueError, match="kind must be one of"):
        methods_of_kind("filter")


@pytest.mark.parametrize("name", ["random", "smart_ratio", "magnitude"])
def test_baselines_are_ticket_functions_named_by_their_key(name):
    ticket = BASELINES[name](tiny_model(), 0.5)
    assert isinstance(ticket, sparseticket.Ticket) and ticket.method == name and ticket.masks


# ----------------------------------------------------------------- every registered method
@pytest.mark.parametrize("name", NAMES)
def test_registered_method_satisfies_the_protocol(name):
    cls = METHODS[name]
    assert cls.name == name and cls.kind in KINDS and isinstance(cls.__dict__.get("drawn", cls.drawn), property)
    model, method = build(name)
    assert isinstance(method, Method) and isinstance(method, sparseticket.Method)
    assert missing_members(method) == [] and check_method(method) is method
    assert method.name == name and method.epoch == 0 and method.drawn is False
    warm_up(name, model, method)
    assert method.epoch == 2 and isinstance(method.drawn, bool)
    assert method.ticket().method == name


@pytest.mark.parametrize("name", NAMES)
def test_hooked_parameters_are_exactly_the_gradients_after_backward_changes(name):
    model, method = build(name)
    hooked = {id(tensor) for tensor in method.hooked_parameters()}
    assert hooked and len(hooked) == len(method.hooked_parameters())  # no duplicates
    assert changed_gradients(model, method) <= hooked  # fresh: it may act on fewer
    warm_up(name, model, method)
    assert changed_gradients(model, method) == hooked  # warmed up: on every one, and nothing else


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips(name):
    model, method = build(name)
    warm_up(name, model, method)
    state = method.state_dict()
    fresh_model, fresh = build(name, seed=1)
    optimizer = torch.optim.SGD([p for p in fresh_model.parameters() if p.requires_grad] or [torch.zeros(1)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    fresh.load_state_dict(state, optimizer=optimizer, scheduler=scheduler)  # every method takes them
    assert_same_state(fresh.state_dict(), state)
    assert (fresh.epoch, fresh.drawn) == (method.epoch, method.drawn)
    mine, theirs = method.ticket(), fresh.ticket()
    assert_same_state((mine.masks, mine.channel_masks), (theirs.masks, theirs.channel_masks))


DEVICES = ["meta", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="a move to a GPU needs a GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_check_placement_raises_once_the_model_moves(name, device):
    model, method = build(name)
    warm_up(name, model, method)  # every method now keeps state on the weights' device
    method.check_placement()
    model.to(device)
    with pytest.raises(RuntimeError, match=f"^{type(method).__name__}: "):  # the message names the method
        method.check_placement()


@pytest.mark.parametrize("name", NAMES)
def test_check_placement_after_a_cast(name):
    """Weight-mask methods keep per-weight state that a dtype cast leaves behind; channel masks
    do not depend on the weights' dtype."""
    model, method = build(name)
    warm_up(name, model, method)
    model.double()
    if method.kind == "weight":
        with pytest.raises(RuntimeError, match="cast"):
            method.check_placement()
    else:
        method.check_placement()


def concrete_isinstance_calls(source: str) -> list[int]:
    """Lines of ``isinstance(x, C)`` calls whose classes name a registered method class."""
    concrete = {cls.__name__ for cls in METHODS.values()}
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            named = {getattr(sub, "id", None) or getattr(sub, "attr", None) for sub in ast.walk(node.args[1])}
            if named & concrete:
                lines.append(node.lineno)
    return lines


def test_no_isinstance_on_method_classes_outside_the_methods():
    """Integrations, driver and CLI go through the protocol, so a new method needs no edit there."""
    assert concrete_isinstance_calls("ok = isinstance(m, (torch.Tensor, methods.WORM))") == [1]  # the check bites
    package = Path(sparseticket.__file__).parent
    found = {str(path.relative_to(package)): lines for path in sorted(package.rglob("*.py"))
             if package / "methods" not in path.parents and (lines := concrete_isinstance_calls(path.read_text()))}
    assert found == {}


# ----------------------------------------------------------------- what is not a Method
class Complete:
    """Every member of the protocol, doing nothing."""

    name, kind, epoch = "complete", "weight", 0

    @property
    def drawn(self) -> bool:
        return False

    def after_backward(self) -> None: ...
    def after_step(self) -> None: ...
    def epoch_end(self) -> bool: return False
    def ticket(self) -> Any: ...
    def state_dict(self) -> dict: return {}
    def load_state_dict(self, state: dict, *, optimizer: Any = None, scheduler: Any = None) -> None: ...
    def hooked_parameters(self) -> list: return []
    def check_placement(self) -> None: ...


def without(member: str) -> object:
    """A ``Complete`` whose class lacks ``member``."""
    namespace = {key: value for key, value in vars(Complete).items() if key != member}
    return type("Partial", (), namespace)()


def test_a_complete_duck_type_is_a_method():
    assert isinstance(Complete(), Method) and check_method(Complete()) is not None


@pytest.mark.parametrize("member", METHOD_HOOKS + METHOD_ATTRIBUTES)
def test_an_object_lacking_a_member_is_not_a_method(member):
    partial = without(member)
    assert not isinstance(partial, Method)
    assert missing_members(partial) == [member]
    with pytest.raises(TypeError, match=f"method must be a sparseticket method .*Partial lacks {member}$"):
        check_method(partial)


def test_a_hook_that_is_not_callable_or_an_unknown_kind_is_refused():
    broken = Complete()
    broken.after_step = None
    assert missing_members(broken) == ["after_step"]
    with pytest.raises(TypeError, match="lacks after_step"):
        check_method(broken)
    odd = Complete()
    odd.kind = "filter"
    with pytest.raises(ValueError, match="method.kind must be one of"):
        check_method(odd)
