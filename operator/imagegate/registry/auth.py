"""Registry authorisation for the client (registry/client.py): Basic auth, and bearer tokens from
the `WWW-Authenticate` challenge, cached per (registry, scope, credentials) until they expire.

Tokens are cached per credentials, so one namespace's token is never sent on behalf of another.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from imagegate.registry.errors import RegistryUnavailable, Unauthorized
from imagegate.registry.keychain import Credentials

_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
#: Tokens kept at most (one per registry, repository and credentials).
MAX_TOKENS = 4096
#: Longest a token is kept, whatever `expires_in` says (registries give minutes).
MAX_TOKEN_SECONDS = 86_400


def _basic(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


@dataclass
class _Token:
    value: str
    expires: float


class Tokens:
    """`Authorization` values by (registry, scope, credentials), until they expire; bounded."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, Credentials | None], _Token] = {}

    def get(self, registry: str, scope: str, credentials: Credentials | None) -> str | None:
        token = self._tokens.get((registry, scope, credentials))
        if token is None or token.expires <= self._clock():
            return None
        return token.value

    def _keep(self, key: tuple[str, str, Credentials | None], token: _Token) -> None:
        self._tokens[key] = token
        if len(self._tokens) > MAX_TOKENS:
            # Oldest first (dicts keep insertion order): bounded whatever the pull secrets.
            del self._tokens[next(iter(self._tokens))]

    async def authorise(
        self,
        session: aiohttp.ClientSession,
        *,
        registry: str,
        scope: str,
        credentials: Credentials | None,
        headers: Mapping[str, str],
        request_timeout: float,
        deadline: float | None,
        tls: ssl.SSLContext | bool = True,
    ) -> None:
        """Answer a 401's challenge (in `headers`): keep a Basic value, or fetch a bearer token.

        `tls`: the asking endpoint's (a mirror's CA or skip_verify), as containerd uses the host's
        TLS settings for its token service too."""
        challenge = headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        key = (registry, scope, credentials)
        if scheme.lower() == "basic":
            if credentials is None:
                raise Unauthorized(
                    f"{registry} wants credentials and imagegate has none for it (give the Pod "
                    "an imagePullSecret, or the policy spec.pullSecrets)"
                )
            self._keep(key, _Token(_basic(credentials), float("inf")))
            return
        if scheme.lower() != "bearer":
            raise Unauthorized(f"{registry} sent an unsupported challenge {challenge!r}")
        fields = dict(_CHALLENGE.findall(rest))
        realm = fields.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise Unauthorized(f"{registry} sent a bearer challenge without a usable realm")
        params = {"scope": fields.get("scope", scope)}
        if "service" in fields:
            params["service"] = fields["service"]
        token_headers = {}
        if credentials is not None:
            token_headers["Authorization"] = _basic(credentials)
        timeout = request_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - self._clock()))
        try:
            async with session.get(
                realm,
                params=params,
                headers=token_headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=tls,
            ) as reply:
                if reply.status in (401, 403):
                    raise Unauthorized(f"{registry}'s token service refused the credentials")
                if reply.status != 200:
                    raise RegistryUnavailable(f"{registry}'s token service answered {reply.status}")
                data = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as error:
            raise RegistryUnavailable(f"{registry}'s token service failed: {error}") from error
        value = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise Unauthorized(f"{registry}'s token service sent no token")
        lifetime = data.get("expires_in", 60)
        usable = isinstance(lifetime, int | float) and lifetime > 0
        # At most a day: an integer of 400 digits has no float (OverflowError), and inf no end.
        lifetime = float(min(lifetime, MAX_TOKEN_SECONDS)) if usable else 60.0
        # Refresh a little early so a token never expires in flight.
        self._keep(key, _Token(f"Bearer {value}", self._clock() + lifetime * 0.9))
