"""What the service answers and with which headers: the Host names it serves (anything else, such
as a DNS-rebinding page's own domain pointed at 127.0.0.1, gets 400) and the security headers
every response carries, the page's, its static files', the JSON answers' and the API docs' alike.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, List, Optional

from ...errors import ConfigError

# the names a loopback service is reached by, as they appear in a Host header (IPv6 in brackets)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# addresses that mean "every interface" when bound: no one sends them as a Host
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")

# the page and its files load nothing from outside this server
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI (/docs): its start-up is a file of this server too, so scripts stay 'self' only; it sets
# inline styles and shows responses (images) through blob: URLs and its icons as data: URLs
DOCS_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
DOCS_PATH = "/docs"

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",  # a JSON answer or an image is never run as a script or page
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate it
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",  # another site cannot embed the images
}

_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


def host_pattern(text: str, what: str = "--allowed-host") -> str:
    """A Host name as TrustedHostMiddleware matches it: lower case, an IPv6 address in brackets;
    ``*`` (any) and ``*.example.org`` (its subdomains) stay patterns. ConfigError for anything else
    (a port, a scheme, a path)."""
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if address is not None:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    if name == "*" or (_NAME.fullmatch(name.removeprefix("*.")) and len(name) <= 253):
        return name
    raise ConfigError(f"{what} {text!r}: not a host name, an IP address, '*' or a '*.domain' pattern "
                      f"(no port, scheme or path)")


def allowed_hosts(bound: Optional[str] = None, extra: Iterable[str] = ()) -> List[str]:
    """The Host names served: the loopback names, the address bound (unless it is every interface)
    and ``extra``; each checked by :func:`host_pattern`."""
    names = list(LOOPBACK_HOSTS)
    if bound is not None and bound.strip() not in _ANY_ADDRESS:
        names.append(host_pattern(bound, "--host"))
    names += [host_pattern(x) for x in extra]
    return list(dict.fromkeys(names))


class SecurityHeadersMiddleware:
    """ASGI middleware: :data:`SECURITY_HEADERS` and a Content-Security-Policy on every HTTP
    response (:data:`DOCS_CSP` on the API docs page, :data:`PAGE_CSP` on everything else), replacing
    any the app set."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = DOCS_CSP if scope.get("path") == DOCS_PATH else PAGE_CSP
        ours = {**SECURITY_HEADERS, "content-security-policy": csp}
        extra = [(k.encode(), v.encode()) for k, v in ours.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in ours]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
