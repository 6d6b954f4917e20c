"""A pack's own configuration: a typed model under an environment prefix of the pack's own.

The host reads every loaded pack's settings once, at startup, from the environment it was
configured with (``Settings.pack_environment``), by the host's own rules:

* a variable named ``<PREFIX><FIELD>`` (the field's name in upper case) sets that field; an
  empty value leaves the default, as for the host's variables;
* a value the model refuses stops startup with one line naming the variable;
* a variable that carries a loaded pack's prefix but names none of its fields is a typo, and
  stops startup too, listing the pack's variables;
* prefixes are ``OPENEXEC_<NAME>_`` (capitals, digits, underscores); two packs whose
  prefixes overlap (one begins the other), or a prefix that would claim one of the host's own
  variables, stop startup;
* a field typed ``pydantic.SecretStr`` is never shown: ``shown`` writes it as
  ``"**********"`` (pydantic's own redaction), which is what ``/health`` and ``openexec plugins
  --json`` print.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, SecretBytes, SecretStr, ValidationError

from openexec.settings import HOST_VARIABLES, ConfigError

PREFIX = re.compile(r"^OPENEXEC_[A-Z][A-Z0-9_]*_$")


class PackSettings(BaseModel):
    """Base class of a pack's settings: subclass it, set ``env_prefix``, declare fields.

    ::

        class FilesSettings(PackSettings):
            env_prefix = "OPENEXEC_FILES_"
            root: Path = Path("openexec-files")  # OPENEXEC_FILES_ROOT
            token: SecretStr | None = None  # OPENEXEC_FILES_TOKEN, redacted when shown

    Every field needs a default: with no variable set, the pack still starts. Instances are
    frozen; the pack receives one in ``register_actions``, ``startup`` and ``shutdown``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    env_prefix: ClassVar[str]

    def effective(self) -> dict[str, Any]:
        """What the pack made of its settings, for operators to check (the exec pack: the
        policy its policy file gave). Shown beside the settings by ``/health`` and
        ``openexec plugins --json``; nothing by default. Never put secrets here."""
        return {}

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each environment variable this model reads, and the field it sets."""
        return {cls.env_prefix + name.upper(): name for name in cls.model_fields}


class PrefixError(Exception):
    """A pack's prefix is malformed or overlaps another's; the plugin host names the packs."""


def check_model(model: object) -> type[PackSettings]:
    """``model`` as a settings model, or ``PrefixError`` saying what is wrong with it."""
    if not (isinstance(model, type) and issubclass(model, PackSettings)):
        raise PrefixError("register_settings must return a PackSettings subclass")
    prefix = getattr(model, "env_prefix", None)
    if not isinstance(prefix, str) or not PREFIX.match(prefix):
        raise PrefixError(f"env_prefix {prefix!r} must look like 'OPENEXEC_NAME_'")
    claimed = sorted(variable for variable in HOST_VARIABLES if variable.startswith(prefix))
    if claimed:
        raise PrefixError(f"env_prefix {prefix!r} would claim the host's {', '.join(claimed)}")
    missing = [name for name, field in model.model_fields.items() if field.is_required()]
    if missing:
        raise PrefixError(f"settings {', '.join(missing)} need a default")
    return model


def overlapping(prefixes: Mapping[str, str]) -> tuple[str, str] | None:
    """Two plugins (by name) whose prefixes overlap, or None; ``prefixes`` maps plugin to
    prefix. One prefix beginning another would make a variable belong to both."""
    ordered = sorted(prefixes.items(), key=lambda item: item[1])
    for (first, one), (second, other) in pairwise(ordered):
        if other.startswith(one):
            return first, second
    return None


def read(model: type[PackSettings], environment: Mapping[str, str], plugin: str) -> PackSettings:
    """The pack's settings from ``environment``; ``ConfigError`` names the variable at fault."""
    variables = model.variables()
    given: dict[str, str] = {}
    for variable in sorted(environment):
        if not variable.startswith(model.env_prefix):
            continue
        if variable not in variables:
            raise ConfigError(
                variable,
                f"is not a setting of plugin {plugin!r}, whose settings are "
                f"{', '.join(sorted(variables))}",
            )
        if environment[variable].strip():
            given[variables[variable]] = environment[variable]
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        variable = model.env_prefix + str(error["loc"][0]).upper()
        field = str(error["loc"][0])
        shown = "a secret" if _is_secret(model, field) else repr(given[field])
        raise ConfigError(variable, f"{error['msg'].lower()}, got {shown}") from None


def shown(settings: PackSettings) -> dict[str, Any]:
    """The settings by variable name, as JSON values, secrets redacted: what operators see."""
    values = settings.model_dump(mode="json")
    return {settings.env_prefix + name.upper(): value for name, value in values.items()}


def _is_secret(model: type[PackSettings], field: str | int) -> bool:
    return _secret_type(model.model_fields[str(field)].annotation)


def _secret_type(annotation: Any) -> bool:
    """SecretStr or SecretBytes, alone or inside ``X | None`` and the like."""
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_secret_type(argument) for argument in get_args(annotation))
