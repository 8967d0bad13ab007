"""``Routes``: how the edge's modules add their routes to the application's router.

Every route gets ``problems.expect_continue`` as its ``expect_handler``. aiohttp's
default answers an ``Expect`` other than ``100-continue`` with a text/plain 417
before any middleware runs; with ours the middleware answers it problem+json, like
every other refusal. Used by ``create_app`` and by the admin, incident, Slack and
console modules, instead of ``app.router`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.web.problems import expect_continue

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler


class Routes:
    """A router's ``add_get``, ``add_post`` and ``add_delete``, our way."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        self._router = router

    def add_get(
        self, path: str, handler: Handler, *, name: str | None = None
    ) -> web.AbstractRoute:
        """A GET route (and its HEAD)."""
        return self._router.add_get(
            path, handler, name=name, expect_handler=expect_continue
        )

    def add_post(
        self, path: str, handler: Handler, *, name: str | None = None
    ) -> web.AbstractRoute:
        """A POST route."""
        return self._router.add_post(
            path, handler, name=name, expect_handler=expect_continue
        )

    def add_delete(
        self, path: str, handler: Handler, *, name: str | None = None
    ) -> web.AbstractRoute:
        """A DELETE route."""
        return self._router.add_delete(
            path, handler, name=name, expect_handler=expect_continue
        )
