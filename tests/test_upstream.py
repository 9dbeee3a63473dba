"""The checks of upstream internals fail loudly, naming the package, its installed and its tested version."""

from importlib.metadata import version

import pytest

from bt_peft.upstream import TESTED, UpstreamChangedError, import_internal, require_attributes, require_call, require_methods


class Upstream:
    def hook(self, output_dir, state_dict=None):
        pass

    def caller(self):
        self.hook("dir")


def expected_message(package: str) -> str:
    return rf"tested with {package} {TESTED[package]}\.x, but the installed {package} {version(package)} does not have it"


def test_present_internals_pass():
    require_methods(Upstream, {"hook": ("output_dir", "state_dict")}, "trl")
    require_call(Upstream, "caller", ("hook",), "trl")
    require_attributes(Upstream(), ("hook",), "Upstream", "trl")
    assert import_internal("trl", "trl", "RewardTrainer").__name__ == "RewardTrainer"


@pytest.mark.parametrize("check", [
    lambda: require_methods(Upstream, {"gone": ()}, "trl"),
    lambda: require_methods(Upstream, {"hook": ("checkpoint",)}, "trl"),  # renamed parameter
    lambda: require_call(Upstream, "caller", ("other_hook",), "trl"),
    lambda: require_attributes(Upstream(), ("_metrics",), "Upstream.__init__", "trl"),
    lambda: import_internal("trl", "trl.no_such_module", "helper"),
    lambda: import_internal("trl", "trl", "no_such_helper"),
])
def test_a_moved_internal_raises_naming_the_versions(check):
    with pytest.raises(UpstreamChangedError, match=expected_message("trl")):
        check()

