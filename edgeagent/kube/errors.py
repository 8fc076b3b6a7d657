"""One mapping from whatever a Kubernetes request failed with to the project's errors.

Two clients reach the API server: this package's lean ``KubeApi`` (answers are urllib3 responses) and, for the
attestation controller's typed writes, the official client (``ApiException``). Callers should not care which:
every failure comes out as an ``EdgeAgentError`` whose ``str()`` is one line naming the request and the API
server's own message, with the original kept as ``__cause__`` for the logs:

- no answer (connection refused or reset, TLS, timeout), or an answer that says "try again" (429, 5xx):
  ``Unavailable`` (a ``PeerUnreachable``): retrying later can help;
- a refusal (4xx): ``ApiError`` (a ``ClusterError``), with ``.status``; 404, 409 and 410 have subclasses
  (``NotFound``, ``Conflict``, ``Gone``) because callers branch on them (absent is fine, already exists is
  fine, the resourceVersion fell out of the watch window).

The official client is never imported here: its ``ApiException`` is recognised only if something else
already imported it, so the device side (which uses only ``KubeApi``) does not pay for it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Collection, Iterator
from typing import Any, TypeVar

import urllib3

from edgeagent.errors import ClusterError, EdgeAgentError, PeerUnreachable

T = TypeVar("T")


class ApiError(ClusterError):
    """The API server refused a request (HTTP 4xx); ``status`` is its HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """404: the object (or its kind) does not exist."""


class Conflict(ApiError):
    """409: the object already exists, or it changed since it was read."""


class Gone(ApiError):
    """410: the resourceVersion (or a list's continue token) is older than the API server keeps."""


class Unavailable(PeerUnreachable):
    """No usable answer: unreachable, or it answered 429/5xx; ``status`` is 0 when nothing came back."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


_BY_STATUS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 410: Gone}


def status_message(body: bytes | str | None) -> str:
    """The ``message`` of a Kubernetes Status body, or the body's start."""
    if not body:
        return ""
    try:
        d = json.loads(body)
        if isinstance(d, dict) and "message" in d:
            return str(d["message"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    text = body if isinstance(body, str) else body[:200].decode("utf-8", "replace")
    return text[:200]


def for_status(status: int, what: str, body: bytes | str | None = None) -> EdgeAgentError:
    """The error for an HTTP answer ``status`` to the request ``what`` ("read CSR x")."""
    detail = status_message(body)
    message = f"cannot {what}: {status}" + (f" {detail}" if detail else "")
    if status == 429 or status >= 500:
        return Unavailable(message, status=status)
    return _BY_STATUS.get(status, ApiError)(message, status=status)


def _official_api_exception() -> type[BaseException] | None:
    mod = sys.modules.get("kubernetes.client.exceptions")
    return getattr(mod, "ApiException", None) if mod is not None else None


def api_error(e: BaseException, what: str) -> EdgeAgentError:
    """The project's error for ``e``, raised by the request ``what``; raise it ``from e`` to keep the cause.

    An ``EdgeAgentError`` is returned as it is (it already says what failed).
    """
    if isinstance(e, EdgeAgentError):
        return e
    official = _official_api_exception()
    if official is not None and isinstance(e, official):
        status = int(getattr(e, "status", 0) or 0)
        if status == 0:  # the client's own failure before any answer
            return Unavailable(f"cannot {what}: {getattr(e, 'reason', '') or e}")
        return for_status(status, what, getattr(e, "body", None) or getattr(e, "reason", None))
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        return Unavailable(f"cannot {what}: API server unreachable: {type(e).__name__}: {e}")
    return ClusterError(f"cannot {what}: {type(e).__name__}: {e}")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Runs the block with every request failure re-raised as ``api_error(e, what)``."""
    try:
        yield
    except EdgeAgentError:
        raise
    except Exception as e:  # narrowed by api_error: anything unknown becomes a ClusterError
        raise api_error(e, what) from e


def call(what: str, fn: Callable[..., T], *args: Any, ok: Collection[int] = (), **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` with failures translated; None when the API server answered a status in ``ok``.

    ``ok=(404,)`` reads "absent is fine", ``ok=(409,)`` "already there is fine": the idempotent steps of a
    reconcile loop, which otherwise each needed their own try/except.
    """
    try:
        with translated(what):
            return fn(*args, **kwargs)
    except (ApiError, Unavailable) as e:
        if e.status in ok:
            return None
        raise
