"""Which token the CLI and SDK send to a server: ``$TIDEMILL_TOKEN``, else the config file.

The config file is ``$TIDEMILL_CONFIG``, else ``$XDG_CONFIG_HOME/tidemill/config.yaml``
(``~/.config/tidemill/config.yaml``). It maps server URLs to tokens; keep it mode 0600::

    servers:
      http://tidemill.internal:8500:
        token: tm_3q2...
      http://127.0.0.1:8500:
        token: tm_9xY...

URLs match as the client writes them: ``host:port`` means ``http://host:port``, and a
trailing slash does not matter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

TOKEN_ENV = "TIDEMILL_TOKEN"
CONFIG_ENV = "TIDEMILL_CONFIG"


class ConfigError(ValueError):
    """The config file is unreadable or not in the documented shape; says where."""


def normalise_url(server: str) -> str:
    """``host:port`` or a full URL, without a trailing slash."""
    server = server.strip().rstrip("/")
    return server if "://" in server else f"http://{server}"


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "tidemill" / "config.yaml"


def token_for(server: str, env: Mapping[str, str] = os.environ) -> str | None:
    """The token for ``server`` (a normalised URL), or None to send none.

    >>> token_for("http://127.0.0.1:8500", {"TIDEMILL_TOKEN": "tm_abc"})
    'tm_abc'
    """
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    path = config_path(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the tidemill config ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    servers = document.get("servers") if isinstance(document, dict) else None
    if document is not None and not isinstance(servers, dict):
        raise ConfigError(
            f"{path}: servers: expected a mapping of server URL to {{token: ...}}; "
            f"see the {__name__} docs or `tidemill token --help`"
        )
    for url, entry in (servers or {}).items():
        if normalise_url(str(url)) != normalise_url(server):
            continue
        token = entry.get("token") if isinstance(entry, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise ConfigError(f"{path}: servers.{url}.token: expected the token as a string")
        return token.strip()
    return None


__all__ = ["CONFIG_ENV", "TOKEN_ENV", "ConfigError", "config_path", "normalise_url", "token_for"]
