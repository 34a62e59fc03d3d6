"""Programs that reach the network.

A download (``curl URL``, ``wget URL``, an HTTP ``GET``) is medium: it needs approval at the
default threshold, because a URL can carry data out and what comes back is untrusted. Sending
data (``curl -d``, ``-F``, ``-T``, ``-X POST``, ``wget --post-data``) is high, like the
agent's own HTTP tool with a method other than GET/HEAD/OPTIONS. Remote shells and copies
(``ssh``, ``scp``, ``rsync host:…``) are high. A download piped into a shell is blocked in
``commands.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from stockade.policy.options import scan
from stockade.policy.paths import write_findings
from stockade.policy.risk import Finding, Risk, Rule

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DOWNLOADERS = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https", "xh", "lynx"})

_CURL_VALUES = "oTdFXHuAeEKrwxCDbcmyYzQtUP"
_CURL_LONG = frozenset(
    {"data", "data-raw", "data-binary", "data-urlencode", "data-ascii", "json", "form"}
    | {"form-string", "upload-file", "request", "output", "header", "user", "user-agent"}
    | {"referer", "cert", "config", "range", "write-out", "proxy", "continue-at", "dump-header"}
    | {"cookie", "cookie-jar", "max-time", "connect-timeout", "url", "retry", "output-dir"}
    | {"resolve", "cacert", "key", "limit-rate", "max-filesize", "interface", "oauth2-bearer"}
)
_CURL_SENDS = ("d", "F", "T", "data", "data-raw", "data-binary", "data-urlencode", "data-ascii")
_CURL_SENDS_LONG = ("json", "form", "form-string", "upload-file")
_WGET_VALUES = "OoaPeUtTwQlARDIXiB"
_WGET_LONG = frozenset(
    {"output-document", "output-file", "append-output", "directory-prefix", "execute"}
    | {"user-agent", "tries", "timeout", "post-data", "post-file", "body-data", "body-file"}
    | {"method", "header", "user", "password", "input-file", "level", "load-cookies"}
    | {"save-cookies"}
)


def curl(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``curl``: medium to download, high to send data; ``-o FILE`` is also a file write."""
    opts = scan(args, short_values=_CURL_VALUES, long_values=_CURL_LONG)
    url = opts.value("url") or (opts.operands[0] if opts.operands else "the network")
    method = (opts.value("X", "request") or "GET").upper()
    if opts.has(*_CURL_SENDS, *_CURL_SENDS_LONG) or method not in READ_METHODS:
        found = [Finding(Risk.HIGH, f"curl sends data to {url}")]
    else:
        found = [Finding(Risk.MEDIUM, f"curl downloads from {url}")]
    for option in ("o", "output", "c", "cookie-jar", "D", "dump-header"):
        for path in opts.values.get(option, ()):
            if path != "-":
                found += write_findings(path, verb="curl writes to", extra=roots)
    return found


def wget(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``wget``: medium to download, high to post; ``-O FILE`` is also a file write."""
    opts = scan(args, short_values=_WGET_VALUES, long_values=_WGET_LONG)
    url = opts.operands[0] if opts.operands else "the network"
    method = (opts.value("method") or "GET").upper()
    posts = opts.has("post-data", "post-file", "body-data", "body-file")
    if posts or method not in READ_METHODS:
        found = [Finding(Risk.HIGH, f"wget sends data to {url}")]
    else:
        found = [Finding(Risk.MEDIUM, f"wget downloads from {url}")]
    for path in opts.values.get("O", ()) + opts.values.get("output-document", ()):
        if path != "-":
            found += write_findings(path, verb="wget writes to", extra=roots)
    return found


def httpie(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``http [METHOD] URL …`` (HTTPie, xh): medium for reads, high for other methods."""
    operands = scan(args).operands
    method = operands[0].upper() if operands and operands[0].isalpha() else "GET"
    if method not in READ_METHODS or any("=" in op for op in operands[1:]):
        return [Finding(Risk.HIGH, f"{name} sends data over HTTP")]
    return [Finding(Risk.MEDIUM, f"{name} downloads over HTTP")]


def remote(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``ssh``, ``scp``, ``sftp``, ``ftp``, ``telnet``, plain ``nc``: high."""
    return [Finding(Risk.HIGH, f"{name} connects to another machine")]


def rsync(name: str, args: Sequence[str], roots: frozenset[str]) -> list[Finding]:
    """``rsync`` between local paths is a copy (medium); to or from a host it is high."""
    operands = scan(args, short_values="eBfT").operands
    if any(_is_remote(op) for op in operands):
        return [Finding(Risk.HIGH, "rsync copies to or from another machine")]
    found = [Finding(Risk.MEDIUM, "rsync copies files")]
    if len(operands) >= 2:
        found += write_findings(operands[-1], verb="rsync writes to", extra=roots)
    return found


def _is_remote(operand: str) -> bool:
    if operand.startswith("rsync://"):
        return True
    head, colon, _ = operand.partition(":")
    return bool(colon) and "/" not in head


NETWORK_RULES: dict[str, Rule] = {
    "curl": curl,
    "wget": wget,
    **dict.fromkeys(("http", "https", "xh", "xhs"), httpie),
    **dict.fromkeys(("ssh", "scp", "sftp", "ftp", "telnet", "mosh"), remote),
    **dict.fromkeys(("nc", "ncat", "netcat", "nc.traditional", "nc.openbsd", "socat"), remote),
    "rsync": rsync,
}
