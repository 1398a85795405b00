"""The project's exception for bad input, and the hook that makes its message the last line.

``InputError`` (a ``ValueError``) is raised for anything a user can fix in what they handed us: a
datalist, an image or label file, a command-line key. Its message names the file or key and the
problem. The subclasses keep the built-in type a caller may already catch (``KeyError``,
``FileNotFoundError``, ``OSError``).

MONAI wraps every exception raised while a config component is built in ``RuntimeError("Failed
to instantiate component ...")`` and the user reads a 20-99-frame trace whose last line is that
generic message. :func:`install_excepthook` (installed when ``monai_bundles`` is imported, which
every bundle config does) prints the trace as usual and then, when an ``InputError`` is in the
exception chain, the innermost one's message last as ``error: <message>``. Other exceptions keep
Python's normal output.
"""

import os
import re
import sys
from typing import Optional

__all__ = [
    "InputError",
    "InputKeyError",
    "MissingInputError",
    "UnreadableInputError",
    "find_input_error",
    "input_error_message",
    "install_excepthook",
]


class InputError(ValueError):
    """Bad input a user can fix; the message names the file or key and what is wrong."""

    @property
    def message(self) -> str:
        """The message as given (``KeyError`` would quote it in ``str``)."""
        return str(self.args[0]) if self.args else self.__class__.__name__


class InputKeyError(InputError, KeyError):
    """A required key (datalist split, item key, h5 dataset) is missing."""

    def __str__(self) -> str:
        return self.message


class MissingInputError(InputError, FileNotFoundError):
    """A file named by the input (datalist, image, label, checkpoint) does not exist."""


class UnreadableInputError(InputError, OSError):
    """A file exists but cannot be read (corrupt, truncated, wrong format)."""


# an InputError as a line of a traceback formatted into another exception's message (what
# torch's DataLoader re-raises for an exception in a worker process)
_FORMATTED = re.compile(r"^sslseg\.errors\.\w+: (.+)$", re.MULTILINE)


def find_input_error(exc: Optional[BaseException]) -> Optional[InputError]:
    """The innermost ``InputError`` in ``exc``'s chain (``__cause__``/``__context__``), or None."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InputError):
            found = exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return found


def input_error_message(exc: Optional[BaseException]) -> Optional[str]:
    """The message of the innermost ``InputError`` of ``exc``'s chain, also when it was raised
    in a DataLoader worker (then only its formatted traceback is in the chain); else None."""
    err = find_input_error(exc)
    if err is not None and not _FORMATTED.search(err.message):
        return err.message
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        matches = _FORMATTED.findall(str(exc))
        found = matches[0] if matches else found  # the first one a worker's trace names
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return found


def _hook(previous):
    def excepthook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        message = input_error_message(exc)
        if message is not None:
            sys.stderr.write(f"\nerror: {message}\n")
            sys.stderr.flush()
            sys.stdout.flush()
            # Exit now, status 1: worker threads left running by the failed step (MONAI's
            # CacheDataset stops its thread pool without joining it) can otherwise abort the
            # interpreter's shutdown (SIGABRT, "terminate called without an active exception"),
            # turning a clear input error into a crash whose last line is not this message.
            os._exit(1)

    excepthook.sslseg_input_error_hook = True
    return excepthook


def install_excepthook() -> None:
    """Make an ``InputError``'s message the last line of an uncaught exception (idempotent)."""
    if not getattr(sys.excepthook, "sslseg_input_error_hook", False):
        sys.excepthook = _hook(sys.excepthook)
