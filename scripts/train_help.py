"""Write `bt_peft/train_help.txt`: the text of `bt-peft train --help`, which the command prints without importing
TRL and torch (the recipe's fields are TRL's dataclasses, whose import alone takes seconds).

    python scripts/train_help.py            # after changing the recipe's arguments or upgrading TRL/transformers
    python scripts/train_help.py --check    # exit status 1 when the file differs from the recipe's live help

The text is the recipe's own `TrlParser` help (`bt_peft.recipe.main(["--help"], prog="bt-peft train")`), wrapped at
80 columns; tests/test_cli.py runs the check.
"""

import contextlib
import io
import os
import sys
from pathlib import Path

os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal; the stored text is wrapped at 80 columns

TRAIN_HELP = Path(__file__).resolve().parents[1] / "bt_peft" / "train_help.txt"


def live_help() -> str:
    """`bt-peft train --help` as the recipe's parser prints it."""
    from bt_peft.recipe import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"], prog="bt-peft train")
    return out.getvalue()


if __name__ == "__main__":
    text = live_help()
    if "--check" in sys.argv[1:]:
        stale = not TRAIN_HELP.is_file() or TRAIN_HELP.read_text(encoding="utf-8") != text
        print(f"{TRAIN_HELP} is {'stale: run python scripts/train_help.py' if stale else 'current'}")
        sys.exit(int(stale))
    TRAIN_HELP.write_text(text, encoding="utf-8")
    print(f"wrote {TRAIN_HELP}")
