"""An open server serves its own user only: a call from another user of this machine
is refused before anything is read (see :mod:`tidemill.peer_user`)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tidemill.peer_user import socket_owner
from tidemill.server.middleware import error_body


class OwnUserOnly:
    """Refuse a call from another user of this machine, before anything is read."""

    def __init__(self, app: ASGIApp, uid: int | None) -> None:
        self.app = app
        self.uid = uid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, server = scope.get("client"), scope.get("server")
        if self.uid is None or scope["type"] != "http" or not client or not server:
            await self.app(scope, receive, send)
            return
        try:
            owner = socket_owner((client[0], client[1]), (server[0], server[1]))
        except OSError:
            owner = None
        if owner == self.uid:
            await self.app(scope, receive, send)
            return
        who = f"uid {owner}" if owner is not None else "a user the kernel did not name"
        message = (
            f"this server runs open (no --auth) for its own user (uid {self.uid}) only, and "
            f"this call comes from {who}: to share it, its owner starts it with --auth and "
            "gives you a token (tidemill token create)"
        )
        response = JSONResponse(error_body("AnotherUser", message, []), 403)
        await response(scope, receive, send)


__all__ = ["OwnUserOnly"]
