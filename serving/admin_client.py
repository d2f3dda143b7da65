"""What the training DAG asks of a running service: reload the champion now (`POST /reload`).

Standard library only, so the Airflow worker needs nothing of the service's stack to call it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def post_reload(url: str, token: str | None, timeout_s: float = 60.0) -> dict:
    """POST <url>/reload with the bearer token; the service's answer. A refused token is a PermissionError."""
    request = urllib.request.Request(
        url.rstrip("/") + "/reload",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:500]
        if exc.code in (401, 403):
            raise PermissionError(f"{url}/reload refused the token (HTTP {exc.code}): {body}") from exc
        raise RuntimeError(f"{url}/reload answered HTTP {exc.code}: {body}") from exc
