"""A web page for people at `/ui`, served by the BentoML service itself (a mounted Starlette app).

    GET /ui/                         the page: pick a user (or a new visitor), device and time; their
                                     history; recommendations as cards with watch/like/dislike and
                                     "more like this"; the A/B split and the last experiment report
    GET /ui/api/users?q=&limit=      user ids for the autocomplete (prefix matches first)
    GET /ui/api/history?user_id=     the user's events, newest first, with titles and genres
    GET /ui/api/videos?ids=a,b,c     titles, genres and durations of catalog videos
    GET /ui/static/...               the page's script and style sheet (no CDN, no build step)

The page's script calls the service's own POST /recommend, /similar, /feedback and /status on the
same origin; this app only adds what those do not answer (titles, history, user ids). Bad
parameters get a 400 with {"error": ...}, unknown API paths a 404 with the same shape.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from feature_repo.lake import Lake
from feature_repo.schema import KNOWN_DEVICES
from serving.config import ServingConfig
from serving.keys import KeyRing
from serving.schemas import MAX_K
from serving.ui.catalog import Catalog
from serving.ui.experiment import latest_report
from vidrec.settings import Settings

HERE = Path(__file__).parent
MAX_ID_CHARS = 128  # as serving.schemas.Id
MAX_VIDEO_IDS = 200
MAX_USERS = 50
MAX_HISTORY = 500


class BadParameter(ValueError):
    """A query parameter the API cannot use: answered 400 with its message."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadParameter(f"{name} must be between {low} and {high}, got {value}")
    return value


def _id_param(request: Request, name: str, required: bool = True) -> str:
    value = request.query_params.get(name, "").strip()
    if not value and required:
        raise BadParameter(f"{name} is required")
    if len(value) > MAX_ID_CHARS:
        raise BadParameter(f"{name} is longer than {MAX_ID_CHARS} characters")
    return value


def create_app(settings: Settings | None = None, config: ServingConfig | None = None) -> Starlette:
    """The `/ui` app over the lake of `settings` (default: the environment's)."""
    settings = settings or Settings.from_env()
    config = config or ServingConfig.from_env(settings)
    catalog = Catalog(Lake(settings.lake_dir))
    keys_on = len(KeyRing.from_env()) > 0  # then the page asks for a client key and sends it
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def page(request: Request) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        context = {
            "base": base,
            "devices": KNOWN_DEVICES,
            "max_k": MAX_K,
            "experiment": config.experiment,
            "challenger_share": config.challenger_share,
            "report": latest_report(settings.home, config.experiment),
            "keys_on": keys_on,
        }
        return templates.TemplateResponse(request, "index.html", context)

    def users(request: Request) -> Response:
        query = _id_param(request, "q", required=False)
        limit = _int_param(request, "limit", 20, 1, MAX_USERS)
        return JSONResponse({"users": catalog.search_users(query, limit)})

    def history(request: Request) -> Response:
        user_id = _id_param(request, "user_id")
        limit = _int_param(request, "limit", 50, 1, MAX_HISTORY)
        events, total = catalog.history(user_id, limit)
        return JSONResponse({"user_id": user_id, "total": total, "events": events})

    def videos(request: Request) -> Response:
        raw = request.query_params.get("ids", "")
        ids = list(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))  # unique, in order
        if not ids:
            raise BadParameter("ids is required: comma-separated video ids")
        if len(ids) > MAX_VIDEO_IDS:
            raise BadParameter(f"at most {MAX_VIDEO_IDS} ids, got {len(ids)}")
        found, unknown = catalog.lookup(ids)
        return JSONResponse({"videos": found, "unknown": unknown})

    def unknown_api(request: Request) -> Response:
        return _error(404, f"no such endpoint: {request.url.path}")

    async def bad_parameter(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    # Plain (sync) endpoints: Starlette runs them in its thread pool, so lake reads never block
    # the event loop that answers /recommend.
    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/users", users),
            Route("/api/history", history),
            Route("/api/videos", videos),
            # BentoML mounts an app passively (only paths one of its routes matches reach it):
            # this catch-all keeps unknown API paths answering JSON.
            Route("/api/{rest:path}", unknown_api),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={BadParameter: bad_parameter, HTTPException: http_error},
    )
