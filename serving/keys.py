"""Client API keys: who may call which endpoint, at what rate.

A key looks like `vk_<key id>_<secret>`. Keys come from either or both of:

    VIDREC_API_KEYS_FILE   a JSON file of salted hashes (never plain keys), written by
                           `vidrec keys add`: {"keys": [{"name", "key_id", "salt", "sha256",
                           "endpoints", "rate_per_s", "burst"}]}
    VIDREC_API_KEYS        a JSON list of {"name", "key", "endpoints", "rate_per_s", "burst"} with
                           plain keys, for keys handed over by a secret store through the
                           environment (they are hashed at load and never written anywhere)

`endpoints`: paths a key may call ("/recommend", "/similar", "/feedback", "/ui/api"); ["*"] = all
of them. `rate_per_s` and `burst`: the key's token bucket (serving.ratelimit); 0 = unlimited.
Checks are a SHA-256 HMAC under the entry's salt and `hmac.compare_digest`: constant time, and a
key's secret never leaves this module (logs and metrics name the key).

    VIDREC_API_KEYS_REQUIRED   1 in the prod and spark profiles, 0 in local: with 1 the service
                               refuses to start without keys; with 0 and no keys it serves
                               everyone, with a warning at start
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from feature_repo.lake import write_text_atomic
from vidrec.settings import Settings, SettingsError

PROTECTED = ("/recommend", "/similar", "/feedback", "/ui/api")  # what a client key is for
ANY = "*"
PREFIX = "vk"


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_id: str
    salt: bytes
    digest: bytes
    endpoints: frozenset[str]
    rate_per_s: float = 0.0
    burst: int = 0

    def allows(self, endpoint: str) -> bool:
        return ANY in self.endpoints or endpoint in self.endpoints


def digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _endpoints(raw, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        raise SettingsError(f'{where}: endpoints must be a non-empty list of paths, e.g. ["/recommend"]')
    unknown = [e for e in raw if e != ANY and e not in PROTECTED]
    if unknown:
        raise SettingsError(f'{where}: unknown endpoints {unknown}: use {list(PROTECTED)} or ["*"]')
    return frozenset(raw)


def _limits(entry: dict, where: str) -> tuple[float, int]:
    try:
        rate, burst = float(entry.get("rate_per_s", 0) or 0), int(entry.get("burst", 0) or 0)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: rate_per_s and burst must be numbers") from None
    if rate < 0 or burst < 0:
        raise SettingsError(f"{where}: rate_per_s and burst must be >= 0")
    if rate == 0:
        return 0.0, 0
    return rate, burst if burst > 0 else max(1, math.ceil(rate))  # default burst: one second's worth


def split_key(presented: str) -> tuple[str, str] | None:
    """`vk_<id>_<secret>` -> (id, secret); None for anything else."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def new_key(name: str, endpoints: list[str], rate_per_s: float = 0.0, burst: int = 0) -> tuple[str, dict]:
    """A fresh key and the file entry that stores only its salted hash."""
    _endpoints(endpoints, f"key {name!r}")
    key_id, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(24).replace("_", "-"), secrets.token_bytes(16)
    entry = {
        "name": name,
        "key_id": key_id,
        "salt": salt.hex(),
        "sha256": digest(salt, secret).hex(),
        "endpoints": list(endpoints),
        "rate_per_s": rate_per_s,
        "burst": burst,
    }
    return f"{PREFIX}_{key_id}_{secret}", entry


def add_to_file(path: Path, entry: dict) -> None:
    """Append an entry to a key file (created if missing), atomically; names are unique."""
    data = json.loads(path.read_text()) if path.exists() else {"keys": []}
    if any(k["name"] == entry["name"] for k in data["keys"]):
        raise SettingsError(f"{path}: a key named {entry['name']!r} exists: remove it first or pick another name")
    data["keys"].append(entry)
    write_text_atomic(json.dumps(data, indent=2) + "\n", path)
    os.chmod(path, 0o600)


class KeyRing:
    """The configured keys; `check(presented)` finds the key a client sent, in constant time."""

    def __init__(self, keys: list[ApiKey]):
        self.by_id = {k.key_id: k for k in keys}
        if len(self.by_id) != len(keys):
            raise SettingsError("two API keys share a key id")

    def __len__(self) -> int:
        return len(self.by_id)

    def check(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        parts = split_key(presented)
        key = self.by_id.get(parts[0]) if parts else None
        if key is None:
            # Same work for an unknown id as for a known one: timing says nothing about which ids exist.
            hmac.compare_digest(digest(b"\0" * 16, presented), b"\0" * 32)
            return None
        return key if hmac.compare_digest(digest(key.salt, parts[1]), key.digest) else None

    @classmethod
    def from_env(cls) -> KeyRing:
        keys: list[ApiKey] = []
        path = os.environ.get("VIDREC_API_KEYS_FILE")
        if path:
            keys.extend(_file_keys(Path(path)))
        raw = os.environ.get("VIDREC_API_KEYS")
        if raw:
            keys.extend(_env_keys(raw))
        return cls(keys)


def _file_keys(path: Path) -> list[ApiKey]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"VIDREC_API_KEYS_FILE={path}: no such file (`vidrec keys add` writes it)") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"VIDREC_API_KEYS_FILE={path} is not JSON: {exc}") from None
    out = []
    for i, entry in enumerate(data.get("keys", [])):
        where = f"{path} key {i} ({entry.get('name', '?')})"
        if "key" in entry:
            raise SettingsError(f"{where} holds a plain key: key files keep only salted hashes (`vidrec keys add`)")
        try:
            salt, stored = bytes.fromhex(entry["salt"]), bytes.fromhex(entry["sha256"])
            name, key_id = str(entry["name"]), str(entry["key_id"])
        except (KeyError, ValueError, TypeError):
            raise SettingsError(f"{where}: needs name, key_id, salt and sha256 (hex)") from None
        rate, burst = _limits(entry, where)
        out.append(ApiKey(name, key_id, salt, stored, _endpoints(entry.get("endpoints"), where), rate, burst))
    return out


def _env_keys(raw: str) -> list[ApiKey]:
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"VIDREC_API_KEYS is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise SettingsError("VIDREC_API_KEYS must be a JSON list of {name, key, endpoints, rate_per_s, burst}")
    out = []
    for i, entry in enumerate(entries):
        where = f"VIDREC_API_KEYS[{i}] ({entry.get('name', '?') if isinstance(entry, dict) else '?'})"
        parts = split_key(str(entry.get("key", ""))) if isinstance(entry, dict) else None
        if parts is None:
            raise SettingsError(f"{where}: key must look like {PREFIX}_<id>_<secret> (`vidrec keys add --print-only`)")
        salt = secrets.token_bytes(16)
        rate, burst = _limits(entry, where)
        endpoints = _endpoints(entry.get("endpoints"), where)
        out.append(
            ApiKey(str(entry.get("name") or parts[0]), parts[0], salt, digest(salt, parts[1]), endpoints, rate, burst)
        )
    return out


def keys_required(settings: Settings) -> bool:
    raw = os.environ.get("VIDREC_API_KEYS_REQUIRED", "").strip().lower()
    if raw == "":
        return settings.profile != "local"
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"VIDREC_API_KEYS_REQUIRED={raw!r} is not a flag: use 1 or 0")
    return raw in ("1", "true", "yes")
