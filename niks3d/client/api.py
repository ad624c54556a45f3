"""A typed client of the niks3d HTTP API (docs/api.md), with retries and errors that say what to fix.

Every call of the API is safe to repeat, so every call is retried on connection errors, 429 and 5xx. Answers
are parsed into the models of :mod:`niks3d.client.models`. Refusals become exceptions: a refused token or a
missing scope is a :class:`ClientError` naming the token file; ``409 objects_pending`` and ``422
objects_missing`` on ``complete`` are :class:`ObjectsPending` and :class:`ObjectsMissing`, which the push
handles; any other 4xx is an :class:`ApiError` with the server's code and message.
"""

from __future__ import annotations

__all__ = ["API_VERSION", "ApiClient", "ObjectsMissing", "ObjectsPending", "SessionClosed"]

import contextlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import BaseModel, ValidationError

from niks3d import __version__
from niks3d.client.config import ClientConfig
from niks3d.client.models import (
    CompleteAnswer,
    MissingObject,
    ObjectSpec,
    Pin,
    ReportAnswer,
    ServerInfo,
    SessionAnswer,
)
from niks3d.client.retry import RetryPolicy
from niks3d.client.transport import Response, send
from niks3d.errors import ApiError, AuthError, ClientError

API_VERSION = 1
USER_AGENT = f"niks3/{__version__}"

_M = TypeVar("_M", bound=BaseModel)
_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=120)
# opening a session checks and claims every path of a closure; complete may verify and sign thousands of
# paths (and download every NAR with s3.verify = "full")
_COMPLETE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=3600)


class ObjectsPending(ApiError):
    """``409 objects_pending``: another open session is still uploading objects this one needs."""

    def __init__(self, message: str, pending: list[str], retry_after: float) -> None:
        super().__init__(409, "objects_pending", message)
        self.pending = pending
        self.retry_after = retry_after


class ObjectsMissing(ApiError):
    """``422 objects_missing``: objects are absent or short; ``objects`` are fresh specs to upload them."""

    def __init__(self, message: str, missing: list[MissingObject], objects: list[ObjectSpec]) -> None:
        super().__init__(422, "objects_missing", message)
        self.missing = missing
        self.objects = objects


class SessionClosed(ApiError):
    """``409 session_closed``: the session was aborted or expired."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "session_closed", message)


def _json_object(resp: Response) -> dict[str, Any]:
    try:
        data = json.loads(resp.body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _answer(resp: Response, what: str) -> dict[str, Any]:
    data = _json_object(resp)
    if not data:
        raise ClientError(f"cannot understand the server's answer to {what}: not a JSON object")
    return data


class ApiClient:
    """The niks3d API at ``config.server_url``, called through ``http`` (which the caller owns)."""

    def __init__(self, http: aiohttp.ClientSession, config: ClientConfig, policy: RetryPolicy | None = None) -> None:
        self.http = http
        self.config = config
        self.policy = policy or RetryPolicy()

    # -- plumbing ---------------------------------------------------------------------------------------

    @property
    def _refusal_hint(self) -> str | None:
        tls = self.config.tls_source
        if tls is None or "client certificate" not in tls:
            return None
        return (
            f"the server closed the connection without an answer, as it does when it refuses the {tls}: "
            "is the certificate signed by the server's tls.client_ca_file, and still valid?"
        )

    async def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.config.oidc is not None:
            headers["Authorization"] = f"Bearer {await self.config.oidc.token(self.http)}"
        elif self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.value}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        scope: str,
        ok: tuple[int, ...] = (200,),
        limits: aiohttp.ClientTimeout = _DEFAULT_TIMEOUT,
    ) -> Response:
        url = self.config.api_url + path
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        resp = await send(
            self.http,
            method,
            url,
            what=f"{method} {url}",
            policy=self.policy,
            headers=await self._headers(payload is not None),
            body=(lambda: payload) if payload is not None else None,
            limits=limits,
            ssl_context=self.config.ssl_context,
            refusal_hint=self._refusal_hint,
        )
        if resp.status in ok:
            return resp
        raise self._refusal(method, url, resp, scope)

    def _refusal(self, method: str, url: str, resp: Response, scope: str) -> Exception:
        data = _json_object(resp)
        code = str(data.get("error") or "")
        message = str(data.get("message") or resp.body[:200].decode("utf-8", "replace").strip() or "no message")
        token = self.config.token
        oidc = self.config.oidc
        if resp.status == 401 and oidc is not None:
            return AuthError(f"{self.config.server_url} refused the OIDC token from {oidc.source} (401): {message}")
        if resp.status == 403 and oidc is not None:
            return AuthError(
                f"the OIDC token from {oidc.source} lacks the {scope!r} scope for {method} {url} (403): {message}"
            )
        if resp.status == 401:
            if token is None:
                return AuthError(
                    f"{self.config.server_url} needs an API token (401): pass --token-file: {message}"
                    if self.config.tls_source is None
                    else f"{self.config.server_url} refused the request with {self.config.tls_source} (401): {message}"
                )
            return AuthError(f"{self.config.server_url} refused the token from {token.source} (401): {message}")
        if resp.status == 403:
            if token is None and self.config.tls_source is not None:
                return AuthError(
                    f"the {self.config.tls_source} lack the {scope!r} scope for {method} {url} (403): {message}"
                )
            return AuthError(
                f"the token from {token.source if token else '(none)'} lacks the {scope!r} scope "
                f"for {method} {url} (403): {message}"
            )
        if resp.status == 409 and code == "objects_pending":
            pending = [str(k) for k in data.get("pending", [])]
            retry_after = data.get("retry_after", resp.retry_after or 5)
            return ObjectsPending(message, pending, float(retry_after if isinstance(retry_after, int | float) else 5))
        if resp.status == 409 and code == "session_closed":
            return SessionClosed(message)
        if resp.status == 422 and code == "objects_missing":
            try:
                missing = [MissingObject.model_validate(m) for m in data.get("missing", [])]
                objects = [ObjectSpec.model_validate(o) for o in data.get("objects", [])]
            except ValidationError as exc:
                return ClientError(f"{method} {url}: cannot understand the server's 422 answer: {exc}")
            return ObjectsMissing(message, missing, objects)
        if resp.status >= 500 or not code:
            return ClientError(f"{method} {url} failed with HTTP {resp.status}: {message}")
        extra = {k: v for k, v in data.items() if k not in ("error", "message")}
        return ApiError(resp.status, code, f"{method} {url}: {message}", **extra)

    def _parse(self, model: type[_M], resp: Response, what: str) -> _M:
        try:
            return model.model_validate_json(resp.body)
        except ValidationError as exc:
            raise ClientError(f"cannot understand the server's answer to {what}: {exc}") from None

    # -- info -------------------------------------------------------------------------------------------

    async def info(self) -> ServerInfo:
        """``GET /info``, checking that the server is niks3d and speaks API version 1."""
        url = self.config.api_url + "/info"
        resp = await send(
            self.http,
            "GET",
            url,
            what=f"GET {url}",
            policy=self.policy,
            headers=await self._headers(False),
            limits=_DEFAULT_TIMEOUT,
            ssl_context=self.config.ssl_context,
            refusal_hint=self._refusal_hint,
        )
        if resp.status != 200:
            raise ClientError(
                f"{self.config.server_url} does not look like a niks3d server: GET {url} answered HTTP {resp.status}"
            )
        try:
            info = ServerInfo.model_validate_json(resp.body)
        except ValidationError:
            raise ClientError(
                f"{self.config.server_url} does not look like a niks3d server: {url} is not niks3d's info document"
            ) from None
        if info.service != "niks3d":
            raise ClientError(f"{self.config.server_url} is a {info.service!r} server, not niks3d")
        if API_VERSION not in info.api_versions:
            raise ClientError(
                f"version mismatch: the server (niks3d {info.version}) speaks API version(s) "
                f"{', '.join(map(str, info.api_versions)) or 'none'}, this client ({USER_AGENT}) speaks "
                f"{API_VERSION}; install a matching niks3 client"
            )
        return info

    # -- sessions ---------------------------------------------------------------------------------------

    async def create_session(self, body: Mapping[str, Any]) -> tuple[SessionAnswer, bool]:
        """``POST /sessions``; returns the answer and whether a new session was opened (201)."""
        resp = await self._call("POST", "/sessions", body, scope="push", ok=(200, 201), limits=_COMPLETE_TIMEOUT)
        answer = self._parse(SessionAnswer, resp, "POST /sessions")
        # A large session's answer comes in pages (docs/api.md): the first with the session, the rest from here.
        if answer.state == "completed":  # everything is cached: the other pages say nothing more
            return answer, resp.status == 201
        paths = list(answer.paths)
        start = answer.next
        while start is not None:
            if start != len(paths):  # pages follow each other: anything else would never end
                raise ClientError(f"the server's next page of session {answer.session_id} starts at {start}")
            page = await self.session_page(answer.session_id, start)
            paths += page.paths
            start = page.next
        return answer.model_copy(update={"paths": paths, "next": None}), resp.status == 201

    async def session_page(self, session_id: str, start: int) -> SessionAnswer:
        """``GET /sessions/{id}/paths?start=N``: one page of the session's answer."""
        resp = await self._call(
            "GET", f"/sessions/{quote(session_id)}/paths?start={start}", scope="push", limits=_COMPLETE_TIMEOUT
        )
        return self._parse(SessionAnswer, resp, "GET /sessions/{id}/paths")

    async def request_urls(self, session_id: str, objects: list[dict[str, Any]]) -> list[ObjectSpec]:
        """``POST /sessions/{id}/urls``: fresh specs for ``[{"key": …, "parts": […]}]``."""
        resp = await self._call("POST", f"/sessions/{quote(session_id)}/urls", {"objects": objects}, scope="push")
        data = _json_object(resp)
        try:
            return [ObjectSpec.model_validate(o) for o in data.get("objects", [])]
        except ValidationError as exc:
            raise ClientError(f"cannot understand the server's answer to POST .../urls: {exc}") from None

    async def report_objects(self, session_id: str, reports: Mapping[str, Mapping[str, Any]]) -> ReportAnswer:
        """``POST /sessions/{id}/objects``."""
        resp = await self._call(
            "POST",
            f"/sessions/{quote(session_id)}/objects",
            {"objects": dict(reports)},
            scope="push",
            limits=_COMPLETE_TIMEOUT,
        )
        return self._parse(ReportAnswer, resp, "POST .../objects")

    async def complete(self, session_id: str, reports: Mapping[str, Mapping[str, Any]]) -> CompleteAnswer:
        """``POST /sessions/{id}/complete``; raises ObjectsPending, ObjectsMissing or SessionClosed."""
        resp = await self._call(
            "POST",
            f"/sessions/{quote(session_id)}/complete",
            {"objects": dict(reports)},
            scope="push",
            limits=_COMPLETE_TIMEOUT,
        )
        return self._parse(CompleteAnswer, resp, "POST .../complete")

    async def session_status(self, session_id: str) -> dict[str, Any]:
        """``GET /sessions/{id}``."""
        resp = await self._call("GET", f"/sessions/{quote(session_id)}", scope="push")
        return _json_object(resp)

    async def abort_session(self, session_id: str) -> None:
        """``DELETE /sessions/{id}``; a session that is already closed counts as aborted."""
        with contextlib.suppress(SessionClosed):
            await self._call("DELETE", f"/sessions/{quote(session_id)}", scope="push")

    # -- pins -------------------------------------------------------------------------------------------

    async def put_pin(self, name: str, path: str) -> Pin:
        """``PUT /pins/{name}``: create or move a pin."""
        resp = await self._call("PUT", f"/pins/{quote(name, safe='')}", {"path": path}, scope="pin")
        return self._parse(Pin, resp, "PUT /pins")

    async def list_pins(self) -> list[Pin]:
        """``GET /pins``."""
        resp = await self._call("GET", "/pins", scope="read")
        data = _json_object(resp)
        try:
            return [Pin.model_validate(p) for p in data.get("pins", [])]
        except ValidationError as exc:
            raise ClientError(f"cannot understand the server's answer to GET /pins: {exc}") from None

    async def get_pin(self, name: str) -> Pin:
        """``GET /pins/{name}``."""
        resp = await self._call("GET", f"/pins/{quote(name, safe='')}", scope="read")
        return self._parse(Pin, resp, "GET /pins/{name}")

    async def delete_pin(self, name: str) -> bool:
        """``DELETE /pins/{name}``; False if there was no such pin (a retried delete also ends here)."""
        try:
            await self._call("DELETE", f"/pins/{quote(name, safe='')}", scope="pin", ok=(200, 204))
        except ApiError as exc:
            if exc.status == 404 and exc.code == "pin_not_found":
                return False
            raise
        return True

    # -- garbage collection and deletion ---------------------------------------------------------------------
    # The answers are passed on as the server's JSON objects: `niks3 gc --json` prints them as they are.

    async def start_gc(self, params: dict[str, Any]) -> dict[str, Any]:
        """``POST /gc``: start a run (202); ApiError ``gc_running`` (with ``run_id``) while another runs."""
        return _answer(await self._call("POST", "/gc", params, scope="gc", ok=(202,)), "POST /gc")

    async def get_gc_run(self, run_id: int) -> dict[str, Any]:
        """``GET /gc/{run_id}``: a run's state, phase and counts."""
        return _answer(await self._call("GET", f"/gc/{run_id}", scope="read"), "GET /gc/{run_id}")

    async def delete_path(self, basename: str, *, closure: bool = False, force: bool = False) -> dict[str, Any]:
        """``DELETE /paths/{basename}``: the paths deleted, and those kept because something uses them."""
        query = urlencode({k: "1" for k, on in (("closure", closure), ("force", force)) if on})
        where = f"/paths/{quote(basename, safe='')}" + (f"?{query}" if query else "")
        return _answer(await self._call("DELETE", where, scope="gc"), "DELETE /paths")
