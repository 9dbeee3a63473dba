"""Where the benchmarks read real preference data by default: the full HH-RLHF harmless-base sample beside the
project, `../shared/data/hh-rlhf-harmless-base` (`train.jsonl` 1,112 pairs, `dev.jsonl` 200; raw `chosen`/`rejected`
dialogues). A clone without it passes `--hh-dir`/`--data`. The tests use their own 100/20-pair slice of it
(`tests/data/hh-rlhf-harmless-base`)."""

from pathlib import Path

SHARED_HH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base"
