"""The option machinery of both command lines: one table shape, flags, environment, help.

Each setting is one :class:`Option`, written once with its flag, its environment variable
(``envvar=``, as procrastinate's options carry theirs) and its parser. From a table,
:func:`add_options` builds the argparse flags, with a ``--help`` line that shows the
default and the environment variable of every option, and :func:`resolve` reads the
values: the flag wins over the environment variable, which wins over the default (the
config dataclass's, not repeated here). An empty environment variable counts as unset,
as a variable blanked in a compose file means "not set".

A value that cannot be parsed is one :class:`BadValue` line: where it came from (the flag
or ``$VARIABLE``), the value (``***`` for a secret) and what is expected. Yes/no settings
are flags: ``--x`` sets True, ``--no-x`` False, and ``--x true|false`` (the older spelling)
still works; the environment variables take true/false, yes/no, on/off or 1/0.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

#: What an unparsable value is answered with: exit code 2, as argparse's own errors.
EXIT_BAD_SETTING = 2

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class BadValue(ValueError):
    """A flag or environment variable holds a value its option cannot parse."""


# -- parsers: text in, value out; a ValueError says what is expected -------------------------


def text(raw: str) -> str:
    return raw.strip()


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError("expected true or false")


def whole_number(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def number(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Option:
    """One setting: ``--flag``, ``envvar``, the config ``field`` it sets, and how to parse it.

    ``default`` is what ``--help`` shows as the default when the config's own value would
    not say it well (a computed path, a sentinel with a meaning); ``secret`` keeps the
    value out of error messages."""

    flag: str
    field: str
    envvar: str
    help: str
    parse: Callable[[str], Any] = text
    default: str | None = None
    secret: bool = False

    @property
    def is_flag(self) -> bool:
        return self.parse is boolean


def shown_default(value: object) -> str:
    """A config default as ``--help`` shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def defaults_of(config_class: type[Any]) -> dict[str, object]:
    """Field name -> default of a config dataclass whose fields all have defaults."""
    return {
        f.name: f.default
        for f in dataclasses.fields(config_class)
        if f.default is not dataclasses.MISSING
    }


def help_line(option: Option, defaults: Mapping[str, object]) -> str:
    default = option.default
    if default is None:
        default = shown_default(defaults.get(option.field))
    return f"{option.help} (default {default}) [env {option.envvar}]"


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
            value = boolean(str(values))
        except ValueError as exc:
            parser.error(f"{option_string}: bad value {values!r} ({exc})")
        setattr(namespace, self.dest, value != negated)


def add_options(
    parser: argparse.ArgumentParser,
    options: Iterable[Option],
    defaults: Mapping[str, object],
) -> None:
    """The flags of ``options``, unset (None) unless given: :func:`resolve` fills the rest."""
    for option in options:
        if option.is_flag:
            parser.add_argument(
                option.flag,
                "--no-" + option.flag.removeprefix("--"),
                dest=option.field,
                default=None,
                nargs="?",
                metavar="true|false",
                action=FlagAction,
                help=help_line(option, defaults),
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.field,
            default=None,
            metavar="VALUE",
            help=help_line(option, defaults),
        )


def parse_value(option: Option, raw: str, source: str) -> Any:
    """``raw`` through the option's parser; :class:`BadValue` naming ``source`` if it fails."""
    try:
        return option.parse(raw)
    except ValueError as exc:
        shown = "***" if option.secret else raw
        raise BadValue(f"{source}: bad value {shown!r} ({exc})") from exc


def resolve(
    options: Iterable[Option], args: argparse.Namespace | None, env: Mapping[str, str]
) -> dict[str, Any]:
    """Field -> value of every option given as a flag or else in the environment; options
    given neither way are left out, so the config's defaults apply to them."""
    values: dict[str, Any] = {}
    for option in options:
        given = getattr(args, option.field, None) if args is not None else None
        if isinstance(given, bool):  # a yes/no flag, parsed already
            values[option.field] = given
        elif given is not None:
            values[option.field] = parse_value(option, given, option.flag)
        elif env.get(option.envvar, "").strip():
            values[option.field] = parse_value(option, env[option.envvar], f"${option.envvar}")
    return values


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but a line of help never breaks inside a flag's name: a
    reader should be able to copy ``--exit-when-idle`` from the page, not ``--exit-``."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (``prog: what is wrong (see --help)``)
    and exit code 2. Sub-commands made with ``add_subparsers`` are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        name = self.prog.split()[0]
        self.exit(EXIT_BAD_SETTING, f"{name}: {message} (see {self.prog} --help)\n")
