"""``/api/v1/tokens``: admins make, list and revoke API tokens (``tidemill token``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from tidemill.api.errors import SpecError
from tidemill.api.token import ALL_NAMESPACES, CreatedToken, Role, TokenRequest, TokenView
from tidemill.server.auth import Caller, Guard
from tidemill.server.tokens import create_token, revoke_token, token_view


class TokenList(BaseModel):
    items: list[TokenView]


def token_routes(guard: Guard) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
    store = guard.store
    caller_of = Depends(guard.caller)

    def admin(caller: Caller, verb: str) -> None:
        caller.require(Role.ADMIN, ALL_NAMESPACES, verb)

    @router.get("", response_model=TokenList)
    def list_tokens(caller: Caller = caller_of) -> TokenList:
        """Every token, revoked ones included; never their secrets."""
        admin(caller, "list tokens")
        with store.read() as tx:
            return TokenList(items=[token_view(row) for row in tx.tokens()])

    @router.post(
        "",
        status_code=201,
        response_model=CreatedToken,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        # Role is among the app's components (TokenView uses it).
                        "schema": TokenRequest.model_json_schema(
                            ref_template="#/components/schemas/{model}"
                        )
                    }
                },
            }
        },
    )
    async def create(request: Request, caller: Caller = caller_of) -> CreatedToken:
        """Make a token; the answer holds its secret, which is never shown again."""
        admin(caller, "create tokens")
        wanted = _token_request(await request.body())
        with store.transaction() as tx:
            return create_token(tx, wanted, caller.actor)

    @router.delete("/{name}", response_model=TokenView)
    def revoke(name: str, caller: Caller = caller_of) -> TokenView:
        """Refuse the token from the next request on."""
        admin(caller, "revoke tokens")
        with store.transaction() as tx:
            return revoke_token(tx, name, caller.actor)

    return router


def _token_request(body: bytes) -> TokenRequest:
    """The body as a TokenRequest, or a SpecError naming each bad field."""
    try:
        document: Any = json.loads(body or b"{}")
    except ValueError as exc:
        why = f"not JSON ({exc}); send {{namespace, role, name}}"
        raise SpecError.single("<body>", why) from None
    if not isinstance(document, dict):
        raise SpecError.single("<body>", "expected a JSON object {namespace, role, name}")
    return TokenRequest.checked(**document)


__all__ = ["token_routes"]
