"""The admin dashboard: server-rendered pages under /admin and the JSON their script refreshes from.

Pages accept an admin key as a Bearer header or as the session cookie set by the login form; without
one they send the browser to the login page, and a key that is not an admin key gets a 403 page.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined
from sqlalchemy.orm import Session

from api.deps import ADMIN_COOKIE, AdminDep, SessionDep, SettingsDep, admin_cookie_key, bearer_token
from api.errors import ApiError
from core import admin_sessions
from core.contract.models import model_key
from core.contract.strategies import STRATEGIES
from core.db import ApiKey, Job, JobStatus, utcnow
from core.jobs import dashboard, fleet, frontier, receipts, repository, retention, workers
from core.jobs.expected import standing
from core.keys import authenticate
from core.settings import Settings
from core.webhooks.events import history

API_DIR = Path(__file__).resolve().parents[1]
STATIC_DIR = API_DIR / "static" / "admin"
templates = Jinja2Templates(directory=API_DIR / "templates")

REFRESH_CHOICES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
PAGE_SIZE = 50
# Receipts the dashboard counts beside each model's frontiers.
RECEIPT_WINDOW = timedelta(hours=24)
FRAGMENTS = ("counters", "jobs", "workers", "queue", "models", "storage")
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#dc2626")
# One colour each for the built-in strategies (a frontier chart shows them all at once); others by hash.
KNOWN_COLORS = {
    "none": "#64748b",
    **dict(
        zip(
            ("teacache", "magcache", "easycache", "fbcache", "dbcache", "taylorseer", "taocache", "chipmunk"),
            PALETTE,
            strict=True,
        )
    ),
}

router = APIRouter(prefix="/admin", include_in_schema=False)


# Template helpers


def strategy_color(name: str) -> str:
    return KNOWN_COLORS.get(name) or PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    seconds = max(0.0, (now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def utc(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def short_utc(moment: datetime | None) -> str:
    return moment.strftime("%m-%d %H:%M:%S") if moment else "—"


def number(value: float | Undefined | None, digits: int = 2, suffix: str = "") -> str:
    if value is None or isinstance(value, Undefined):
        return "—"
    return f"{value:.{digits}f}{suffix}"


def duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def size(value: int) -> str:
    """Bytes for people: 1.5 MB."""
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def params_text(params: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return " · ".join(f"{name}={show(value)}" for name, value in params.items())


templates.env.globals |= {"strategy_color": strategy_color, "ago": ago, "number": number}
templates.env.filters |= {"utc": utc, "short_utc": short_utc, "params": params_text, "duration": duration, "size": size}


# Query string


@dataclass(frozen=True)
class DashboardQuery:
    """The dashboard's state as it stands in the URL."""

    job_filter: dashboard.JobFilter
    values: dict[str, str]
    after: str | None
    before: str | None
    refresh: float

    def link(self, **changes: str) -> str:
        """This view's query string with ``changes``; cursors are dropped unless given again."""
        values = {name: value for name, value in (self.values | changes).items() if value}
        return "?" + urlencode(values) if values else "?"

    def sort_link(self, sort: str) -> str:
        current = self.job_filter.sort == sort
        order = "asc" if current and self.job_filter.descending else "desc"
        return self.link(sort=sort, order=order)

    def sort_mark(self, sort: str) -> str:
        if self.job_filter.sort != sort:
            return ""
        return "▼" if self.job_filter.descending else "▲"


def _day(value: str, field: str) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ApiError.invalid(field, "not a date (YYYY-MM-DD)") from None
    # The day after `to` bounds the range: keep both ends inside what datetime and the database can hold.
    if not date(1, 1, 2) <= day < date.max:
        raise ApiError.invalid(field, "must be between 0001-01-02 and 9999-12-30")
    return datetime.combine(day, time(), tzinfo=UTC)


def dashboard_query(
    settings: SettingsDep,
    status_: Annotated[str, Query(alias="status", pattern="^(|queued|running|succeeded|failed|canceled)$")] = "",
    strategy: Annotated[str, Query(max_length=32)] = "",
    model: Annotated[str, Query(max_length=100)] = "",
    from_: Annotated[str, Query(alias="from")] = "",
    to: str = "",
    q: Annotated[str, Query(max_length=200)] = "",
    sort: Annotated[str, Query(pattern="^(created|finished|speedup|denoise)$")] = "created",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str = "",
    before: str = "",
    refresh: Annotated[float | None, Query(ge=0, le=3600)] = None,
) -> DashboardQuery:
    until = _day(to, "to")
    job_filter = dashboard.JobFilter(
        status=JobStatus(status_) if status_ else None,
        strategy=strategy or None,
        model=model or None,
        created_from=_day(from_, "from"),
        created_before=until + timedelta(days=1) if until else None,
        search=q.strip(),
        sort=dashboard.Sort(sort),
        descending=order == "desc",
    )
    values = {"status": status_, "strategy": strategy, "model": model, "from": from_, "to": to, "q": q.strip()}
    values |= {"sort": "" if sort == "created" else sort, "order": "" if order == "desc" else order}
    values["refresh"] = "" if refresh is None else f"{refresh:g}"
    return DashboardQuery(
        job_filter=job_filter,
        values=values,
        after=after or None,
        before=before or None,
        refresh=settings.dashboard_refresh_seconds if refresh is None else refresh,
    )


QueryDep = Annotated[DashboardQuery, Depends(dashboard_query)]


# Authentication

NOT_ADMIN = "This API key is valid, but it is not an admin key. The dashboard needs an admin key."
NOT_A_KEY = "This is not a valid API key (or it has been revoked)."


def _denied(request: Request, session: Session) -> Response | None:
    """None for an admin; otherwise the login page (no key, or a bad one) or a 403 page (not admin)."""
    token = bearer_token(request)
    key = authenticate(session, token) if token else admin_cookie_key(request, session)
    if key is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"{_base(request)}/admin/login?{urlencode({'next': target})}", status.HTTP_303_SEE_OTHER
        )
    if not key.is_admin:
        return _login_page(request, status.HTTP_403_FORBIDDEN, NOT_ADMIN)
    return None


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _safe_next(target: str) -> str:
    # Only paths of this dashboard: anything else would make the login page an open redirect.
    return target if target.startswith("/admin") and not target.startswith("/admin/login") else "/admin"


def _login_page(request: Request, code: int = 200, error: str | None = None, target: str = "/admin") -> Response:
    context = {"base": _base(request), "error": error, "next": _safe_next(target)}
    return templates.TemplateResponse(request, "admin/login.html", context, status_code=code)


async def login_form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode(errors="replace")
    return {name: values[-1] for name, values in parse_qs(body).items()}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next_: Annotated[str, Query(alias="next")] = "/admin") -> Response:
    return _login_page(request, target=next_)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    form: Annotated[dict[str, str], Depends(login_form)],
) -> Response:
    raw = form.get("key", "").strip()
    target = form.get("next", "/admin")
    key = authenticate(session, raw) if raw else None
    if key is None:
        return _login_page(request, status.HTTP_401_UNAUTHORIZED, NOT_A_KEY, target)
    if not key.is_admin:
        return _login_page(request, status.HTTP_403_FORBIDDEN, NOT_ADMIN, target)
    lifetime = timedelta(hours=settings.admin_session_hours)
    token = admin_sessions.open_session(session, key, lifetime, request.headers.get("user-agent"))
    response = RedirectResponse(_base(request) + _safe_next(target), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        ADMIN_COOKIE,
        token,
        max_age=int(lifetime.total_seconds()),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout(request: Request, session: SessionDep) -> Response:
    token = request.cookies.get(ADMIN_COOKIE)
    if token:
        admin_sessions.revoke_token(session, token)
    response = RedirectResponse(f"{_base(request)}/admin/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(
        ADMIN_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict"
    )
    return response


# Pages and their JSON


def _overview(session: Session, settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    now = utcnow()
    models = fleet.figures(session, settings.model_sources)
    counters = dashboard.counters(session, now)
    try:
        page = dashboard.jobs_page(session, query.job_filter, query.after, query.before, PAGE_SIZE)
    except repository.CursorError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, f"after/before: {exc}") from None
    return {
        "now": now,
        "query": query,
        "counters": counters,
        "page": page,
        "queue": dashboard.queue_state(session, counters.queued),
        "models": models,
        "model_workers": workers.by_model(session, settings.heartbeat_seconds),
        "waiting_for_worker": {
            model: workers.waiting_for_worker(session, model, settings.heartbeat_seconds) for model in models
        },
        "workers": workers.statuses(session, settings.heartbeat_seconds, limit=dashboard.WORKERS_SHOWN),
        "heartbeat_seconds": settings.heartbeat_seconds,
        "scan_limit": dashboard.SCAN_LIMIT,
        "counter_hours": dashboard.COUNTER_WINDOW.total_seconds() / 3600,
        "storage": retention.storage_by_key(session),
        "retention_hours": settings.retention_hours,
    }


def _summary_context(session: Session, settings: Settings) -> dict[str, Any]:
    since = utcnow() - RECEIPT_WINDOW
    frontier_models = {}
    for name, source in settings.model_sources.items():
        key = model_key(source)
        tally = receipts.tally(session, name, since)
        frontier_models[name] = {
            "key": key,
            "frontiers": frontier.frontiers(session, key),
            "receipts": tally if tally.total else None,
        }
    return {
        "summary": dashboard.summary(session),
        "summary_limit": dashboard.SUMMARY_LIMIT,
        "frontier_models": frontier_models,
        "margin_db": settings.receipt_margin_db,
    }


def _render(name: str, context: dict[str, Any]) -> str:
    return templates.get_template(f"admin/_{name}.html").render(context)


@router.get("", response_class=HTMLResponse)
def dashboard_page(request: Request, session: SessionDep, settings: SettingsDep, query: QueryDep) -> Response:
    denied = _denied(request, session)
    if denied is not None:
        return denied
    strategies = sorted(set(STRATEGIES) | ({query.job_filter.strategy} - {None}))
    model_choices = [*settings.model_sources, *({query.job_filter.model} - {None} - set(settings.model_sources))]
    refresh_choices = sorted(set(REFRESH_CHOICES) | {query.refresh})
    context = _overview(session, settings, query) | _summary_context(session, settings)
    context |= {"base": _base(request), "strategies": strategies, "statuses": list(JobStatus)}
    context |= {"refresh_choices": refresh_choices, "model_choices": model_choices}
    return templates.TemplateResponse(request, "admin/dashboard.html", context)


@router.get("/api/overview")
def overview_json(
    request: Request, _admin: AdminDep, session: SessionDep, settings: SettingsDep, query: QueryDep
) -> Any:
    """Counters, one page of jobs, queue and workers, as data and as the page's HTML fragments."""
    context = _overview(session, settings, query) | {"base": _base(request)}
    page: dashboard.JobPage = context["page"]
    body = {
        "generated_at": context["now"],
        "counters": asdict(context["counters"]),
        "queue": asdict(context["queue"]),
        "models": {model: asdict(numbers) for model, numbers in context["models"].items()},
        "workers": [asdict(worker) for worker in context["workers"]],
        "storage": [asdict(usage) for usage in context["storage"]],
        "jobs": [asdict(row) for row in page.rows],
        "next_cursor": page.next_cursor,
        "prev_cursor": page.prev_cursor,
        "window_applied": page.window_applied,
        "html": {name: _render(name, context) for name in FRAGMENTS},
    }
    return JSONResponse(jsonable_encoder(body))


@router.get("/api/summary")
def summary_json(_admin: AdminDep, session: SessionDep, settings: SettingsDep) -> Any:
    """The per-strategy summary and its charts, and the models' frontiers (as the page's HTML fragment)."""
    context = _summary_context(session, settings)
    body = {"summary": asdict(context["summary"]), "html": {"summary": _render("summary", context)}}
    return JSONResponse(jsonable_encoder(body))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    denied = _denied(request, session)
    if denied is not None:
        return denied
    job = session.get(Job, job_id)
    if job is None:
        context = {"base": _base(request), "title": "Job not found", "message": f"There is no job {job_id}."}
        return templates.TemplateResponse(request, "admin/message.html", context, status_code=404)
    owner = session.get(ApiKey, job.owner_id)
    metrics = job.metrics or {}
    queued = standing(session, job, settings.heartbeat_seconds)
    context = {
        "base": _base(request),
        "now": utcnow(),
        "job": job,
        "row": dashboard.JobRow.of(job),
        "owner": owner.name if owner else None,
        "queue_position": queued.position,
        "estimated_start": queued.estimated_start_at,
        "expected": job.expected,
        "metrics": metrics,
        "branches": metrics.get("branches") or {},
        "step_seconds": metrics.get("step_seconds") or [],
        "deliveries": history(session, job.id),
    }
    return templates.TemplateResponse(request, "admin/job.html", context)


# Sessions


@router.get("/api/sessions")
def sessions_json(_admin: AdminDep, session: SessionDep) -> Any:
    """Live dashboard sessions (never their tokens), newest first."""
    rows = [
        {
            "id": row.id,
            "key": name,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "user_agent": row.user_agent,
        }
        for row, name in admin_sessions.live(session)
    ]
    return JSONResponse(jsonable_encoder({"sessions": rows}))


@router.post("/api/sessions/{session_id}/revoke")
def revoke_session(session_id: uuid.UUID, _admin: AdminDep, session: SessionDep) -> Any:
    """End a dashboard session at once; its cookie stops working."""
    if not admin_sessions.revoke(session, session_id):
        raise ApiError(status.HTTP_404_NOT_FOUND, f"no live session {session_id}")
    return JSONResponse({"revoked": str(session_id)})
