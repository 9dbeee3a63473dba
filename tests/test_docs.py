"""The documentation site: `mkdocs build --strict`, and every Python and shell example in docs/*.md.

A ```python or ```bash block is executed (in a fresh process, in a temporary directory, on the embedded SmolLM2
model and the demo data), unless the line before it is a marker `<!-- example: REASON -->` with a REASON from
`CHECK_ONLY_REASONS`: such a block needs what CI does not have, so it is only checked: Python is parsed and each name
it imports from `bt_peft` (and the other installed packages) must exist; in shell, each `--flag` given to
`bt-peft <command>` or to the recipe must appear in that command's `--help`, and each repository path it names must
exist. A renamed function, flag or file breaks these tests, not the reader.
"""

import ast
import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHECK_ONLY_REASONS = {
    "gpu": "needs a CUDA GPU (or a tool that does: vLLM, OpenRLHF)",
    "hub": "downloads a model or data set from the Hugging Face Hub",
    "slow": "takes minutes (creates a venv, runs the whole suite)",
    "trained": "needs the checkpoints that `bash scripts/demo.sh` trains (outputs/demo-smollm2) or rm/ of a real run",
    "server": "starts a server that runs until stopped, or talks to one",
}
# Packages a check-only block may import without having them installed here (they need a GPU).
NOT_INSTALLED_HERE = {"vllm", "openrlhf"}
REPO_PATH = re.compile(r"^(recipes|scripts|benchmarks|notebooks|bt_peft|tests|constraints)/[\w./-]*$")
MARKER = re.compile(r"^<!-- example: (\S+) -->$")
FENCE = re.compile(r"^```(python|bash)\s*$")
EXAMPLE_TIMEOUT_S = 180


@dataclass(frozen=True)
class Example:
    """One fenced block of a docs page: where it is, its language, its marker reason (None: executed), its code."""

    page: str
    line: int
    language: str
    reason: str | None
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def collect_examples() -> list[Example]:
    """Every ```python and ```bash block of docs/*.md, with the marker of the line before it, in page order."""
    examples = []
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            fence = FENCE.match(lines[index])
            if not fence:
                index += 1
                continue
            end = lines.index("```", index + 1)
            previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
            marker = MARKER.match(previous.strip())
            code = "\n".join(lines[index + 1 : end]) + "\n"
            examples.append(Example(page.name, index + 1, fence.group(1), marker.group(1) if marker else None, code))
            index = end + 1
    return examples


EXAMPLES = collect_examples()
EXECUTED = [example for example in EXAMPLES if example.reason is None]
CHECKED = [example for example in EXAMPLES if example.reason is not None]


def example_env() -> dict[str, str]:
    """This checkout first on the import path (also for `bt-peft`), this interpreter's scripts first on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"
    return env


def test_every_marker_names_a_known_reason():
    unknown = [f"{e.name}: {e.reason}" for e in CHECKED if e.reason not in CHECK_ONLY_REASONS]
    assert not unknown, f"unknown example markers (known: {sorted(CHECK_ONLY_REASONS)}): {unknown}"
    assert len(EXECUTED) >= 8, f"only {len(EXECUTED)} docs examples are executed"


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=example_env() | {"NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    import bt_peft

    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in bt_peft.__all__ if not re.search(rf'id="bt_peft\.[\w.]*\.{name}"', reference)]
    assert not missing, f"the API reference renders no entry for {missing}"


@pytest.mark.parametrize("example", EXECUTED, ids=lambda example: example.name)
def test_executed_example(example, tmp_path):
    if example.language == "python":
        script = tmp_path / "example.py"
        script.write_text(example.code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", example.code]
    result = subprocess.run(
        command, cwd=tmp_path, env=example_env(), capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S
    )
    assert result.returncode == 0, (
        f"docs example {example.name} failed (exit {result.returncode}):\n{example.code}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )


def imported_names(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) for each `from module import name` and (module, None) for each `import module`."""
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imports += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            imports += [(alias.name, None) for alias in node.names]
    return imports


def check_python(code: str) -> list[str]:
    """Problems of a check-only Python block: syntax, and imported modules or names that do not exist."""
    problems = []
    for module, name in imported_names(ast.parse(code)):
        if module.split(".")[0] in NOT_INSTALLED_HERE:
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None:
            problems.append(f"module {module} is not installed")
        elif name is not None and not hasattr(importlib.import_module(module), name):
            problems.append(f"{module} has no {name}")
    return problems


@functools.cache
def cli_help(command: str) -> str:
    """The text of `bt-peft <command> --help`."""
    result = subprocess.run(
        [sys.executable, "-m", "bt_peft.cli", command, "--help"],
        cwd=ROOT, env=example_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"bt-peft {command} --help failed: {result.stderr}"
    return result.stdout


def shell_commands(code: str) -> list[list[str]]:
    """The words of each command of a shell block: continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command = []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def flags_after(words: list[str], start: int) -> list[str]:
    """The `--flag` names among `words[start:]`, optional `[--flag value]` and `--flag=value` forms included."""
    flags = []
    for word in words[start:]:
        word = word.strip("[]")
        if word.startswith("--"):
            flags.append(word.split("=")[0])
    return flags


def check_shell(code: str) -> list[str]:
    """Problems of a check-only shell block: unknown `bt-peft`/recipe flags, repository paths that do not exist."""
    problems = []
    for words in shell_commands(code):
        for word in words:
            path = word.split("=")[-1].strip("[]")
            if REPO_PATH.match(path) and not (ROOT / path).exists():
                problems.append(f"{path} does not exist")
        checks = []
        if "bt-peft" in words and words.index("bt-peft") + 1 < len(words):
            position = words.index("bt-peft") + 1
            checks.append((words[position], position + 1))
        if "recipes/qlora_llama3.py" in words:
            checks.append(("train", words.index("recipes/qlora_llama3.py") + 1))
        for command, start in checks:
            known = set(re.findall(r"--[\w-]+", cli_help(command)))
            problems += [f"bt-peft {command} has no {flag}" for flag in flags_after(words, start) if flag not in known]
    return problems


@pytest.mark.parametrize("example", CHECKED, ids=lambda example: f"{example.name}[{example.reason}]")
def test_check_only_example(example):
    problems = check_python(example.code) if example.language == "python" else check_shell(example.code)
    assert not problems, f"docs example {example.name}: {problems}\n{example.code}"


def test_readme_examples_are_in_the_docs():
    """The README is the front door: each of its code blocks is one the docs show (and this file tests)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```(?:python|bash)\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)
    docs_code = {example.code for example in EXAMPLES}
    assert blocks, "the README shows no command"
    missing = [block for block in blocks if block not in docs_code]
    assert not missing, f"README code blocks that no docs page shows: {missing}"


def test_shell_check_catches_a_renamed_flag_and_a_missing_file():
    assert check_shell("bt-peft plan llama-3-8b --batch_size 4\n") == []
    assert check_shell("bt-peft plan llama-3-8b --batch 4 \\\n  --gpu_gb 24  # comment --nope\n") == [
        "bt-peft plan has no --batch"
    ]
    assert check_shell("python recipes/qlora_llama3.py --config recipes/configs/nope.yaml --learning_rat 1\n") == [
        "recipes/configs/nope.yaml does not exist",
        "bt-peft train has no --learning_rat",
    ]


def test_python_check_catches_a_renamed_name():
    assert check_python("from bt_peft import score, plan_memory\n") == []
    assert check_python("from bt_peft import score_texts\nimport not_a_package_anywhere\n") == [
        "bt_peft has no score_texts",
        "module not_a_package_anywhere is not installed",
    ]
