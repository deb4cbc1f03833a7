"""API tokens as the REST API shows them: who may do what, in which namespace.

A token carries one role over one namespace, or over every namespace (``*``):

- ``viewer`` reads jobs, events and logs;
- ``editor`` also submits, scales and deletes jobs;
- ``admin`` (always over ``*``) may do everything, and manages tokens.

The secret itself is shown once, when the token is made; the server keeps its hash.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tidemill.api._model import validate_dns_label
from tidemill.api.errors import from_validation_error

ALL_NAMESPACES = "*"


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def covers(self, needed: Role) -> bool:
        """An editor may do what a viewer may; an admin what anyone may."""
        order = (Role.VIEWER, Role.EDITOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)


def scope_text(role: Role | str, namespace: str) -> str:
    """``(editor, ads)``: how a token is named in events and refusals."""
    return f"({Role(role).value}, {namespace})"


class TokenRequest(BaseModel):
    """What ``POST /api/v1/tokens`` takes (``tidemill token create``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, description="unique name, used by revoke; default: namespace-role-xxxx"
    )
    role: Role = Role.VIEWER
    namespace: str | None = Field(
        default=None,
        validate_default=True,
        description="the namespace it covers, or '*' for all (admins: always '*')",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else validate_dns_label(value, "token name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role is Role.ADMIN and value not in (None, ALL_NAMESPACES):
            raise ValueError(
                f"an admin token covers every namespace, not only {value!r}; leave out "
                "the namespace, or make an editor token for it"
            )
        if value is None and role in (Role.VIEWER, Role.EDITOR):
            raise ValueError(f"{role.value} tokens need a namespace (e.g. 'ads', or '*' for all)")
        if value is None or value == ALL_NAMESPACES:
            return value
        return validate_dns_label(value, "namespace (or '*' for all namespaces)")

    @classmethod
    def checked(cls, **fields: object) -> TokenRequest:
        """Validated, or a SpecError naming each bad field (``role: ...``)."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise from_validation_error(exc, set(cls.model_fields)) from None

    @property
    def scope(self) -> str:
        return self.namespace or ALL_NAMESPACES


class TokenView(BaseModel):
    """A token without its secret (``tidemill token list``)."""

    name: str
    namespace: str = Field(description="the namespace it covers, or '*' for all")
    role: Role
    created_at: float
    revoked: bool = False


class CreatedToken(TokenView):
    """The answer to creating a token: the only time its secret is shown."""

    token: str = Field(description="send as 'Authorization: Bearer TOKEN'; not shown again")


__all__ = ["ALL_NAMESPACES", "CreatedToken", "Role", "TokenRequest", "TokenView", "scope_text"]
