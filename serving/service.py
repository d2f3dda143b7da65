"""vidrec's online service on BentoML 1.4: `bentoml serve serving.service:Vidrec`.

Endpoints (all POST with a JSON body, except the probes and metrics):

    /recommend   {user_id, k (1..100), context: {device, timestamp}, exclude: [video_id]}
                 -> request_id; ranked videos with score, sources, reason; model versions;
                    A/B variant; served_from; degraded (the slate goes to the impression log)
    /similar     {video_id, k} -> similar videos (content + collaborative); unknown video: 404
    /feedback    {events: [canonical event + request_id, position, ...]} (at most 1000) -> accepted
                 count, rejected rows with reasons, attribution to answers; accepted rows are on
                 disk (fsync'd) before the answer
    /reload      header `Authorization: Bearer $VIDREC_RELOAD_TOKEN` -> reload now (all workers)
    /status      {} -> what is loaded, store health, A/B split
    GET /livez /healthz (liveness), /readyz (models loaded and online store reachable: 200 or 503),
    GET /metrics (Prometheus: BentoML's request metrics plus vidrec_* counters)
    GET /ui      a web page for people: pick a user, see history and cards, react (serving/ui)

Client endpoints need an API key when keys are configured (always in prod): 401/403, and 429 with
Retry-After past the key's rate (serving.access).
Bad input gets a 400 naming the field (pydantic), 413 for bodies over 1 MB, 415 for non-JSON.
Configuration: vidrec.settings (VIDREC_HOME, VIDREC_PROFILE, VIDREC_MLFLOW_URI, Feast locations)
and serving.config (VIDREC_RELOAD_TOKEN, VIDREC_AB_*, VIDREC_PRECOMPUTED_*, ...), plus
VIDREC_SERVE_WORKERS (2), VIDREC_SERVE_TIMEOUT_S (5: BentoML keeps every request's timer alive
for the whole timeout, so a short one keeps worker memory and GC pauses small) and
VIDREC_ACCESS_LOG (0: off; per-request log lines cost CPU at hundreds of requests per second),
VIDREC_LOG_LEVEL (INFO, of the `vidrec` loggers), VIDREC_MAX_BODY_BYTES (1000000) and VIDREC_CONNECTION_MAX_REQUESTS (200: keep-alive connections
are closed after that many requests so that they spread over the workers; 0 = never).
"""

from __future__ import annotations

import logging
import os

import bentoml
from starlette.responses import JSONResponse

from serving.access import AccessControl, AccessPolicy
from serving.app import NotReady, Observers, RecommenderApp, Unauthorized, UnknownVideo
from serving.config import ServingConfig
from serving.guard import RequestGuard
from serving.schemas import (
    FeedbackEvent,
    FeedbackRequest,
    FeedbackResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    RequestContext,
    SimilarRequest,
    SimilarResponse,
    StatusResponse,
)
from serving.ui import create_app

log = logging.getLogger("vidrec.serving")

WORKERS = int(os.environ.get("VIDREC_SERVE_WORKERS", "2"))
TIMEOUT_S = float(os.environ.get("VIDREC_SERVE_TIMEOUT_S", "5"))
ACCESS_LOG = os.environ.get("VIDREC_ACCESS_LOG", "0") not in ("0", "false", "no", "")
MAX_BODY_BYTES = int(os.environ.get("VIDREC_MAX_BODY_BYTES", str(1_000_000)))
API_PATHS = ("/recommend", "/similar", "/feedback", "/reload", "/status")
# Requests per keep-alive connection before the server closes it (see serving.guard); 0 = never.
RECYCLE_AFTER = int(os.environ.get("VIDREC_CONNECTION_MAX_REQUESTS", "200"))
# Client keys, rate limits, admin-only ops endpoints (serving.access). Read at import: the prod
# profile refuses to start without keys.
ACCESS = AccessPolicy.from_env()


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class _QuietBadInput(logging.Filter):
    """BentoML logs every request that fails validation as an ERROR with a traceback; a client's
    bad input is not a server error: one INFO line instead (the client gets the details)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "bad input on %s: %d validation error(s)"
            path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.args = (path, exc.error_count())
            record.exc_info = record.exc_text = None
        return True


def _install_log_filter() -> None:
    target = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _QuietBadInput) for f in target.filters):
        target.addFilter(_QuietBadInput())


class _Metrics:
    """vidrec's own Prometheus counters, created in the worker (after BentoML set up multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        self.recommendations = Counter(
            "vidrec_recommendations", "Recommendation responses", ["variant", "served_from", "degraded"]
        )
        self.feedback = Counter("vidrec_feedback_events", "Feedback events received", ["outcome"])
        self.reloads = Counter("vidrec_reloads", "Reloads requested over HTTP", ["outcome"])
        self.errors = Counter(
            "vidrec_errors", "Requests answered by a fallback after an unexpected error", ["endpoint"]
        )
        # CTR live in Prometheus/Grafana: rate(vidrec_clicks_total) / rate(vidrec_impressions_total) per variant.
        self.impressions = Counter("vidrec_impressions", "Videos shown in /recommend answers", ["variant"])
        self.clicks = Counter("vidrec_clicks", "Clicks sent to /feedback with a request_id of an answer", ["variant"])
        self.impressions_dropped = Counter(
            "vidrec_impressions_dropped", "Impressions not logged (buffer full or the disk refused the write)"
        )

    def observers(self) -> Observers:
        return Observers(
            impressions=lambda variant, n: self.impressions.labels(variant).inc(n),
            clicks=lambda variant, n: self.clicks.labels(variant).inc(n),
            impressions_dropped=self.impressions_dropped.inc,
        )


@bentoml.service(
    name="vidrec",
    workers=WORKERS,
    traffic={"timeout": TIMEOUT_S},
    logging={"access": {"enabled": ACCESS_LOG}},
)
class Vidrec:
    def __init__(self) -> None:
        _install_log_filter()
        # BentoML's root logger shows warnings and up: let vidrec's own INFO lines through
        # (model loads and reloads, and the per-request A/B assignment on logger vidrec.ab).
        logging.getLogger("vidrec").setLevel(os.environ.get("VIDREC_LOG_LEVEL", "INFO").upper())
        if not ACCESS.keys_on:
            log.warning(
                "client API keys are off: /recommend, /similar, /feedback and /ui/api answer anyone "
                "(set VIDREC_API_KEYS_FILE or VIDREC_API_KEYS; see serving/keys.py)"
            )
        self.app = RecommenderApp(ServingConfig.from_env())
        self.metrics = _Metrics()
        self.app.observe = self.metrics.observers()
        self.app.load()
        self.app.start_polling()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.app.stop()

    def __is_ready__(self) -> bool:
        return self.app.is_ready()

    @bentoml.api(route="/recommend", input_spec=RecommendRequest, output_spec=RecommendResponse)
    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        context: RequestContext | None = None,
        exclude: list[str] | None = None,
    ) -> RecommendResponse | JSONResponse:
        """Top-k videos for a user, ranked by the champion (or the challenger in an A/B test)."""
        context = context or RequestContext(device="unknown", timestamp=None)
        try:
            response = self.app.recommend(user_id, k, context.device, context.timestamp, exclude)
        except NotReady as exc:
            return _error(503, f"no models loaded: {exc}")
        except Exception:
            log.exception("recommend failed for user %r: answering with the fallback list", user_id)
            self.metrics.errors.labels("recommend").inc()
            try:
                response = self.app.fallback(user_id, k, context.device, context.timestamp, exclude)
            except Exception:
                log.exception("the fallback failed too")
                return _error(503, "recommendations are unavailable right now")
        self.metrics.recommendations.labels(
            response.variant, response.served_from, str(response.degraded).lower()
        ).inc()
        return response

    @bentoml.api(route="/similar", input_spec=SimilarRequest, output_spec=SimilarResponse)
    async def similar(self, video_id: str, k: int = 10) -> SimilarResponse | JSONResponse:
        """Videos similar to a video, by content and by who watched them."""
        try:
            return self.app.similar(video_id, k)
        except NotReady as exc:
            return _error(503, f"no models loaded: {exc}")
        except UnknownVideo:
            return _error(404, f"unknown video_id {video_id!r}: not in the served catalog", video_id=video_id)

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
    def feedback(self, events: list[FeedbackEvent]) -> FeedbackResponse | JSONResponse:
        """Append a batch of canonical events to the feedback log (durable before the answer)."""
        try:
            result = self.app.feedback([e.model_dump() for e in events])
        except OSError as exc:
            log.exception("feedback batch not written")
            return _error(503, f"the feedback log cannot be written now, retry: {exc.strerror or exc}")
        self.metrics.feedback.labels("accepted").inc(result.accepted)
        self.metrics.feedback.labels("rejected").inc(len(result.rejected))
        return result

    @bentoml.api(route="/reload", input_spec=ReloadRequest, output_spec=ReloadResponse)
    def reload(self, ctx: bentoml.Context) -> ReloadResponse | JSONResponse:
        """Reload the aliased models and video features now, in every worker (token required)."""
        headers = ctx.request.headers
        token = headers.get("x-reload-token")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        try:
            result = self.app.reload(token)
        except Unauthorized as exc:
            self.metrics.reloads.labels("refused").inc()
            ctx.response.status_code = 401  # with a ctx parameter BentoML answers with ctx's status
            return _error(401, str(exc))
        self.metrics.reloads.labels("done" if result.reloaded else "pending").inc()
        return result

    @bentoml.api(route="/status")
    def status(self) -> StatusResponse:
        """What this worker serves: versions, stores, A/B split."""
        return self.app.status()


Vidrec.add_asgi_middleware(RequestGuard, max_bytes=MAX_BODY_BYTES, api_paths=API_PATHS, recycle_after=RECYCLE_AFTER)  # type: ignore[attr-defined]
Vidrec.add_asgi_middleware(AccessControl, policy=ACCESS)  # type: ignore[attr-defined]
# The web page for people (serving/ui): mounted here, so the service serves it with no extra process.
Vidrec.mount_asgi_app(create_app(), path="/ui")  # type: ignore[attr-defined]
