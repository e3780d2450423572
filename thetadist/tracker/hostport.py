"""Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6) for listen options."""

from __future__ import annotations

import ipaddress
import re

from thetadist.errors import UsageError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")


def parse_hostport(text: str) -> tuple[str, int]:
    """``"127.0.0.1:6969"`` → ``("127.0.0.1", 6969)``; ``"[::1]:0"`` → ``("::1", 0)``.

    The host is an IP literal or a DNS name; the port is 0..65535 (0: any free port).
    Anything else raises :class:`UsageError`.
    """
    original = text
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise UsageError(f"{original!r} is not [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"{host!r} in {original!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise UsageError(f"{original!r} is not HOST:PORT (e.g. 127.0.0.1:6969)")
        if ":" in host:
            raise UsageError(f"{original!r}: write an IPv6 host in brackets, e.g. [::1]:6969")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
                raise UsageError(f"{host!r} in {original!r} is not a host name or IP") from None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise UsageError(f"port {port_text!r} in {original!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise UsageError(f"port {port} in {original!r} is not in 0..65535")
    return host, port
