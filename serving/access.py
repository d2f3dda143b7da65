"""Who may call what: an ASGI middleware in front of every endpoint of the service.

    /recommend /similar /feedback /ui/api/*   a client API key (serving.keys) that allows the
                                              endpoint, sent as `Authorization: Bearer <key>` or
                                              `X-API-Key: <key>`: else 401 (none, or not a key)
                                              or 403 (a key without that endpoint); then the
                                              key's rate limit (serving.ratelimit): else 429
                                              with Retry-After
    /metrics /status                          the admin token (VIDREC_RELOAD_TOKEN) when
                                              VIDREC_OPS_ADMIN_ONLY=1, else open
    everything else                           open (probes, the /ui page and its assets; /reload
                                              checks its admin token itself)

With no keys configured and VIDREC_API_KEYS_REQUIRED=0 (the local profile's default) client
endpoints are open. Refusals are logged with the key's name, never with what the client sent.

    VIDREC_RATE_LIMIT_URL   where the buckets live: "memory" (per worker) or redis://host:port/db
                            (shared by all workers); default: memory in the local profile, else
                            the precomputed store's Redis when there is one
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass

from serving.guard import reply_json
from serving.keys import ApiKey, KeyRing, keys_required
from serving.ratelimit import LocalBuckets, RedisBuckets, retry_after
from vidrec.settings import Settings, SettingsError

log = logging.getLogger("vidrec.serving")
OPS_PATHS = ("/metrics", "/status")


def endpoint_of(path: str) -> str | None:
    """The protected endpoint a path belongs to, or None."""
    if path in ("/recommend", "/similar", "/feedback"):
        return path
    if path == "/ui/api" or path.startswith("/ui/api/"):
        return "/ui/api"
    return None


@dataclass(frozen=True)
class AccessPolicy:
    keys: KeyRing
    admin_token: str | None
    ops_admin_only: bool
    limiter_url: str

    @property
    def keys_on(self) -> bool:
        return len(self.keys) > 0

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> AccessPolicy:
        """The policy of this deployment; refuses (SettingsError) what must not start."""
        settings = settings or Settings.from_env()
        keys = KeyRing.from_env()
        if keys_required(settings) and not len(keys):
            raise SettingsError(
                f"the {settings.profile} profile serves only clients with API keys, and none is configured: "
                "make one with `vidrec keys add --name <app> --file keys.json` and set VIDREC_API_KEYS_FILE "
                "(or VIDREC_API_KEYS from a secret store), or set VIDREC_API_KEYS_REQUIRED=0 to serve everyone"
            )
        ops_admin_only = os.environ.get("VIDREC_OPS_ADMIN_ONLY", "0").strip().lower() in ("1", "true", "yes")
        admin_token = os.environ.get("VIDREC_RELOAD_TOKEN") or None
        if ops_admin_only and not admin_token:
            raise SettingsError("VIDREC_OPS_ADMIN_ONLY=1 needs the admin token VIDREC_RELOAD_TOKEN")
        default = "memory"
        precomputed = os.environ.get("VIDREC_PRECOMPUTED_URL", "")
        if settings.profile != "local" and precomputed.startswith("redis://"):
            default = precomputed
        limiter = os.environ.get("VIDREC_RATE_LIMIT_URL", default)
        if limiter != "memory" and not limiter.startswith("redis://"):
            raise SettingsError(f"VIDREC_RATE_LIMIT_URL={limiter!r}: use memory or redis://host:port/db")
        return cls(keys, admin_token, ops_admin_only, limiter)


def presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


class AccessControl:
    def __init__(self, app, policy: AccessPolicy):
        self.app = app
        self.policy = policy
        self._limiter = None
        self._refused = None

    @property
    def limiter(self):
        if self._limiter is None:  # made in the worker, on first use
            url = self.policy.limiter_url
            self._limiter = LocalBuckets() if url == "memory" else RedisBuckets(url)
        return self._limiter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = endpoint_of(path)
        if endpoint is not None and self.policy.keys_on:
            refusal = self._check_client(endpoint, _headers(scope))
            if refusal is not None:
                return await reply_json(send, *refusal)
        elif path in OPS_PATHS and self.policy.ops_admin_only:
            token = presented_key(_headers(scope))
            if not (token and hmac.compare_digest(token.encode(), self.policy.admin_token.encode())):
                self._count("admin token")
                return await reply_json(send, 401, f"{path} needs the admin token: Authorization: Bearer <token>")
        return await self.app(scope, receive, send)

    def _check_client(self, endpoint: str, headers: dict[str, str]) -> tuple | None:
        presented = presented_key(headers)
        if presented is None:
            self._count("no key")
            return (401, f"{endpoint} needs an API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                    [(b"www-authenticate", b"Bearer")])  # fmt: skip
        key: ApiKey | None = self.policy.keys.check(presented)
        if key is None:
            self._count("invalid key")
            return 401, "the API key is not valid", [(b"www-authenticate", b'Bearer error="invalid_token"')]
        if not key.allows(endpoint):
            self._count("endpoint not allowed")
            log.info("key %r refused on %s (not one of its endpoints)", key.name, endpoint)
            return 403, f"key {key.name!r} may not call {endpoint}", []
        wait = self.limiter.take(key)
        if wait > 0:
            self._count("rate limited")
            return (429, f"key {key.name!r} is over its rate limit ({key.rate_per_s:g}/s, burst {key.burst}): "
                    f"retry in {retry_after(wait)} s", [(b"retry-after", retry_after(wait).encode())])  # fmt: skip
        return None

    def _count(self, reason: str) -> None:
        if self._refused is None:
            from prometheus_client import Counter

            self._refused = Counter("vidrec_access_refused", "Requests refused by access control", ["reason"])
        self._refused.labels(reason).inc()


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
