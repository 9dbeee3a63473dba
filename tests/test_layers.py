"""The package's architecture, checked from the source: layers, no import cycles, no private cross-module imports,
and a light `import bt_peft` / `bt-peft --help`.

Layers, bottom to top (an import may only point down, or sideways within the core or within one group):

- core: the flat modules `bt_peft.<module>` listed in `CORE`;
- groups: `bt_peft.training`, `bt_peft.export`, `bt_peft.evaluation` (each imports the core and itself only);
- served: `bt_peft.serving` (the reward server, built on `evaluation`: imports the core, the groups and itself);
- top: the command line, the recipe and its end (`bt_peft.finish`), and the public API (`bt_peft/__init__.py`).
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bt_peft"
CORE = {"reward", "loss", "modeling", "tokenizer", "data", "validation", "safe_loading", "atomic", "quantization", "embedded",
        "upstream", "console", "activation_checkpointing"}
GROUPS = {"training", "export", "evaluation"}
SERVED = {"serving"}
TOP = {"bt_peft", "bt_peft.cli", "bt_peft.recipe", "bt_peft.finish"}


def module_name(path: Path) -> str:
    parts = ["bt_peft", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> tuple[int, str]:
    """(0, "core") | (1, group) | (2, "serving") | (3, "top"); an undeclared module fails the test that calls this."""
    if module in TOP:
        return 3, "top"
    parts = module.split(".")
    if parts[1] in SERVED:
        return 2, parts[1]
    if parts[1] in GROUPS:
        return 1, parts[1]
    assert len(parts) == 2 and parts[1] in CORE, f"{module} is in no declared layer: add it to CORE, a group or TOP"
    return 0, "core"


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported bt_peft module, names taken from it, line) for every import in `module`, at any depth (imports
    inside functions and under TYPE_CHECKING count)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == "bt_peft"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "bt_peft":
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{source}.{name}" for name in names if f"{source}.{name}" in MODULES]
            found += [(sub, [], node.lineno) for sub in submodules]
            found.append((source, [name for name in names if f"{source}.{name}" not in MODULES], node.lineno))
    return found


def test_every_import_points_down_the_layers():
    upward = []
    for module in MODULES:
        (rank, group) = layer(module)
        for target, _, line in imports(module):
            if target == module or target not in MODULES:
                continue
            target_rank, target_group = layer(target)
            sideways_ok = target_group == group and group != "top" or group == "top"
            if target_rank > rank or (target_rank == rank and not sideways_ok):
                upward.append(f"{module}:{line} imports {target} ({target_group} from {group})")
    assert not upward, "\n".join(upward)


def test_no_private_names_are_imported_across_modules():
    private = [f"{module}:{line} imports {name} from {target}" for module in MODULES
               for target, names, line in imports(module) for name in names
               if name.startswith("_") and target != module]
    assert not private, "\n".join(private)


def test_there_are_no_import_cycles():
    graph = {module: sorted({target for target, _, _ in imports(module) if target in MODULES and target != module})
             for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_import_bt_peft_and_the_cli_parser_stay_light():
    code = ("import sys, bt_peft, bt_peft.cli; bt_peft.cli.build_parser(); "
            "print(sorted(m for m in ('trl', 'peft', 'matplotlib', 'torch', 'bitsandbytes', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_public_names_resolve_lazily_and_are_listed():
    import bt_peft

    assert set(bt_peft.__all__) <= set(dir(bt_peft))
    for name in ("PreferenceDataError", "TrainingSetupError", "NonFiniteLossError", "PickleCheckpointError",
                 "load_reward_model", "add_lora", "PackedPairCollator"):
        assert name in bt_peft.__all__ and getattr(bt_peft, name).__name__ == name
