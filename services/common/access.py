"""Who may call each RPC: the access class and API-key scope the contract declares on it.

Every rpc in proto/ carries `option (pingvas.access.v1.method)`. The services read it from the
method descriptors (`Endpoint`, services/common/rpc.py) and nowhere else keeps a table of it: a
service refuses to start if one of its RPCs declares nothing, or if its servicer method
authenticates differently from what the declaration says.

- PUBLIC and WEBHOOK: no bearer is verified (a webhook checks its own signature).
- USER and OWNER: a user's access token, or an API key holding the declared scope. OWNER differs
  only in the domain: another user's resource is NOT_FOUND, as if it did not exist.
- ADMIN: no bearer is an administrator; `pingvas admin` (database credentials) is the admin
  surface.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor
from pingvas.access.v1 import access_pb2

from services.common.auth import Principal
from services.common.errors import PermissionDenied

AccessClass = access_pb2.AccessClass
PUBLIC = access_pb2.ACCESS_CLASS_PUBLIC
USER = access_pb2.ACCESS_CLASS_USER
OWNER = access_pb2.ACCESS_CLASS_OWNER
ADMIN = access_pb2.ACCESS_CLASS_ADMIN
WEBHOOK = access_pb2.ACCESS_CLASS_WEBHOOK

# A scope's name on a key (`read`, `generate`), by its ApiKeyScope number: the enum is the one
# list of scopes.
SCOPE_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("API_KEY_SCOPE_").lower()
    for value in access_pb2.ApiKeyScope.DESCRIPTOR.values
    if value.number != access_pb2.API_KEY_SCOPE_UNSPECIFIED
}
KNOWN_SCOPES = frozenset(SCOPE_NAMES.values())


@dataclass(frozen=True)
class MethodAccess:
    """One RPC's declaration: its class and the scope an API key needs (None: keys may not)."""

    method: str
    access_class: int
    api_key_scope: str | None

    @property
    def authenticates_bearer(self) -> bool:
        """Whether the services verify a bearer for it (every class but PUBLIC and WEBHOOK)."""
        return self.access_class in (USER, OWNER, ADMIN)

    def authorize(self, caller: Principal) -> None:
        """Raise PermissionDenied unless the authenticated `caller` may call the method."""
        if self.access_class == ADMIN:
            raise PermissionDenied(f"{self.method} is for administrators")
        if caller.api_key_id is None:
            return
        if self.api_key_scope is None:
            raise PermissionDenied(f"API keys cannot call {self.method}; use a user's access token")
        if self.api_key_scope not in caller.scopes:
            raise PermissionDenied(
                f"this API key lacks the `{self.api_key_scope}` scope that {self.method} needs",
                metadata={"required_scope": self.api_key_scope},
            )


def method_access(method: MethodDescriptor) -> MethodAccess:
    """The declaration of `method`; ValueError if it declares none."""
    options = method.GetOptions()
    declared = options.Extensions[access_pb2.method] if options.HasExtension(access_pb2.method) else None
    if declared is None or declared.access_class == access_pb2.ACCESS_CLASS_UNSPECIFIED:
        raise ValueError(f"{method.full_name} declares no access class (pingvas.access.v1.method)")
    return MethodAccess(
        method=method.full_name,
        access_class=declared.access_class,
        api_key_scope=SCOPE_NAMES.get(declared.api_key_scope),
    )
