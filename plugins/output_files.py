"""Files in an output folder that its writer did not write.

``--resume`` and ``--replay`` remove an output file that a killed run cut short; only
the end of a file can be missing. A whole file of another shape (an eval summary saved
beside the predictions) is the user's: it stays, and the run stops naming it.
"""

from __future__ import annotations

from framework import InputError, Writer, scheme_of


def not_written_here(writer: Writer, name: str, path: str, why: str) -> InputError:
    """The one line naming ``path`` (as the filesystem gives it) and why it is not
    output of the ``name`` writer."""
    return InputError(
        f"--resume/--replay: {scheme_of(writer.path)}{path} is not a file the {name} writer "
        f"wrote ({why}) - move it out of {writer.path}, then run again"
    )
