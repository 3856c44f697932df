"""Forward hooks for modules that a converted network runs without calling them.

A converted network runs a module on a multi-resolution map through its own code (a fused conv-BN-act call, a
bottleneck on a map, the graph converter's ops), not through ``module(x)``, so ``nn.Module.__call__`` and with it
the module's hooks would not run. Every runner calls such a module through :func:`call_with_hooks` instead, which
runs its hooks as ``__call__`` does, and asks :func:`has_hooks` before taking a fused path that never shows a
module's own output (a conv's output before its BatchNorm): a module with hooks runs unfused, so its hooks see
what it really takes and returns.

What a hook receives: a module that runs on a map gets the :class:`~adatriton.core.multires.MultiResMap` (its
values ``(E, C)`` and layout) as input and output; a module that runs densely gets tensors, as in the original
network. Backward hooks (``register_full_backward_hook``) are not run on modules called this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.nn.modules import module as torch_module

__all__ = ["call_with_hooks", "has_hooks", "hooks_silenced", "run_forward_hooks", "run_forward_pre_hooks"]

# torch's global hook dicts, read on every check: registering and removing a global hook changes these very dicts
# (in place), so holding them saves two module attribute lookups per check.
_GLOBAL_PRE = torch_module._global_forward_pre_hooks
_GLOBAL_POST = torch_module._global_forward_hooks


def has_hooks(*modules: nn.Module | None) -> bool:
    """Whether calling any of ``modules`` (None entries are skipped) would run a forward or forward-pre hook: its
    own, or a global one (``torch.nn.modules.module.register_module_forward_hook`` and ``..._pre_hook``).

    A few attribute reads per module: cheap enough to ask on every call of a fused op.
    """
    if _GLOBAL_POST or _GLOBAL_PRE:
        return True
    for m in modules:
        if m is not None and (m._forward_hooks or m._forward_pre_hooks):
            return True
    return False


@contextlib.contextmanager
def hooks_silenced(root: nn.Module) -> Iterator[None]:
    """While inside, no forward or forward-pre hook runs, neither of ``root``'s modules nor a global one; they are all
    back afterwards. For planning runs on meta tensors (:func:`adatriton.models.graph.converter.with_meta_parameters`),
    which are not calls of the model: a hook that records activations must not see them."""
    tables = ("_forward_hooks", "_forward_pre_hooks")
    saved = [(m, name, vars(m)[name]) for m in root.modules() for name in tables if name in vars(m)]
    globals_saved = [(table, dict(table)) for table in (_GLOBAL_PRE, _GLOBAL_POST)]
    for m, name, table in saved:
        vars(m)[name] = type(table)()
    for table, _ in globals_saved:
        table.clear()
    try:
        yield
    finally:
        for m, name, table in saved:
            vars(m)[name] = table
        for table, contents in globals_saved:
            table.clear()
            table.update(contents)


def run_forward_pre_hooks(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``module``'s forward-pre hooks (global ones first) on ``(args, kwargs)``, as ``nn.Module.__call__`` runs
    them: a return value that is not None replaces the positional inputs (a single value becomes a 1-tuple; a
    ``with_kwargs`` hook returns ``(args, kwargs)``).

    Returns:
        The inputs the module's forward gets.

    Raises:
        RuntimeError: a ``with_kwargs`` pre-hook returns something other than None or ``(args, kwargs)``.
    """
    for hook_id, hook in (*_GLOBAL_PRE.items(), *module._forward_pre_hooks.items()):
        if hook_id in module._forward_pre_hooks_with_kwargs:
            result = hook(module, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"forward pre-hook must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
                args, kwargs = result
        else:
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
    return args, kwargs


def run_forward_hooks(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """``module``'s forward hooks (global ones first) on its inputs and ``output``, as ``nn.Module.__call__`` runs
    them: a return value that is not None replaces the output.

    Returns:
        The module's output.
    """
    with_kwargs = module._forward_hooks_with_kwargs
    global_with_kwargs = torch_module._global_forward_hooks_with_kwargs
    for hook_id, hook in (*_GLOBAL_POST.items(), *module._forward_hooks.items()):
        if hook_id in with_kwargs or hook_id in global_with_kwargs:
            result = hook(module, args, kwargs, output)
        else:
            result = hook(module, args, output)
        if result is not None:
            output = result
    return output


def call_with_hooks(module: nn.Module, impl: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``impl(*args, **kwargs)`` as the forward of ``module``: :func:`run_forward_pre_hooks`, then ``impl`` on the
    inputs they give, then :func:`run_forward_hooks`, with ``nn.Module.__call__``'s semantics.

    Without hooks this is ``impl(*args, **kwargs)`` after a few attribute reads.

    Raises:
        RuntimeError: a ``with_kwargs`` pre-hook returns something other than None or ``(args, kwargs)``.
    """
    if not (_GLOBAL_POST or _GLOBAL_PRE or module._forward_hooks or module._forward_pre_hooks):
        return impl(*args, **kwargs)
    args, kwargs = run_forward_pre_hooks(module, args, kwargs)
    return run_forward_hooks(module, args, kwargs, impl(*args, **kwargs))
