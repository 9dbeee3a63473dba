"""The upstream internals bt-peft relies on, checked where they are used so that a TRL, transformers, peft or
bitsandbytes release that moves one fails loudly, naming the package, its version and the version bt-peft was
tested with, instead of training or merging silently wrong.

Only what no public API offers goes through here; `pyproject.toml` bounds these packages to the tested minor
versions. Each check runs once, at import of the module that needs the internal.
"""

import importlib
import inspect
from importlib.metadata import version
from typing import Any

TESTED = {"transformers": "5.24", "trl": "1.16", "peft": "0.21", "bitsandbytes": "0.50"}
"""The minor version of each package whose internals bt-peft uses, as tested (see `pyproject.toml`)."""


class UpstreamChangedError(RuntimeError):
    """An internal of TRL, transformers, peft or bitsandbytes that bt-peft relies on is gone or has changed."""


def upstream_error(package: str, what: str) -> UpstreamChangedError:
    """The error for `what` (e.g. "trl.RewardTrainer._prepare_dataset(...)") of `package` missing or changed."""
    return UpstreamChangedError(
        f"bt-peft relies on {what} of {package}, tested with {package} {TESTED[package]}.x, but the installed "
        f"{package} {version(package)} does not have it: install {package}=={TESTED[package]}.* (pyproject.toml "
        "declares the tested ranges) or a bt-peft release that supports it"
    )


def require_methods(owner: type, methods: dict[str, tuple[str, ...]], package: str) -> None:
    """Each method `name` of `methods` must exist on `owner`, its parameters beginning with `methods[name]` (after
    `self`): the methods a subclass overrides, with the parameters it expects.

    Raises:
        `UpstreamChangedError` naming `package`, its installed and tested versions.
    """
    for name, parameters in methods.items():
        method = getattr(owner, name, None)
        found = tuple(inspect.signature(method).parameters)[1:] if callable(method) else None
        if found is None or found[: len(parameters)] != parameters:
            raise upstream_error(package, f"{owner.__module__}.{owner.__qualname__}.{name}({', '.join(parameters)})")


def require_call(owner: type, caller: str, callees: tuple[str, ...], package: str) -> None:
    """`owner.caller` must still call each of `callees` (by name, in its source): the hooks that a subclass overrides
    are only run if the upstream method still calls them."""
    source = inspect.getsource(getattr(owner, caller))
    missing = [callee for callee in callees if f".{callee}(" not in source]
    if missing:
        raise upstream_error(package, f"{owner.__qualname__}.{caller} calling {', '.join(missing)}")


def require_attributes(obj: Any, names: tuple[str, ...], owner: str, package: str) -> None:
    """`obj` (e.g. a trainer after `__init__`) must have each attribute of `names`, which `owner` (the upstream class,
    for the message) sets."""
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise upstream_error(package, f"the attributes {', '.join(missing)} that {owner} sets")


def import_internal(package: str, module: str, name: str) -> Any:
    """`module.name`, an internal of `package`; `UpstreamChangedError` when it is no longer there."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise upstream_error(package, f"{module}.{name}") from None
