#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on the newest releases within pyproject.toml's ranges.
# With --oldest: set up .venv-oldest (scripts/setup.sh --oldest) and run the core subset (`pytest -m core`, the tests
# that tests/conftest.py's CORE_TEST_FILES lists) on the oldest supported versions. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.venv
setup_args=()
selection=(tests)
if [[ "${1:-}" == "--oldest" ]]; then
    shift
    venv=.venv-oldest
    setup_args=(--oldest)
    selection=(-m core tests)
fi
bash scripts/setup.sh "${setup_args[@]}"
status=0
"$venv/bin/python" -m pytest -q "${selection[@]}" "$@" || status=$?
if [[ $status -eq 5 ]]; then  # pytest's "no tests collected": a selection that matches nothing proves nothing
    echo "error: pytest collected no tests for: ${selection[*]} $*" >&2
    exit 1
fi
exit "$status"
