"""Progress bars for long work (pair inference, alignment), shown only on a terminal."""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr; hidden when stderr is not a terminal or ``EASI3R_NO_PROGRESS`` is set."""
    disable = True if os.environ.get("EASI3R_NO_PROGRESS") else None  # None: tqdm hides it off a TTY
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False)
