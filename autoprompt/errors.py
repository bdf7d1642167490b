"""The one exception type for a user's mistake.

Anything a user can fix (a bad file, wrong labels, a missing case, wrong channels, a missing model
folder) raises :class:`AutoPromptError` with a one-line message that names the file and the fix.
The CLI prints it as ``autoprompt: error: <message>`` and exits with status 2, without a traceback.
:func:`short_list` names many cases in such a line (and in notes).
"""

from __future__ import annotations

from collections.abc import Sequence


class AutoPromptError(Exception):
    """A user-fixable problem; ``str(error)`` is one line naming the file and the fix."""


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, then how many more there are: ``"a, b, ... (3 more)"``."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"
