"""User-facing errors.

Every problem a user can cause (a bad file, a bad recipe, a bad plug-in name) is raised as an
:class:`Easi3RError` whose message is one line naming the file or key and the problem. The CLI prints
that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """Join a (third-party) message's lines: the CLI prints every error as one line."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


class Easi3RError(Exception):
    """A problem with the user's input: printed as one line by the CLI, exit status 2."""

    exit_code = 2


class CheckpointError(Easi3RError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class ArchitectureError(CheckpointError):
    """A checkpoint of another network family than the recipe's backbone (e.g. VGGT weights given to a
    DUSt3R recipe); the run names the recipe in front of the loader's message."""


class FrameError(Easi3RError):
    """Frames that cannot be read: missing, empty, corrupt, too few."""


class RecipeError(Easi3RError):
    """A recipe or override that does not validate."""


class PluginError(Easi3RError):
    """A plug-in that is unknown, duplicated or broken."""


class FormulaError(Easi3RError):
    """A mask formula that does not parse or evaluate; the message points at the token."""


class GeometryError(Easi3RError):
    """A scene that cannot be aligned (degenerate points, no valid pixels, bad known intrinsics)."""
