"""What a program built on bt-peft shows on its terminal: the records of the `bt_peft` loggers (progress at INFO,
such as the trainable parameter count and each shard a merge writes, and every warning), one bare message a line,
on stderr. Library code only logs; the `bt-peft` command, the recipe or a notebook calls `show_logs`."""

import logging
import sys

PACKAGE_LOGGER = "bt_peft"
"""The parent of every bt-peft module's logger (`logging.getLogger(__name__)`)."""


class StderrHandler(logging.Handler):
    """Writes each record's message to the `sys.stderr` of the moment (a stream captured or replaced after
    `show_logs`, as pytest and notebooks do, still receives it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging's contract: a failing handler reports through handleError, never raises
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> None:
    """Show the `bt_peft` loggers' records at `level` and above on stderr, as bare messages; calling it again only
    changes the level (one handler per process). Records still propagate to the root logger, so a program that
    configures logging itself does not need this."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(handler, StderrHandler) for handler in logger.handlers):
        logger.addHandler(StderrHandler())
