"""Yes/no settings as command-line flags, the same in ``usage-shipper`` and
``usage-billing``: ``--x`` sets True, ``--no-x`` False, and ``--x true|false`` (the older
spelling) still works. The environment variables keep taking true/false."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


class FlagAction(argparse.Action):
    """``--x`` / ``--no-x``, each optionally followed by true or false."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        negated = bool(option_string and option_string.startswith("--no-"))
        if values is None:
            setattr(namespace, self.dest, not negated)
            return
        try:
            value = parse_bool(str(values))
        except ValueError as exc:
            parser.error(f"{option_string}: {exc}")
        setattr(namespace, self.dest, value != negated)


def add_flag(parser: argparse.ArgumentParser, flag: str, *, dest: str, help: str) -> None:
    """Add ``flag`` and its ``--no-`` twin; unset (None) unless given."""
    parser.add_argument(
        flag,
        "--no-" + flag.removeprefix("--"),
        dest=dest,
        default=None,
        nargs="?",
        metavar="true|false",
        action=FlagAction,
        help=help,
    )
