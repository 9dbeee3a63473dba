"""Every private upstream name bt-peft uses is listed with its tested range, is there in the installed versions, and
fails loudly (package, installed version, tested range) when it is gone or the installed version is untested."""

import importlib
from importlib.metadata import version

import pytest
from transformers import Trainer

from bt_peft import upstream
from bt_peft.upstream import (INTERNALS, Internal, UpstreamChangedError, import_internal, require_attributes,
                              require_parameter)
from conftest import tiny_llama_config


def test_every_listed_internal_is_there_in_the_installed_versions(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification

    from bt_peft import AutoModelForBradleyTerry

    layer = bnb.nn.Linear4bit(8, 8)
    AutoModelForBradleyTerry.from_config(tiny_llama_config(64)).save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)  # from_pretrained sets _weight_conversions
    for entry in INTERNALS:
        module, _, name = entry.name.rpartition(".")
        if entry.name == "transformers.Trainer.save_model._internal_call":
            require_parameter(Trainer.save_model, "transformers", entry.name)
        elif entry.name == "bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu":
            require_attributes(layer, (name,), "bitsandbytes.nn.Linear4bit", "bitsandbytes")
        elif entry.name == "transformers.PreTrainedModel._weight_conversions":
            require_attributes(loaded, (name,), "transformers.PreTrainedModel.from_pretrained", "transformers")
        elif entry.checked:
            assert import_internal(entry.package, module, name) is not None, entry
        else:  # an attribute read directly: its class must at least be importable
            owner_module, _, owner = module.rpartition(".")
            assert hasattr(importlib.import_module(owner_module), owner), entry


def test_a_name_not_listed_is_refused():
    with pytest.raises(LookupError, match="not listed in bt_peft.upstream.INTERNALS"):
        import_internal("transformers", "transformers.trainer_pt_utils", "set_rng_state_for_device")


def listed(monkeypatch, name: str, tested: tuple[str, str]) -> Internal:
    entry = Internal("transformers", name, "training/trainer.py", tested)
    monkeypatch.setattr(upstream, "INTERNALS", (entry,))
    return entry


def test_an_untested_version_raises_naming_package_installed_version_and_range(monkeypatch):
    listed(monkeypatch, "transformers.trainer_utils.PREFIX_CHECKPOINT_DIR", ("4.40", "4.57"))
    with pytest.raises(UpstreamChangedError, match=rf"tested with transformers 4\.40 to 4\.57, but with the installed "
                                                   rf"transformers {version('transformers')} it is untested"):
        import_internal("transformers", "transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR")


def test_an_untested_version_is_a_warning_when_allowed_and_a_gone_name_still_fails(monkeypatch):
    listed(monkeypatch, "transformers.trainer_utils.PREFIX_CHECKPOINT_DIR", ("4.40", "4.57"))
    monkeypatch.setenv(upstream.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match=rf"tested with transformers 4\.40 to 4\.57, used with transformers "):
        assert import_internal("transformers", "transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR") == "checkpoint"
    listed(monkeypatch, "transformers.trainer_utils.no_such_helper", ("4.40", "4.57"))
    with pytest.warns(UserWarning), pytest.raises(UpstreamChangedError, match="it is gone"):
        import_internal("transformers", "transformers.trainer_utils", "no_such_helper")


def test_the_installed_version_within_the_range_passes(monkeypatch):
    installed = ".".join(version("transformers").split(".")[:2])
    listed(monkeypatch, "transformers.trainer_utils.PREFIX_CHECKPOINT_DIR", ("5.0", installed))
    assert import_internal("transformers", "transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR") == "checkpoint"


@pytest.mark.parametrize("check", [
    lambda: import_internal("transformers", "transformers.no_such_module", "helper"),
    lambda: import_internal("transformers", "transformers.trainer_utils", "no_such_helper"),
    lambda: require_parameter(Trainer.evaluate, "transformers", "transformers.Trainer.evaluate._no_such_parameter"),
    lambda: require_attributes(object(), ("_no_such_attribute",), "transformers.Trainer", "transformers"),
])
def test_a_gone_internal_raises_naming_the_versions(monkeypatch, check):
    installed = ".".join(version("transformers").split(".")[:2])
    entries = tuple(Internal("transformers", name, "trainer.py", ("5.0", installed)) for name in (
        "transformers.no_such_module.helper", "transformers.trainer_utils.no_such_helper",
        "transformers.Trainer.evaluate._no_such_parameter", "transformers.Trainer._no_such_attribute"))
    monkeypatch.setattr(upstream, "INTERNALS", entries)
    with pytest.raises(UpstreamChangedError, match=rf"tested with transformers 5\.0 to {installed}, but with the "
                                                   rf"installed transformers {version('transformers')} "):
        check()
