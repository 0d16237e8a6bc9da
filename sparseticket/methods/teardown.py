"""End a ``torch.distributed`` run so that no communication thread outlives the Python interpreter.

``dist.destroy_process_group()`` only unregisters the group: the C++ group object, and with gloo its
three threads (``gloo_tcp_loop`` and two ``pt_gloo_runloop`` workers), live on for as long as anything
references the group. Besides your DDP/FSDP model, torch itself keeps references in module-level
state that is never cleared (torch 2.13):

* ``torch.distributed.nn.functional`` binds ``group=group.WORLD`` as a default argument when it is
  first imported; DistributedDataParallel imports it (through ``torch._dynamo``) after
  ``init_process_group``, so the default group is captured for good;
* DTensor's caches (redistribution plans and transforms, used by FSDP2's ``full_tensor()``, mesh
  topologies, sharding propagation) keep each DeviceMesh, and through it the group, alive.

The gloo threads then run on through interpreter finalization. A worker that is still releasing the
tensors of its last collective needs the GIL for their Python objects; a thread asking for the GIL
once finalization has begun is ended with ``pthread_exit``, whose forced unwinding through a
``noexcept`` C++ destructor calls ``std::terminate``: "terminate called without an active exception"
and SIGABRT at the very end of a run that otherwise succeeded. The aborting thread's stack, from a
core dump: ``ProcessGroupGloo::runLoop`` > ``~AsyncAllreduceWork`` > ``TensorImpl::decref_pyobject``
> ``gil_scoped_acquire`` > ``take_gil`` > ``PyThread_exit_thread`` > ``pthread_exit`` >
``_Unwind_ForcedUnwind`` > ``__gxx_personality_v0`` > ``std::terminate``, while the main thread was
in ``Py_FinalizeEx``. Upstream: pytorch/pytorch#190489 (the message when a group is never destroyed)
and pytorch/pytorch#179291 (an abandoned atexit hook destroying groups before finalization; it
would not help here, since destroying does not free a group torch still references).

``end_distributed()`` destroys the group *and* drops those references, so the group's destructor
joins its threads while the interpreter is still fully alive. Call it once the model is gone (after
your ``main()`` returns), or drop your own references to DDP/FSDP modules first.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import types
import warnings
from pathlib import Path

import torch.distributed as dist

# Thread names (Linux ``comm``) of torch's gloo backend: its device loop and its two work runners.
GLOO_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop")


def communication_threads() -> list[str]:
    """Names of this process's live gloo threads (empty where ``/proc`` cannot tell)."""
    names = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        if name.startswith(GLOO_THREADS):
            names.append(name)
    return names


def _drop_captured_default_group() -> None:
    """Reset default arguments that captured a process group at import time to ``None``.

    ``None`` is what those arguments mean anyway: "the default group", looked up at call time."""
    module = sys.modules.get("torch.distributed.nn.functional")
    if module is None:
        return
    for function in vars(module).values():
        defaults = getattr(function, "__defaults__", None)
        if defaults and any(isinstance(value, dist.ProcessGroup) for value in defaults):
            function.__defaults__ = tuple(None if isinstance(value, dist.ProcessGroup) else value
                                          for value in defaults)


# Caches of torch (2.13) that are not plain functools caches yet keep a DeviceMesh, and through it its
# process groups, alive: (module, attribute path, method to call, or "" to call the attribute itself).
_TORCH_CACHES = (
    ("torch.distributed.tensor._redistribute", "clear_redistribute_planner_cache", ""),
    ("torch.distributed.tensor", "DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding", "cache_clear"),
    ("torch._C", "_clear_DTensor_sharding_propagator_cache", ""),  # DTensor's C++ dispatch fast path
)


def _functools_caches(module: types.ModuleType) -> list[functools._lru_cache_wrapper]:
    """The ``functools.cache``/``lru_cache`` functions of a module and of the classes it defines."""
    values = list(vars(module).values())
    with warnings.catch_warnings():  # looking at deprecated aliases (torch.distributed.reduce_op) warns
        warnings.simplefilter("ignore")
        for value in list(values):
            if isinstance(value, type) and value.__module__ == module.__name__:
                values += [getattr(member, "__func__", member) for member in vars(value).values()]  # staticmethods
        return [value for value in values if isinstance(value, functools._lru_cache_wrapper)]


def _drop_torch_caches() -> None:
    """Clear torch's module-level state that keeps a destroyed process group alive.

    Clearing caches is always safe: they only save work and fill up again on the next run."""
    _drop_captured_default_group()
    for name, module in list(sys.modules.items()):
        if name.startswith("torch.distributed") and isinstance(module, types.ModuleType):
            for cache in _functools_caches(module):  # e.g. DTensor's transform plans, MeshTopoInfo per mesh
                cache.cache_clear()
    for module_name, path, method in _TORCH_CACHES:
        target = sys.modules.get(module_name)  # never imported: nothing cached
        for attribute in path.split("."):
            target = getattr(target, attribute, None)
        clear = getattr(target, method, None) if method else target
        if callable(clear):  # older torch: not a cache there (e.g. no cache_clear), nothing to drop
            clear()


def free_destroyed_groups() -> bool:
    """Drop torch's references to destroyed process groups and collect garbage; True once no gloo thread is left.

    For code that called ``dist.destroy_process_group()`` itself: a group that nothing else
    references is freed here, and its destructor joins its threads."""
    if dist.is_available():
        _drop_torch_caches()
    gc.collect()  # DDP/FSDP modules sit in reference cycles; freeing them frees the group, which joins its threads
    return not communication_threads()


def end_distributed(finished: bool = True) -> bool:
    """Barrier (when ``finished``), destroy the process group and free it; True once no gloo thread is left.

    ``finished``: every rank got to the end, so wait for all of them before tearing down (a peer may
    still be writing files). After an error pass False: a barrier could only hang."""
    destroying = dist.is_available() and dist.is_initialized()
    if destroying:
        if finished:
            dist.barrier()
        dist.destroy_process_group()
    released = free_destroyed_groups()
    if destroying and not released:
        warnings.warn(f"gloo threads outlive destroy_process_group() ({', '.join(communication_threads())}): "
                      "something still references the process group (a DDP/FSDP model?); drop it before "
                      "end_distributed()", RuntimeWarning, stacklevel=2)
    return released


def exit_now(code: int) -> None:
    """Flush and leave at once with ``code``, skipping interpreter finalization (``os._exit``).

    The last resort when threads that must not see finalization are still running; atexit
    handlers do not run, so only call it when everything worth writing has been written."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to save
            pass
    os._exit(code)
