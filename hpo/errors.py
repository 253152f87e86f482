"""The one exception type for problems a user can fix (bad study file, data, URL...).

The CLI maps it once to a single line on stderr and exit code 1; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["HpoError"]


class HpoError(Exception):
    """A problem with the user's input or environment, worded so it names the fix."""
