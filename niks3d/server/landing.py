"""The landing page at ``/``: how to use this cache, and what it holds.

Plain HTML, built with :func:`html.escape` and no template engine, written one element per line so that it
reads as well with ``curl`` as in a browser: the cache URL, the public keys, ``nix.conf`` and NixOS snippets
ready to paste (with the ``netrc`` lines when the cache is private), the ways to sign in that this server accepts
(tokens, OIDC issuers, client certificates: docs/auth.md), and live figures (store paths, bytes,
upload sessions, the last garbage collection) from :class:`~niks3d.server.figures.FiguresReader`; a private
cache shows its figures only to a request with a ``read`` token (Bearer or Basic password).
"""

from __future__ import annotations

__all__ = ["FIGURES_HIDDEN", "bucket_url", "cache_url", "landing", "render_landing", "sign_in_methods"]

from datetime import datetime
from html import escape
from urllib.parse import urlsplit

from aiohttp import web

from niks3d import __version__
from niks3d.config import NIXOS_CACHE_KEY, S3Settings, Settings
from niks3d.db.figures import CacheFigures
from niks3d.server.auth import permits
from niks3d.server.keys import config_key, figures_key

_STYLE = """\
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5;
       color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
pre, code { font-family: ui-monospace, monospace; background: #f3f4f6; border-radius: 4px; }
pre { padding: .75rem 1rem; overflow-x: auto; } code { padding: 0 .25rem; }
th { text-align: left; font-weight: normal; color: #59636e; padding-right: 2rem; }
.note { color: #59636e; font-size: .9rem; }"""


def bucket_url(s3: S3Settings) -> str:
    """The URL under which Nix reads the bucket itself (when the read proxy is off)."""
    endpoint = s3.public_endpoint_url or s3.endpoint_url
    if endpoint is None:
        return f"https://{s3.bucket}.s3.{s3.region}.amazonaws.com"
    if s3.addressing_style == "virtual":
        scheme, _, rest = endpoint.partition("://")
        return f"{scheme}://{s3.bucket}.{rest}"
    return f"{endpoint}/{s3.bucket}"


def cache_url(request: web.Request, settings: Settings) -> str:
    """The URL Nix should use: ``server.public_url`` (else the address this request came to) plus the prefix."""
    if settings.server.read_proxy == "off":
        return bucket_url(settings.s3)
    base = settings.server.public_url or f"{request.scheme}://{request.host}"
    prefix = settings.server.proxy_prefix
    return base if prefix == "/" else base + prefix


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"
        value /= 1024
    raise AssertionError("unreachable")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _pre(lines: list[str]) -> list[str]:
    return ["<pre>", *(escape(line, quote=False) for line in lines), "</pre>"]


def _figures(figures: CacheFigures | None) -> list[str]:
    if figures is None:
        return ["<p>The figures are not available right now: the database did not answer.</p>"]
    gc = figures.last_gc
    if gc is None:
        last_gc = "none yet"
    else:
        moment = _when(gc.finished_at or gc.started_at)
        last_gc = f"{gc.state} {moment}, {_size(gc.bytes_freed)} freed" + (" (dry run)" if gc.dry_run else "")
    rows = [
        ("store paths", str(figures.paths)),
        ("stored in the bucket", _size(figures.stored_bytes)),
        ("of which NARs", _size(figures.bytes_of("nar"))),
        ("upload sessions open", str(figures.sessions.get("open", 0))),
        ("last garbage collection", last_gc),
    ]
    lines = ["<table>"]
    lines += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows]
    lines += ["</table>", f'<p class="note">As of {escape(_when(figures.taken_at))}.</p>']
    return lines


# What a private cache says instead of its figures to a request without a read token.
FIGURES_HIDDEN = "<p>This cache's figures are shown to requests with a token with the <code>read</code> scope.</p>"


def _upstream_note(upstream_keys: list[str]) -> str:
    """The comment that heads the snippets of a cache that leans on upstream caches."""
    names = [k.partition(":")[0] for k in upstream_keys]
    if upstream_keys == [NIXOS_CACHE_KEY]:
        return "# used together with cache.nixos.org: keep it among the substituters (extra-substituters does)"
    return "# used together with the caches of " + ", ".join(names) + ": keep them among the substituters"


def _upstream_section(upstream_keys: list[str]) -> list[str]:
    if not upstream_keys:
        return []
    nixos = NIXOS_CACHE_KEY in upstream_keys
    return [
        "",
        "<h2>Upstream caches</h2>",
        "<p>This cache is meant to be used together with the caches that sign with these keys"
        + (" (cache.nixos.org is Nix's default substituter)" if nixos else "")
        + ": pushes leave out every path they already serve, so Nix must keep them among its substituters",
        "and trust their keys. <code>extra-substituters</code> adds this cache next to them;",
        "<code>substituters</code> would replace them.</p>",
        *_pre(upstream_keys),
    ]


def sign_in_methods(settings: Settings) -> list[str]:
    """One line per way to authenticate that the configuration enables (names and counts, never a secret)."""
    methods = [f"API tokens: {len(settings.tokens)} configured (Authorization: Bearer, or the netrc password)"]
    if settings.oidc:
        issuers = ", ".join(f"{o.name} ({o.issuer})" for o in settings.oidc)
        methods.append(f"OIDC ID tokens from CI as bearer tokens: {issuers}")
    tls = settings.tls
    if tls is not None and tls.client_ca_file is not None:
        methods.append(
            f"client certificates ({tls.client_certificates}): {len(tls.clients)} rule(s) map subjects and "
            "subjectAltNames to scopes"
        )
    return methods


def _sign_in_section(methods: list[str], url: str, client_certificates: bool) -> list[str]:
    out = ["", "<h2>Signing in</h2>", "<p>This server accepts:</p>", "<ul>"]
    out += [f"<li>{escape(method)}</li>" for method in methods]
    out.append("</ul>")
    if client_certificates:
        out += [
            "<p>Nix 2.34 and newer present a client certificate named in the substituter URL; older Nix reads",
            "with a token in the netrc file. <code>niks3</code> takes <code>--client-cert</code>,",
            "<code>--client-key</code> and <code>--ca-file</code>:</p>",
            *_pre(
                [
                    f"extra-substituters = {url}?tls-certificate=/etc/nix/cache.crt&tls-private-key=/etc/nix/cache.key",
                    f"niks3 push --server {url} --client-cert cache.crt --client-key cache.key ./result",
                ]
            ),
        ]
    return out


def render_landing(
    *,
    url: str,
    public_keys: list[str],
    private: bool,
    direct: bool,
    figures: CacheFigures | None,
    show_figures: bool = True,
    upstream_keys: list[str] | None = None,
    sign_in: list[str] | None = None,
    client_certificates: bool = False,
) -> str:
    """The page; ``direct`` means the read proxy is off and ``url`` is the bucket's. Without ``show_figures``
    the figures section only says who may see them. ``upstream_keys`` (``cache.upstream_keys``): the caches this
    one leans on, which the snippets tell Nix to keep using and (but for Nix's default key) to trust. ``sign_in``:
    the lines of :func:`sign_in_methods`; ``client_certificates`` adds how Nix and niks3 present one."""
    upstream = list(upstream_keys or [])
    # Nix trusts cache.nixos.org's key by default; any other upstream key must be trusted explicitly.
    trusted = [*public_keys, *(k for k in upstream if k != NIXOS_CACHE_KEY and k not in public_keys)]
    note = [_upstream_note(upstream)] if upstream else []
    keys = " ".join(trusted)
    host = urlsplit(url).hostname or url
    how = "kept by" if direct else "served by"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Nix binary cache at {escape(host)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        "<h1>Nix binary cache</h1>",
        f"<p>A Nix binary cache {how} niks3d {escape(__version__)}. Add its URL to your substituters and trust its",
        "public keys, and Nix downloads from here what it would otherwise build.</p>",
        *(["<p>Nix reads the bucket directly: the URL below is the bucket's.</p>"] if direct else []),
        "",
        "<h2>Cache URL</h2>",
        *_pre([url]),
        "",
        "<h2>Public keys</h2>",
        *_pre(public_keys),
        *_upstream_section(upstream),
        "",
        "<h2>nix.conf</h2>",
        "<p>In <code>/etc/nix/nix.conf</code> (or, for a trusted user, <code>~/.config/nix/nix.conf</code>):</p>",
        *_pre(
            [
                *note,
                f"extra-substituters = {url}",
                f"extra-trusted-public-keys = {keys}",
                *(["netrc-file = /etc/nix/netrc"] if private else []),
            ]
        ),
        "",
        "<h2>NixOS</h2>",
        "<p>In <code>configuration.nix</code>:</p>",
        *_pre(
            [
                "nix.settings = {",
                *(f"  {line}" for line in note),
                f'  extra-substituters = [ "{url}" ];',
                "  extra-trusted-public-keys = [",
                *(f'    "{k}"' for k in trusted),
                "  ];",
                *(['  netrc-file = "/etc/nix/netrc";'] if private else []),
                "};",
            ]
        ),
    ]
    if not direct:
        out += [
            "",
            "<h2>Pushing with stock Nix</h2>",
            "<p>With a token that has the <code>push</code> scope in the netrc file (<code>machine",
            f"{escape(host)} password &lt;token&gt;</code> in <code>/etc/nix/netrc</code>), <code>nix copy</code>",
            "uploads to this cache; niks3d checks every NAR and signs the narinfos itself. Under",
            "<code>roots/&lt;name&gt;</code> the paths join a named root that garbage collection keeps:</p>",
            *_pre(
                [
                    f"nix copy --to '{url.rstrip('/')}/?compression=zstd' ./result",
                    f"nix copy --to '{url.rstrip('/')}/roots/release-1?compression=zstd' ./result",
                ]
            ),
        ]
    if private:
        out += [
            "",
            "<h2>Credentials</h2>",
            "<p>This cache is private: every request needs a token with the <code>read</code> scope. Nix sends",
            "it from the netrc file named by <code>netrc-file</code>, <code>/etc/nix/netrc</code> (mode 0600):</p>",
            *_pre([f"machine {host}", "password <your token>"]),
        ]
    if sign_in:
        out += _sign_in_section(sign_in, url, client_certificates)
    shown = _figures(figures) if show_figures else [FIGURES_HIDDEN]
    out += ["", "<h2>Figures</h2>", *shown, "</body>", "</html>", ""]
    return "\n".join(out)


async def landing(request: web.Request) -> web.Response:
    """``GET /``."""
    config = request.app[config_key]
    settings = config.settings
    private = settings.server.read_proxy == "private"
    # What a client needs to configure Nix (URL, public keys, snippets) is public; how big a private cache is
    # and how it is used is for its readers only.
    show_figures = not private or permits(request, "read")
    figures = await request.app[figures_key].get() if show_figures else None
    page = render_landing(
        url=cache_url(request, settings),
        public_keys=[k.public_key().to_text() for k in config.secrets.signing_keys],
        private=private,
        direct=settings.server.read_proxy == "off",
        figures=figures,
        show_figures=show_figures,
        upstream_keys=settings.cache.upstream_keys,
        sign_in=sign_in_methods(settings),
        client_certificates=settings.tls is not None and settings.tls.client_ca_file is not None,
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8")
