"""Every private name of transformers, peft and bitsandbytes that bt-peft still uses, in one list (`INTERNALS`), each
with the versions it was tested on. bt-peft uses no TRL internal: only `RewardConfig`, `ModelConfig`, `TrlParser`
and `ScriptArguments`, TRL's public configuration and command-line API.

A name used through `import_internal`, `require_attributes` or `require_parameter` fails loudly,
`UpstreamChangedError` naming the package, its installed version and the tested range, when the installed version
is outside that range or the name is gone. `BT_PEFT_ALLOW_UNTESTED_UPSTREAM=1` (`ALLOW_UNTESTED_ENV`) turns the
range check into a warning, to try a release newer than the tested one (pyproject.toml accepts up to the next
major); a name that is gone still fails; the entries marked `checked=False` are attributes read directly (listed
here so that a version bump reviews them). Only what no public API offers is here.
"""

import importlib
import inspect
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from packaging.version import Version


@dataclass(frozen=True)
class Internal:
    """A private name of an upstream package that bt-peft uses.

    Attributes:
        package (`str`): the distribution ("transformers", "peft", "bitsandbytes").
        name (`str`): dotted path of the name (a module attribute, a class attribute, a parameter).
        used_in (`str`): the bt-peft modules that use it.
        tested (`tuple[str, str]`): the oldest and newest minor versions of `package` it was tested on, inclusive.
        checked (`bool`): whether its use goes through this module's checks.
    """

    package: str
    name: str
    used_in: str
    tested: tuple[str, str]
    checked: bool = True


ALLOW_UNTESTED_ENV = "BT_PEFT_ALLOW_UNTESTED_UPSTREAM"
"""Set to 1 to use the internals with an untested version of their package (a warning instead of the error)."""

TRANSFORMERS = ("5.17", "5.25")
PEFT = ("0.21", "0.21")
BITSANDBYTES = ("0.49", "0.50")

INTERNALS: tuple[Internal, ...] = (
    Internal("transformers", "transformers.Trainer.save_model._internal_call", "training/checkpointing.py", TRANSFORMERS),
    Internal("transformers", "transformers.utils.import_utils.BITSANDBYTES_MIN_VERSION", "validation.py", TRANSFORMERS),
    Internal("transformers", "transformers.utils.import_utils.is_bitsandbytes_available", "validation.py", TRANSFORMERS),
    Internal("transformers", "transformers.modeling_utils.remove_tied_weights_from_state_dict", "export/streaming_merge.py",
             TRANSFORMERS),
    Internal("transformers", "transformers.quantizers.quantizers_utils.should_convert_module", "export/streaming_merge.py",
             TRANSFORMERS),
    Internal("transformers", "transformers.modeling_utils.set_zero3_state", "modeling.py", TRANSFORMERS),
    Internal("transformers", "transformers.PreTrainedModel._weight_conversions", "modeling.py", TRANSFORMERS),
    Internal("transformers", "transformers.PretrainedConfig._attn_implementation", "training/packing.py", TRANSFORMERS,
             checked=False),
    Internal("transformers", "transformers.PreTrainedModel._keep_in_fp32_modules", "export/streaming_merge.py, "
             "training/planning.py", TRANSFORMERS, checked=False),
    Internal("transformers", "transformers.PreTrainedModel._keep_in_fp32_modules_strict", "export/streaming_merge.py",
             TRANSFORMERS, checked=False),
    Internal("transformers", "transformers.PretrainedConfig._model_name_or_path", "embedded.py", TRANSFORMERS,
             checked=False),
    Internal("peft", "peft.utils.other.get_pattern_key", "export/streaming_merge.py", PEFT),
    Internal("bitsandbytes", "bitsandbytes.cextension.ErrorHandlerMockBNBNativeLibrary", "validation.py", BITSANDBYTES),
    Internal("bitsandbytes", "bitsandbytes.cextension.lib", "validation.py", BITSANDBYTES),
    Internal("bitsandbytes", "bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu", "quantization.py", BITSANDBYTES),
)
"""The private upstream names bt-peft uses (the lead's review list for a version bump)."""


class UpstreamChangedError(RuntimeError):
    """A private name of transformers, peft or bitsandbytes that bt-peft relies on is gone, has changed, or is used
    with a version of its package outside the tested range."""


def internal(package: str, name: str) -> Internal:
    """The `INTERNALS` entry of `package` whose dotted name is `name` or ends with `.name`.

    Raises:
        `LookupError` when none is listed: every private name bt-peft uses must be listed with its tested range.
    """
    for entry in INTERNALS:
        if entry.package == package and (entry.name == name or entry.name.endswith(f".{name}")):
            return entry
    raise LookupError(f"{package} internal {name!r} is not listed in bt_peft.upstream.INTERNALS")


def tested_range(entry: Internal) -> str:
    """The tested range of `entry` as text, e.g. "transformers 5.17 to 5.24"."""
    oldest, newest = entry.tested
    return f"{entry.package} {oldest}" if oldest == newest else f"{entry.package} {oldest} to {newest}"


def upstream_error(entry: Internal, problem: str) -> UpstreamChangedError:
    """The error for `entry` with `problem` (e.g. "it is gone"), naming the installed version and the tested range."""
    return UpstreamChangedError(
        f"bt-peft relies on {entry.name} of {entry.package} (in bt_peft/{entry.used_in}), tested with "
        f"{tested_range(entry)}, but with the installed {entry.package} {version(entry.package)} {problem}: install "
        f"a tested version (pyproject.toml declares the ranges) or a bt-peft release that supports it"
    )


def require_tested(package: str, name: str) -> Internal:
    """The `INTERNALS` entry of `name`, after checking that the installed `package` is within its tested range.

    Raises:
        `UpstreamChangedError` when it is not, unless `ALLOW_UNTESTED_ENV` is "1" (then a `UserWarning`).
    """
    entry = internal(package, name)
    installed = Version(version(package)).release[:2]
    oldest, newest = (Version(v).release[:2] for v in entry.tested)
    if not oldest <= installed <= newest:
        if os.environ.get(ALLOW_UNTESTED_ENV) != "1":
            raise upstream_error(entry, f"it is untested ({ALLOW_UNTESTED_ENV}=1 tries it anyway)")
        warnings.warn(f"{entry.name} of {entry.package}: tested with {tested_range(entry)}, used with "
                      f"{entry.package} {version(entry.package)} ({ALLOW_UNTESTED_ENV}=1)", stacklevel=3)
    return entry


def require_parameter(function: Any, package: str, name: str) -> None:
    """`function` (e.g. `Trainer.save_model`) must still take the private parameter that ends the dotted `name`
    listed in `INTERNALS` (e.g. "transformers.Trainer.save_model._internal_call"), in a tested version of `package`.

    Raises:
        `UpstreamChangedError` naming `package`, its installed version and the tested range.
    """
    entry = require_tested(package, name)
    if name.rsplit(".", 1)[-1] not in inspect.signature(function).parameters:
        raise upstream_error(entry, "it is gone")


def require_attributes(obj: Any, names: tuple[str, ...], owner: str, package: str) -> None:
    """`obj` (e.g. a layer after `__init__`) must have each attribute of `names`, which `owner` (the upstream class,
    for the message) sets, in a tested version of `package`."""
    for name in names:
        entry = require_tested(package, name)
        if not hasattr(obj, name):
            raise upstream_error(entry, f"{owner} does not set it")


def import_internal(package: str, module: str, name: str) -> Any:
    """`module.name`, a private name of `package` listed in `INTERNALS`, in a tested version of `package`.

    Raises:
        `UpstreamChangedError` when the installed version is untested or the name is gone.
    """
    entry = require_tested(package, f"{module}.{name}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise upstream_error(entry, "it is gone") from None
