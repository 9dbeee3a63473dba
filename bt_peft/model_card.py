"""`bt_peft.model_card`, the import path the README shows, is `bt_peft.export.model_card` itself (the same module
object, so every name and any patch of it are shared)."""

import sys

from .export import model_card

sys.modules[__name__] = model_card
