"""Client keys and rate limits (serving.keys, serving.ratelimit, serving.access) without a server;
the service enforcing them is tested in test_prod_serving (prod profile, two workers, Redis)."""

from __future__ import annotations

import json
import time

import pytest
from services import redis_db, redis_host_port, require_redis
from typer.testing import CliRunner

from serving.access import AccessPolicy, endpoint_of, presented_key
from serving.keys import KeyRing, add_to_file, new_key
from serving.ratelimit import LocalBuckets, RedisBuckets
from vidrec import cli
from vidrec.settings import Settings, SettingsError


def test_a_key_file_holds_salted_hashes_and_finds_its_keys(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    key, entry = new_key("app", ["/recommend", "/similar"], rate_per_s=5)
    add_to_file(path, entry)
    other, other_entry = new_key("ops", ["*"])
    add_to_file(path, other_entry)
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text  # no plain secret on disk
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SettingsError, match="a key named 'app' exists"):
        add_to_file(path, new_key("app", ["*"])[1])

    monkeypatch.setenv("VIDREC_API_KEYS_FILE", str(path))
    ring = KeyRing.from_env()
    found = ring.check(key)
    assert found is not None and found.name == "app" and found.allows("/similar") and not found.allows("/feedback")
    assert found.rate_per_s == 5 and found.burst == 5  # default burst: one second's worth
    assert ring.check(other).allows("/feedback")
    for wrong in (key[:-1], key + "x", other.replace(other_entry["key_id"], entry["key_id"]), "", None, "vk__x"):
        assert ring.check(wrong) is None


def test_bad_key_configurations_are_refused_with_what_is_wrong(tmp_path, monkeypatch):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"keys": [{"name": "x", "key": "vk_a_b", "endpoints": ["*"]}]}))
    monkeypatch.setenv("VIDREC_API_KEYS_FILE", str(plain))
    with pytest.raises(SettingsError, match="holds a plain key"):
        KeyRing.from_env()
    monkeypatch.setenv("VIDREC_API_KEYS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(SettingsError, match="no such file"):
        KeyRing.from_env()
    monkeypatch.delenv("VIDREC_API_KEYS_FILE")
    for raw, says in [
        ("not json", "not JSON"),
        ('[{"name": "a", "key": "secret", "endpoints": ["*"]}]', "must look like vk_"),
        ('[{"name": "a", "key": "vk_a_b", "endpoints": ["/admin"]}]', "unknown endpoints"),
        ('[{"name": "a", "key": "vk_a_b", "endpoints": ["*"], "rate_per_s": -1}]', ">= 0"),
    ]:
        monkeypatch.setenv("VIDREC_API_KEYS", raw)
        with pytest.raises(SettingsError, match=says):
            KeyRing.from_env()


def test_keys_are_on_by_default_in_prod_and_optional_locally(monkeypatch):
    for name in ("VIDREC_API_KEYS", "VIDREC_API_KEYS_FILE", "VIDREC_API_KEYS_REQUIRED"):
        monkeypatch.delenv(name, raising=False)
    assert AccessPolicy.from_env(Settings.from_env("local")).keys_on is False
    with pytest.raises(SettingsError, match="serves only clients with API keys"):
        AccessPolicy.from_env(Settings.from_env("prod"))
    monkeypatch.setenv("VIDREC_API_KEYS", json.dumps([{"name": "a", "key": "vk_a_s3cret", "endpoints": ["*"]}]))
    monkeypatch.setenv("VIDREC_PRECOMPUTED_URL", "redis://127.0.0.1:6379/1")
    policy = AccessPolicy.from_env(Settings.from_env("prod"))
    assert policy.keys_on and policy.limiter_url == "redis://127.0.0.1:6379/1"  # shared by the workers
    monkeypatch.setenv("VIDREC_OPS_ADMIN_ONLY", "1")
    monkeypatch.delenv("VIDREC_RELOAD_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="needs the admin token"):
        AccessPolicy.from_env(Settings.from_env("prod"))


def test_which_paths_are_protected_and_how_keys_are_sent():
    assert [endpoint_of(p) for p in ("/recommend", "/similar", "/feedback", "/ui/api/users", "/ui/", "/readyz")] == [
        "/recommend", "/similar", "/feedback", "/ui/api", None, None,
    ]  # fmt: skip
    assert presented_key({"authorization": "Bearer vk_a_b"}) == "vk_a_b"
    assert presented_key({"x-api-key": " vk_a_b "}) == "vk_a_b"
    assert presented_key({"authorization": "Basic xyz"}) is None


def bucket_key(rate: float, burst: int):
    key, entry = new_key("limited", ["/recommend"], rate_per_s=rate, burst=burst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDREC_API_KEYS", json.dumps([{**entry, "key": key}]))
        return KeyRing.from_env().check(key)


def test_a_local_bucket_allows_the_burst_then_the_rate():
    key = bucket_key(rate=10, burst=3)
    buckets = LocalBuckets()
    waits = [buckets.take(key) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0] and all(0 < w <= 0.1 for w in waits[3:])
    time.sleep(0.25)
    assert buckets.take(key) == 0.0


def test_redis_buckets_are_shared_by_every_worker():
    require_redis()
    host, port = redis_host_port()
    key = bucket_key(rate=1, burst=4)
    with redis_db() as db:
        workers = [RedisBuckets(f"redis://{host}:{port}/{db}") for _ in range(2)]  # two processes' limiters
        waits = [workers[i % 2].take(key) for i in range(8)]
        allowed = sum(1 for w in waits if w == 0)
        print(f"redis bucket 1/s burst 4, two limiters: {allowed} of 8 allowed")
        assert allowed in (4, 5) and all(0 < w <= 1.0 for w in waits if w)


def test_a_limiter_whose_redis_is_gone_lets_requests_through():
    key = bucket_key(rate=1, burst=1)
    gone = RedisBuckets("redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert [gone.take(key) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_vidrec_keys_add_prints_the_key_once_and_stores_its_hash(tmp_path):
    path = tmp_path / "keys.json"
    result = CliRunner().invoke(
        cli.app,
        ["keys", "add", "--name", "web", "--file", str(path), "--endpoints", "/recommend,/ui/api", "--rate", "20"],
    )
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("vk_") and key not in path.read_text()
    listed = CliRunner().invoke(cli.app, ["keys", "list", "--file", str(path)])
    assert "web" in listed.output and "/recommend,/ui/api" in listed.output and key not in listed.output
    bad = CliRunner().invoke(cli.app, ["keys", "add", "--name", "x", "--file", str(path), "--endpoints", "/admin"])
    assert bad.exit_code == 2 and "unknown endpoints" in bad.output


def test_vidrec_keys_new_prints_what_the_environment_form_reads(monkeypatch):
    result = CliRunner().invoke(cli.app, ["keys", "new", "--name", "app", "--rate", "3"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("VIDREC_API_KEYS", result.output.strip())
    entry = json.loads(result.output)[0]
    key = KeyRing.from_env().check(entry["key"])
    assert key is not None and key.name == "app" and key.rate_per_s == 3 and key.allows("/recommend")


def test_the_secret_scan_of_make_lint_fails_on_a_planted_secret(tmp_path):
    """`make secrets` runs detect-secrets-hook over the tracked files: a finding fails it."""
    import subprocess
    import sys
    from pathlib import Path

    planted = tmp_path / "settings.py"
    planted.write_text('db_password = "Tr0ub4dor&3-horse-battery"\n')  # pragma: allowlist secret
    hook = Path(sys.executable).with_name("detect-secrets-hook")
    found = subprocess.run([str(hook), str(planted)], capture_output=True, text=True, timeout=120)
    assert found.returncode != 0 and "Secret Keyword" in found.stdout, found.stdout
    planted.write_text('db_password = "Tr0ub4dor&3-horse-battery"  # pragma: allowlist secret\n')
    assert subprocess.run([str(hook), str(planted)], capture_output=True, timeout=120).returncode == 0
