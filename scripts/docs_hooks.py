"""MkDocs hook (mkdocs.yml `hooks:`): the API reference must cover `bt_peft.__all__`, each name with a docstring.

Read from the source with `ast` (no import, so the docs build needs no torch). On a public name without a
docstring, or one that `docs/reference.md` does not render with `::: bt_peft.<module>.<name>`, the build stops
with a `PluginError` naming it.
"""

import ast
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent


def public_names() -> dict[str, str]:
    """`bt_peft._PUBLIC` read from `bt_peft/__init__.py`: public name -> defining module (relative to `bt_peft`)."""
    tree = ast.parse((ROOT / "bt_peft" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_PUBLIC" for t in node.targets):
            return ast.literal_eval(node.value)
    raise PluginError("bt_peft/__init__.py defines no _PUBLIC mapping")


def missing_docstring(module: str, name: str) -> str | None:
    """None when `name` is defined at the top of `bt_peft.<module>` with a docstring, else the problem in words."""
    path = ROOT / "bt_peft" / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return None if ast.get_docstring(node) else f"{name} ({path.relative_to(ROOT)}) has no docstring"
    return f"{name} is not defined at the top of {path.relative_to(ROOT)}"


def on_pre_build(config) -> None:
    """Fail the build on a public name without a docstring or without its entry in the API reference."""
    reference = (Path(config["docs_dir"]) / "reference.md").read_text(encoding="utf-8")
    problems = []
    for name, module in sorted(public_names().items()):
        problem = missing_docstring(module, name)
        if problem:
            problems.append(problem)
        if f"::: bt_peft.{module}.{name}\n" not in reference:
            problems.append(f"docs/reference.md lacks '::: bt_peft.{module}.{name}'")
    if problems:
        raise PluginError("API reference: " + "; ".join(problems))
