"""The push protocol's domain logic: upload sessions, object reports, and publication (docs/api.md).

HTTP handlers in :mod:`niks3d.server` parse requests and call these; this package talks to PostgreSQL through
:mod:`niks3d.db` and to the bucket through :mod:`niks3d.storage`, and never sees an aiohttp request.
"""

from __future__ import annotations

__all__ = [
    "BEING_PLACED",
    "PushContext",
    "SessionRequest",
    "abort_session",
    "build_response",
    "complete_session",
    "open_session",
    "refresh_urls",
    "report_objects",
    "session_status",
]

from niks3d.uploads.context import PushContext
from niks3d.uploads.lifecycle import abort_session, session_status
from niks3d.uploads.open import build_response, open_session, refresh_urls
from niks3d.uploads.publish import complete_session
from niks3d.uploads.report import BEING_PLACED, report_objects
from niks3d.uploads.request import SessionRequest
