"""What the web node reads from its params and files: the access token and the media folders.

Kept apart from web.py (the node, loaded with the graph) and webserver.py (the HTTP stack, loaded
when the node serves) so that both can use it without importing each other.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from iotrt import errors

TOKEN_FILE = "web.token"
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


class WebError(errors.ConfigError, RuntimeError):
    """The web node cannot start as configured (port taken, bad TLS files, bad token file)."""


def load_token(params: dict, state_dir: str, log) -> str:
    """The token from the param, else its file; generated (and said once) when there is none."""
    if params["token"]:
        return _checked(params["token"], "the web node's token param")
    path = Path(params["token_file"] or Path(state_dir or ".") / TOKEN_FILE)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise WebError(f"cannot read the web token file {path}: {exc}") from exc
    if text:
        _checked(text, str(path))
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users: chmod 600 it", path)
        return text
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("web: generated an access token: %s (kept in %s)", token, path)
    return token


def _checked(token: str, where: str) -> str:
    # it travels in a header and a cookie: letters, digits and -._~+/= only
    if not TOKEN_RE.fullmatch(token):
        raise WebError(f"{where}: the token must be 16 to 256 characters of letters, digits "
                       f"and -._~+/= (make one: python3 -c 'import secrets; "
                       f"print(secrets.token_urlsafe(24))')")
    return token


def media_dirs(params: dict, state_dir: str) -> dict[str, Path]:
    base = Path(state_dir or ".")
    dirs = params["media_dirs"] or {"snapshots": base / "snapshots", "clips": base / "clips"}
    return {str(k): Path(v) for k, v in dirs.items()}
