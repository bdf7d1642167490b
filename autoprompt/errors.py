"""The one exception type for a user's mistake.

Anything a user can fix (a bad file, wrong labels, a missing case, wrong channels, a missing model
folder) raises :class:`AutoPromptError` with a one-line message that names the file and the fix.
The CLI prints it as ``autoprompt: error: <message>`` and exits with status 2, without a traceback.
"""

from __future__ import annotations


class AutoPromptError(Exception):
    """A user-fixable problem; ``str(error)`` is one line naming the file and the fix."""
