"""Argument profiles of the safe bins: stdin-only tools that run without an ``allow`` entry.

A safe bin is only as safe as the arguments it gets, so each has a profile of the options it
may take, and everything else fails closed:

* every token, option values included, is refused if it looks like a path (contains ``/``,
  starts with ``~``, or is ``.`` or ``..``) or carries a glob or expansion character
  (``* ? [ ] { } $`` and the backquote): the command never sees a file name, and a token
  that a shell would have expanded is not silently taken literally;
* long options match exactly, never as GNU-style abbreviations (``--comp`` is not
  ``--compress-program``);
* an option the profile does not list is refused, so options that read or write files
  (``sort -o``, ``grep -r``, ``wc --files0-from``, ``sort --compress-program``) never run;
* operands (file names, for these tools) are refused, except ``tr``'s sets and ``grep``'s
  pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FORBIDDEN_CHARACTERS = frozenset("*?[]{}$`")


@dataclass(frozen=True)
class Profile:
    """What one tool accepts. ``valued`` options take a value (``-n 5``, ``-n5``,
    ``--lines=5``, ``--lines 5``); ``optional`` long options take ``=value`` or nothing."""

    flags: str = ""
    valued: str = ""
    long_flags: frozenset[str] = frozenset()
    long_valued: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    operands: tuple[int, int] = (0, 0)
    no_operands_with: frozenset[str] = frozenset()  # options that use up the operand


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_HEAD_TAIL = Profile(
    flags="qvz",
    valued="nc",
    long_flags=_names("quiet silent verbose zero-terminated"),
    long_valued=_names("lines bytes"),
)

PROFILES: dict[str, Profile] = {
    "cut": Profile(
        flags="nsz",
        valued="bcfd",
        long_flags=_names("complement only-delimited zero-terminated"),
        long_valued=_names("bytes characters fields delimiter output-delimiter"),
    ),
    "uniq": Profile(
        flags="cdDiuz",
        valued="fsw",
        long_flags=_names("count repeated ignore-case unique zero-terminated"),
        long_valued=_names("skip-fields skip-chars check-chars"),
        optional=_names("all-repeated group"),
    ),
    "head": _HEAD_TAIL,
    "tail": _HEAD_TAIL,
    "tr": Profile(
        flags="cCdst",
        long_flags=_names("complement delete squeeze-repeats truncate-set1"),
        operands=(1, 2),
    ),
    "wc": Profile(flags="cmlLw", long_flags=_names("bytes chars lines max-line-length words")),
    "sort": Profile(
        flags="bdfghiMnRrVsuz",
        valued="ktS",
        long_flags=_names(
            "ignore-leading-blanks dictionary-order ignore-case general-numeric-sort "
            "human-numeric-sort ignore-nonprinting month-sort numeric-sort random-sort "
            "reverse version-sort stable unique zero-terminated"
        ),
        long_valued=_names("key field-separator buffer-size parallel"),
    ),
    "grep": Profile(
        flags="EFGivwxcoqsnhHbaIz",
        valued="emABC",
        long_flags=_names(
            "extended-regexp fixed-strings basic-regexp ignore-case invert-match word-regexp "
            "line-regexp count only-matching quiet silent no-messages line-number "
            "no-filename with-filename byte-offset text null-data"
        ),
        long_valued=_names("regexp max-count after-context before-context context"),
        operands=(0, 1),
        no_operands_with=_names("e regexp"),
    ),
}
DEFAULT_SAFE_BINS = ("cut", "uniq", "head", "tail", "tr", "wc")


def token_problem(token: str) -> str | None:
    """Why ``token`` may not reach a safe bin, or None."""
    if "/" in token or token.startswith("~") or token in (".", ".."):
        return f"argument {token!r} looks like a path"
    if FORBIDDEN_CHARACTERS.intersection(token):
        return f"argument {token!r} carries a glob or expansion character"
    return None


def check_arguments(name: str, args: Sequence[str]) -> str | None:
    """Why ``args`` do not fit ``name``'s profile, or None when they do."""
    profile = PROFILES[name]
    operands = 0
    used: set[str] = set()
    index = 0
    options_ended = False
    while index < len(args):
        token = args[index]
        index += 1
        if problem := token_problem(token):
            return problem
        if options_ended or token == "-" or not token.startswith("-"):
            operands += 1
            continue
        if token == "--":
            options_ended = True
            continue
        if token.startswith("--"):
            option, has_value, _ = token[2:].partition("=")
            used.add(option)
            if option in profile.long_flags and not has_value:
                continue
            if option in profile.optional:
                continue
            if option in profile.long_valued:
                if not has_value:
                    if problem := _value_problem(args, index, f"--{option}"):
                        return problem
                    index += 1
                continue
            return f"option --{option} is not allowed for {name} (long options must be exact)"
        for position, letter in enumerate(token[1:], start=1):
            used.add(letter)
            if letter in profile.flags:
                continue
            if letter in profile.valued:
                if position == len(token) - 1:  # the value is the next argument
                    if problem := _value_problem(args, index, f"-{letter}"):
                        return problem
                    index += 1
                break
            return f"option -{letter} is not allowed for {name}"
    low, high = profile.operands
    if used & profile.no_operands_with:
        high = 0
    if not low <= operands <= high:
        if high == 0:
            return f"{name} takes no operands here (it reads stdin only)"
        return f"{name} takes {low} to {high} operands, not {operands}"
    return None


def _value_problem(args: Sequence[str], index: int, option: str) -> str | None:
    """Why ``args[index]`` cannot be the value of ``option``, or None."""
    if index == len(args):
        return f"option {option} needs a value"
    return token_problem(args[index])
