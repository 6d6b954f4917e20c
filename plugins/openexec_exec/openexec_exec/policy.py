"""The operator's policy: what may run on this host, on top of what an approval names.

The policy never authorises anything an approval did not; it is the operator's local limit.
It is a TOML file (``OPENEXEC_EXEC_POLICY``), read once at startup; a key the file leaves out
keeps its built-in value, and an unknown key or a bad value stops startup naming it. The
built-in policy (no file) lets the demo run ``echo``, ``printf``, ``true``, ``false``,
``sleep`` and the stdin-only safe bins, and nothing else. README.md has examples.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from openexec_exec.safe_bins import DEFAULT_SAFE_BINS, PROFILES, check_arguments

ANY_REST = "**"  # as the last argument pattern: any further arguments, or none


def glob_pattern(glob: str) -> re.Pattern[str]:
    """``*`` matches within one path component, ``**`` across components, ``?`` one
    character other than ``/``; everything else is literal."""
    parts: list[str] = []
    index = 0
    while index < len(glob):
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        character = glob[index]
        parts.append({"*": "[^/]*", "?": "[^/]"}.get(character) or re.escape(character))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


def argument_pattern(glob: str) -> re.Pattern[str]:
    """One argument's pattern: ``*`` any characters (``/`` included), ``?`` one character."""
    return re.compile(
        "".join({"*": ".*", "?": "."}.get(c) or re.escape(c) for c in glob), re.DOTALL
    )


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowEntry(Frozen):
    """``path``: a glob over the executable's resolved real path (absolute). ``args``: one
    pattern per argument, matched one to one, so an argument can never stand in for two
    (``"**"`` as the last pattern admits any further arguments); left out, any arguments."""

    path: str
    args: tuple[str, ...] | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r}: an allow path is a glob over an absolute real path")
        return value

    @field_validator("args")
    @classmethod
    def _rest_last(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and ANY_REST in value[:-1]:
            raise ValueError(f"{ANY_REST!r} may only be the last argument pattern")
        return value

    @cached_property
    def _path(self) -> re.Pattern[str]:
        return glob_pattern(self.path)

    @cached_property
    def _args(self) -> tuple[tuple[re.Pattern[str], ...], bool] | None:
        if self.args is None:
            return None
        rest = bool(self.args) and self.args[-1] == ANY_REST
        fixed = self.args[:-1] if rest else self.args
        return tuple(argument_pattern(p) for p in fixed), rest

    def matches_path(self, real_path: str) -> bool:
        return self._path.fullmatch(real_path) is not None

    def matches(self, real_path: str, args: Sequence[str]) -> bool:
        if not self.matches_path(real_path):
            return False
        if self._args is None:
            return True
        fixed, rest = self._args
        if len(args) < len(fixed) or (not rest and len(args) != len(fixed)):
            return False
        return all(p.fullmatch(a) for p, a in zip(fixed, args, strict=False))


def _built_in_allow() -> tuple[AllowEntry, ...]:
    names = ("echo", "printf", "true", "false", "sleep")
    return tuple(AllowEntry(path=f"{d}/{name}") for name in names for d in ("/usr/bin", "/bin"))


class Limits(Frozen):
    """Resource limits applied to every command (``setrlimit``, soft and hard alike). A limit
    set to 0 is not applied. ``processes`` counts every process of the user commands run as."""

    cpu_s: int = Field(3600, ge=0)
    address_space_bytes: int = Field(32 << 30, ge=0)
    open_files: int = Field(1024, ge=0)
    processes: int = Field(512, ge=0)
    file_size_bytes: int = Field(1 << 30, ge=0)

    def rlimits(self) -> dict[str, int]:
        names = {
            "cpu_s": "RLIMIT_CPU",
            "address_space_bytes": "RLIMIT_AS",
            "open_files": "RLIMIT_NOFILE",
            "processes": "RLIMIT_NPROC",
            "file_size_bytes": "RLIMIT_FSIZE",
        }
        return {names[k]: v for k, v in self.model_dump().items() if v}


class Policy(Frozen):
    """Every key of the policy file, with its built-in value (docs in README.md)."""

    security: Literal["deny", "allowlist", "full"] = "allowlist"
    allow: tuple[AllowEntry, ...] = Field(default_factory=_built_in_allow)
    safe_bins: tuple[str, ...] = DEFAULT_SAFE_BINS
    trusted_dirs: tuple[str, ...] = ("/bin", "/usr/bin")
    path: tuple[str, ...] = ("/usr/local/bin", "/usr/bin", "/bin")
    shell: bool = False
    shell_path: str = "/bin/sh"
    sandbox: Literal["none", "bwrap"] = "none"
    bwrap_path: str = "/usr/bin/bwrap"
    user: str = "nobody"
    default_timeout_s: PositiveFloat = 1800
    max_timeout_s: PositiveFloat = 7200
    kill_grace_s: NonNegativeFloat = 3
    max_yield_ms: int = Field(120_000, ge=0, le=600_000)
    max_output_bytes: int = Field(200_000, ge=0)
    max_log_bytes: int = Field(10 << 20, ge=0)
    max_sessions: PositiveInt = 64
    session_ttl_s: NonNegativeFloat = 1800
    max_argv: PositiveInt = 1024
    max_argv_bytes: PositiveInt = 128 << 10
    max_env: int = Field(128, ge=0)
    max_env_bytes: PositiveInt = 64 << 10
    max_stdin_bytes: int = Field(1 << 20, ge=0)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("safe_bins")
    @classmethod
    def _profiled(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(PROFILES))
        if unknown:
            raise ValueError(
                f"no argument profile for {', '.join(unknown)}; safe bins are chosen from "
                f"{', '.join(sorted(PROFILES))}"
            )
        return value

    @field_validator("trusted_dirs", "path", "shell_path", "bwrap_path")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        for item in (value,) if isinstance(value, str) else value:
            if not item.startswith("/"):
                raise ValueError(f"{item!r} is not an absolute path")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> Policy:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s is above max_timeout_s")
        return self

    @cached_property
    def trusted_real_dirs(self) -> frozenset[str]:
        return frozenset(os.path.realpath(d) for d in self.trusted_dirs)

    def refusal(self, real_path: str, args: Sequence[str]) -> str | None:
        """Why the policy refuses running ``real_path`` with ``args``, or None."""
        if self.security == "deny":
            return "the policy's security is 'deny': no command runs on this host"
        if self.security == "full":
            return None
        if any(entry.matches(real_path, args) for entry in self.allow):
            return None
        name = os.path.basename(real_path)
        if name in self.safe_bins:
            if os.path.dirname(real_path) not in self.trusted_real_dirs:
                return f"{real_path} is a safe bin only when it lies in the trusted_dirs"
            if problem := check_arguments(name, args):
                return f"safe bin {name}: {problem}"
            return None
        if any(entry.matches_path(real_path) for entry in self.allow):
            return f"the allow entries for {real_path} do not match these arguments"
        return f"{real_path} matches no allow entry and is not a safe bin"

    def interpreter_refusal(self, real_path: str) -> str | None:
        """A ``#!`` interpreter runs whatever script it is given, so it needs an allow entry
        with no argument patterns (or security ``full``)."""
        if self.security == "full":
            return None
        if self.security == "deny":
            return "the policy's security is 'deny'"
        if any(e.args is None and e.matches_path(real_path) for e in self.allow):
            return None
        return f"interpreter {real_path} has no allow entry (without argument patterns)"

    def shown(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class PolicyError(Exception):
    """The policy file is missing, not TOML, or has an unknown key or a bad value."""


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"OPENEXEC_EXEC_POLICY: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"OPENEXEC_EXEC_POLICY: {path} is not valid TOML: {exc}") from None
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise PolicyError(f"OPENEXEC_EXEC_POLICY: {path}: {where}: {reason}") from None
