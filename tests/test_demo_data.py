"""The demo preference set shipped in `bt_peft/demo_data/` is what its build script, `scripts/make_demo_data.py`,
writes (the script lives outside the package; the two jsonl files are the package data)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_demo_files_are_what_the_build_script_makes():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
