"""The HTTP proxy a request of the client goes through, from the environment (docs/client.md, "Proxies").

``http_proxy``/``HTTP_PROXY`` and ``https_proxy``/``HTTPS_PROXY`` name the proxy by the request's scheme,
``no_proxy``/``NO_PROXY`` the hosts that are reached directly, as curl (and so Nix) reads them; credentials in
the proxy's URL are sent to the proxy. Only plain ``http://`` proxies are used (an ``https://`` proxy URL is
ignored with a warning, as aiohttp did).

This replaces aiohttp's ``trust_env``, which cost two hand-overs to worker threads for every request (it read
``~/.netrc`` and the environment again each time: about 0.25 ms of CPU a request, issue 18), and which put
``~/.netrc`` credentials on requests that carry their own: a presigned S3 request, signed in its URL, and the
API's, which carry the token.
"""

from __future__ import annotations

__all__ = ["Proxy", "proxy_for"]

import functools
import logging
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proxy:
    """A proxy's URL (without credentials) and its ``Proxy-Authorization`` when its URL had credentials."""

    url: URL
    authorization: str | None = None

    def request_options(self, target: str, headers: Mapping[str, str] | None) -> dict[str, Any]:
        """The options of ``aiohttp.ClientSession.request`` for ``target`` through this proxy (with ``headers``).

        The credentials go on the request itself for a plain-HTTP target and on the ``CONNECT`` for an HTTPS
        one: aiohttp sends its ``proxy_headers`` only with a ``CONNECT``.
        """
        options: dict[str, Any] = {"proxy": self.url, "headers": headers}
        if self.authorization is not None:
            credentials = {"Proxy-Authorization": self.authorization}
            if URL(target).scheme == "https":
                options["proxy_headers"] = credentials
            else:
                options["headers"] = {**(headers or {}), **credentials}
        return options


# What can choose a proxy for an http:// or https:// request (curl's names, in either case; urllib ignores
# HTTP_PROXY under CGI, where REQUEST_METHOD is set). The answer is cached for the values they have.
_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "REQUEST_METHOD")


def proxy_for(url: str | URL) -> Proxy | None:
    """The proxy for ``url`` from the environment as it is now, or None to connect directly."""
    settings = tuple(os.environ.get(name) for name in _VARIABLES)
    if not any(settings[:4]):
        return None
    scheme, _, rest = str(url).partition("://")
    return _proxy(settings, scheme.lower(), rest.split("/", 1)[0])


@functools.lru_cache(maxsize=256)
def _proxy(settings: tuple[str | None, ...], scheme: str, authority: str) -> Proxy | None:
    del settings  # the cache key: os.environ has these values now
    host = URL(f"{scheme}://{authority}/").host
    raw = urllib.request.getproxies_environment().get(scheme)
    if raw is None or host is None or urllib.request.proxy_bypass(host):
        return None
    proxy = URL(raw)
    if proxy.scheme != "http":
        logger.warning("%s proxies are not supported; %s is ignored", proxy.scheme, proxy.with_user(None))
        return None
    authorization = aiohttp.encode_basic_auth(proxy.user, proxy.password or "") if proxy.user else None
    return Proxy(proxy.with_user(None), authorization)
