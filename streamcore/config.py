"""``streamcore serve --config streamcore.toml``: the daemon's options from a file.

Every command-line option is also a key of the file, spelled as the option without its
dashes (``token-rate`` or ``token_rate``).  One order of precedence, whatever the option:

    command-line flag  >  environment variable (STREAMCORE_...)  >  the file  >  default

The file is TOML (the standard library's ``tomllib``), flat::

    port = 8080
    token_rate = 0
    upstream = ["http://10.0.0.5:8000/v1 key-env=VLLM_KEY models=qwen3"]
    api_key = ["sk-..."]
    write_stall_timeout_s = 10.0

An unknown key or a value of the wrong type is an error naming the key and its line.
``streamcore config --print`` shows the effective configuration, secrets masked.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Mapping
from typing import Any

#: Options whose values are secrets: masked when printed.
SECRETS = frozenset({"api_key"})
#: Inside an --upstream spec, these options' values are secrets.
_SECRET_WORD = re.compile(r"\b(key)=\S+")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and line."""


def _line_of(text: str, key: str) -> int:
    pattern = re.compile(rf"^[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*=", re.M)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def load(path: str, actions: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The file's values by option ``dest``, checked against the options they set."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}:{_line_of(text, key)}"
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("config", "help", "version", "command"):
            raise ConfigError(f"{where}: unknown key {key!r} (every key is a "
                              "'streamcore serve' option without its dashes)")
        values[dest] = _checked(where, key, action, value)
    return values


def _checked(where: str, key: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: {key} must be a string or an array of strings")
        return items
    kind = action.type
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    elif kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        value = float(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def masked(dest: str, value: Any) -> Any:
    """``value`` as it may be shown: secrets replaced by ``***``."""
    if dest in SECRETS:
        return ["***" for _ in value] if isinstance(value, list) else "***"
    if dest == "upstream" and isinstance(value, list):
        return [_SECRET_WORD.sub(r"\1=***", spec) for spec in value]
    return value


def to_toml(values: Mapping[str, Any]) -> str:
    """The effective configuration as a file ``--config`` would read back."""
    import json

    lines = []
    for dest, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:  # strings and lists of strings: JSON's quoting is TOML's basic strings
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f"{dest} = {text}")
    return "\n".join(lines) + "\n"
