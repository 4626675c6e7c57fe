"""The ``prunekit`` command line: ``prunekit prune|eval|verify|bench ...`` (also ``python -m prunekit``).

A thin argparse layer: each subcommand lives in its own module under ``prunekit/cli/`` exposing
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

What :func:`main` guarantees, whatever the input:

* a user error prints ONE line ``prunekit: error: <problem>. Fix: <fix>`` on stderr and returns 2 -- a bad flag
  value (argparse), any :class:`~prunekit.errors.PrunekitError`, and the usual user-caused exceptions (a missing,
  unreadable or non-UTF-8 file, a broken JSON/YAML file, a damaged safetensors file, ``OSError`` from loading);
* a bug in prunekit prints ``prunekit: internal error: <type>: <message> (run again with --debug for the
  traceback; please report it)`` and returns 1; Ctrl-C returns 130;
* ``--debug`` (before or after the subcommand) re-raises instead, with the full traceback;
* ``-v/--verbose`` shows the ``prunekit`` loggers (the runner's per-block lines) on stderr (``-vv``: debug);
* a ``--device`` flag is checked (:func:`prunekit.solvers.options.parse_device`) before the subcommand runs, so
  ``--device gpu`` or ``--device cuda`` without CUDA fail before any model is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Optional, Sequence

from ..errors import PrunekitError

USER_OSERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ``prunekit: error: ...`` (exit 2), like every other error."""

    def error(self, message: str):  # noqa: D102 -- argparse's hook
        self.exit(2, f"prunekit: error: {message}. Fix: see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="prunekit",
        description="Post-training pruning of LLMs as optimization: verify solvers, prune models, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    _add_global_flags(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    for subparser in sub.choices.values():  # the global flags also work after the subcommand
        _add_global_flags(subparser, argparse.SUPPRESS)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default) -> None:
    """``--debug`` and ``-v``; subparsers get them with SUPPRESS defaults so they never reset the global value."""
    taken = set(parser._option_string_actions)
    if "--debug" not in taken:
        parser.add_argument("--debug", action="store_true", default=default if default is not None else False,
                            help="on an error, show the full Python traceback")
    if not taken & {"-v", "--verbose"}:
        parser.add_argument("-v", "--verbose", action="count", default=default if default is not None else 0,
                            help="show prunekit's log on stderr (-v: per-block progress, -vv: debug)")


def user_error_message(exc: BaseException) -> Optional[str]:
    """The one-line message for an exception a user's input or environment caused, or None for a prunekit bug."""
    if isinstance(exc, PrunekitError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return (f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: convert it to UTF-8 "
                f"(e.g. iconv -t utf-8), or pass another file.")
    if isinstance(exc, USER_OSERRORS):
        what = {FileNotFoundError: "not found", PermissionError: "permission denied",
                IsADirectoryError: "is a folder, not a file", NotADirectoryError: "is not a folder",
                FileExistsError: "already exists"}.get(type(exc), exc.strerror)
        where = exc.filename if exc.filename is not None else str(exc)
        return f"{where}: {what}. Fix: check the path and its permissions."
    kind = f"{type(exc).__module__}.{type(exc).__name__}"
    if kind == "json.decoder.JSONDecodeError":
        return f"a JSON file is malformed ({exc}). Fix: repair the file (or regenerate it)."
    if kind.startswith("yaml.") and type(exc).__name__.endswith("Error"):
        return f"a YAML file is malformed ({' '.join(str(exc).split())}). Fix: repair the file."
    if type(exc).__name__ == "SafetensorError":
        return f"a safetensors file cannot be read ({exc}). Fix: the file is damaged or truncated; download or " \
               f"write it again."
    if isinstance(exc, OSError):  # from transformers / huggingface_hub / safetensors loading, or the disk
        return f"{' '.join(str(exc).split()) or type(exc).__name__}. Fix: check the model path, the files in it " \
               f"and the free disk space."
    if isinstance(exc, ValueError) and str(exc).startswith(("invalid literal for", "could not convert")):
        return f"{exc}. Fix: pass a number where a number is expected."
    return None


def _check_device(args: argparse.Namespace) -> None:
    device = getattr(args, "device", None)
    if isinstance(device, str):
        from ..solvers.options import parse_device

        parse_device(device, what="--device")


class _Verbosity:
    """Route the ``prunekit`` loggers to stderr at INFO (``-v``) or DEBUG (``-vv``) for one call of main."""

    def __init__(self, level: int):
        self.level = level
        self.logger = logging.getLogger("prunekit")
        self.handler = None

    def __enter__(self):
        if self.level > 0:
            self.saved = self.logger.level
            self.handler = logging.StreamHandler(sys.stderr)
            self.handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            self.logger.addHandler(self.handler)
            self.logger.setLevel(logging.INFO if self.level == 1 else logging.DEBUG)
        return self

    def __exit__(self, *exc):
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            self.logger.setLevel(self.saved)
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``prunekit`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a bad flag (2, message already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    with _Verbosity(int(getattr(args, "verbose", 0) or 0)):
        try:
            _check_device(args)
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            if debug:
                raise
            print("prunekit: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 -- the one place every error becomes an exit status
            if debug:
                raise
            message = user_error_message(exc)
            if message is not None:
                print(f"prunekit: error: {' '.join(message.split())}", file=sys.stderr)
                return 2
            text = " ".join(str(exc).split())
            print(f"prunekit: internal error: {type(exc).__name__}: {text[:500]} (run again with --debug for the "
                  f"traceback; please report it)", file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
