"""``Client`` and ``AsyncClient``: skipstep's jobs API with retries, typed results and live waiting.

Both retry a request on 429, 503 and network errors (honouring ``Retry-After``, else backing off
exponentially with jitter), send ``jobs.create`` with an ``Idempotency-Key`` (generated unless given, the
same on every retry, so a retried submit never makes two jobs), and wait for a job by its server-sent
events (``GET /jobs/{id}/events``), polling instead when the stream is refused or unavailable.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from core.contract.strategies import AUTO
from skipstep.errors import ApiError, WaitTimeout
from skipstep.models import JobView, ProgressView, Target

RETRIED = frozenset({429, 503})
MAX_DELAY = 30.0
POLL_SECONDS = 1.0
# A stream sends a keepalive at least every 15 s; a read waiting longer than this reconnects.
STREAM_READ_SECONDS = 40.0

OnProgress = Callable[[JobView], Any]


def _delay(response: httpx.Response | None, attempt: int, backoff: float) -> float:
    """Seconds before retry number ``attempt + 1``: the server's ``Retry-After`` if it sent one."""
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(MAX_DELAY, max(0.0, float(header)))
        except ValueError:
            try:
                return min(MAX_DELAY, max(0.0, parsedate_to_datetime(header).timestamp() - time.time()))
            except (TypeError, ValueError):
                pass
    return min(MAX_DELAY, backoff * 2**attempt) * random.uniform(0.5, 1.0)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise ApiError.from_body(response.status_code, body, response.text)
    return response


def _unreachable(exc: httpx.TransportError) -> ApiError:
    return ApiError(None, "unreachable", f"{type(exc).__name__}: {exc}")


def _targeted(fields: dict[str, Any], target: Target | dict[str, Any] | None) -> dict[str, Any]:
    """``fields`` with ``target`` put in their cache, whose strategy is then `auto` unless the cache names another
    (which the service refuses)."""
    if target is None:
        return fields
    if isinstance(target, Target):
        target = target.model_dump(exclude_none=True)
    return fields | {"cache": {"strategy": AUTO, **fields.get("cache", {}), "target": target}}


Image = str | Path | bytes


def _create_request(
    prompt: str,
    idempotency_key: str | None,
    target: Target | dict[str, Any] | None,
    image: Image | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """``POST /jobs``'s arguments: the job as JSON, or with an ``image`` (a file's path or its bytes; an ``https``
    URL goes in ``image_url`` instead) the JSON in a ``request`` part beside the image's file part."""
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    body = {"prompt": prompt, **_targeted(fields, target)}
    if image is None:
        return {"json": body, "headers": headers}
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    name = "image" if isinstance(image, bytes) else Path(image).name
    return {"data": {"request": json.dumps(body)}, "files": {"image": (name, data)}, "headers": headers}


def _remix_request(
    idempotency_key: str | None, target: Target | dict[str, Any] | None, changes: dict[str, Any]
) -> dict[str, Any]:
    return {"json": _targeted(changes, target), "headers": {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}}


class _Follower:
    """The job as its events tell it: the last full view, updated by progress events."""

    def __init__(self, on_progress: OnProgress | None) -> None:
        self.on_progress = on_progress
        self.view: JobView | None = None
        self.last_id: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def seen(self, event: ServerSentEvent) -> JobView | None:
        """The finished job if ``event`` is the last one."""
        if not event.data:
            return None  # a keepalive comment, as httpx-sse reports it
        if event.id:
            self.last_id = event.id
        data = json.loads(event.data)
        if event.event == "progress":
            if self.view is None:
                return None
            self.view = self.view.model_copy(update={"progress": ProgressView.model_validate(data)})
        else:
            self.view = JobView.model_validate(data)
        if self.view.status.finished:
            return self.view
        if self.on_progress is not None:
            self.on_progress(self.view)
        return None

    def polled(self, view: JobView) -> JobView | None:
        if view.status.finished:
            return view
        if self.on_progress is not None and view != self.view:
            self.on_progress(view)
        self.view = view
        return None


def _remaining(deadline: float | None, job_id: uuid.UUID | str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeout(f"job {job_id} has not finished yet")
    return left


def _stream_timeout(left: float | None) -> httpx.Timeout:
    return httpx.Timeout(30.0, read=STREAM_READ_SECONDS if left is None else min(left, STREAM_READ_SECONDS))


def _streams(response: httpx.Response) -> bool:
    """Whether to read the stream (else poll): 429 (too many open streams) and 5xx fall back to polling; any
    other error is raised (the response's body read)."""
    if response.status_code in (200, 204):
        return True
    if response.status_code == 429 or response.status_code >= 500:
        return False
    _checked(response)
    return False


class Jobs:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        target: Target | dict[str, Any] | None = None,
        image: Image | None = None,
        **fields: Any,
    ) -> JobView:
        """Queue a job (fields as ``POST /jobs`` takes them: width, height, num_frames, cache, seed, ...); a
        ``target`` (``{"tier": "high"}``, ``{"min_psnr": 30}``, ``{"deadline_seconds": 20}``) makes the cache `auto`:
        the service picks the fastest measured setting that meets it and says which in ``expected.auto``. ``image``,
        a PNG, JPEG or WebP file's path or bytes, is an image-to-video model's first frame (a URL goes in
        ``image_url``)."""
        request = _create_request(prompt, idempotency_key, target, image, fields)
        return JobView.model_validate(self._client.request("POST", "/jobs", **request).json())

    def remix(
        self,
        job_id: uuid.UUID | str,
        *,
        idempotency_key: str | None = None,
        target: Target | dict[str, Any] | None = None,
        **changes: Any,
    ) -> JobView:
        """Queue a new job from a succeeded one, ``changes`` replacing its fields (prompt, cache, compare, ...; a
        ``target`` as ``create`` takes it); the seed and shape are the source's unless changed."""
        request = _remix_request(idempotency_key, target, changes)
        return JobView.model_validate(self._client.request("POST", f"/jobs/{job_id}/remix", **request).json())

    def get(self, job_id: uuid.UUID | str) -> JobView:
        return JobView.model_validate(self._client.request("GET", f"/jobs/{job_id}").json())

    def list(self, *, status: str | None = None, strategy: str | None = None, page_size: int = 50) -> Iterator[JobView]:
        """Every job the key sees, newest first, fetching page after page as it is iterated."""
        params: dict[str, Any] = {"limit": page_size, "status": status, "strategy": strategy}
        while True:
            page = self._client.request("GET", "/jobs", params={k: v for k, v in params.items() if v}).json()
            yield from (JobView.model_validate(job) for job in page["jobs"])
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: uuid.UUID | str) -> JobView:
        return JobView.model_validate(self._client.request("POST", f"/jobs/{job_id}/cancel").json())

    def wait(
        self, job_id: uuid.UUID | str, timeout: float | None = None, on_progress: OnProgress | None = None
    ) -> JobView:
        """The job once finished (succeeded, failed or canceled); ``on_progress`` gets the job at each change
        before that. Raises ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = _Follower(on_progress)
        while True:
            left = _remaining(deadline, job_id)
            try:
                with connect_sse(
                    self._client.http,
                    "GET",
                    f"/jobs/{job_id}/events",
                    headers=follower.headers(),
                    timeout=_stream_timeout(left),
                ) as source:
                    if source.response.status_code not in (200, 204):
                        source.response.read()
                    if not _streams(source.response):
                        return self._poll(job_id, deadline, follower)
                    if source.response.status_code == 204:
                        return self.get(job_id)
                    for event in source.iter_sse():
                        if (done := follower.seen(event)) is not None:
                            return done
            except httpx.TransportError:
                # A dropped or idle stream: reconnect and resume after the last event seen.
                time.sleep(min(POLL_SECONDS, _remaining(deadline, job_id) or POLL_SECONDS))

    def _poll(self, job_id: uuid.UUID | str, deadline: float | None, follower: _Follower) -> JobView:
        while True:
            if (done := follower.polled(self.get(job_id))) is not None:
                return done
            _remaining(deadline, job_id)
            time.sleep(POLL_SECONDS)

    def download(self, job_id: uuid.UUID | str, path: str | Path) -> Path:
        """Write the job's MP4 to ``path``."""
        path = Path(path)
        response = self._client.request("GET", f"/jobs/{job_id}/video")
        if response.is_redirect:
            # A presigned storage URL: it carries its own authorization, and must not get the API key.
            with httpx.stream("GET", response.headers["location"], timeout=self._client.http.timeout) as video:
                if video.status_code >= 400:
                    video.read()
                    _checked(video)
                with path.open("wb") as out:
                    for chunk in video.iter_bytes():
                        out.write(chunk)
        else:
            path.write_bytes(response.content)
        return path


class Client:
    """``Client("http://127.0.0.1:8000", api_key="...")``: ``client.jobs.create/remix/get/list/cancel/wait``..."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5
    ) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.jobs = Jobs(self)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise _unreachable(exc) from exc
                time.sleep(_delay(None, attempt, self.backoff))
                continue
            if response.status_code not in RETRIED or last:
                return _checked(response)
            time.sleep(_delay(response, attempt, self.backoff))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        target: Target | dict[str, Any] | None = None,
        image: Image | None = None,
        **fields: Any,
    ) -> JobView:
        request = _create_request(prompt, idempotency_key, target, image, fields)
        return JobView.model_validate((await self._client.request("POST", "/jobs", **request)).json())

    async def remix(
        self,
        job_id: uuid.UUID | str,
        *,
        idempotency_key: str | None = None,
        target: Target | dict[str, Any] | None = None,
        **changes: Any,
    ) -> JobView:
        request = _remix_request(idempotency_key, target, changes)
        response = await self._client.request("POST", f"/jobs/{job_id}/remix", **request)
        return JobView.model_validate(response.json())

    async def get(self, job_id: uuid.UUID | str) -> JobView:
        return JobView.model_validate((await self._client.request("GET", f"/jobs/{job_id}")).json())

    async def list(
        self, *, status: str | None = None, strategy: str | None = None, page_size: int = 50
    ) -> AsyncIterator[JobView]:
        params: dict[str, Any] = {"limit": page_size, "status": status, "strategy": strategy}
        while True:
            response = await self._client.request("GET", "/jobs", params={k: v for k, v in params.items() if v})
            page = response.json()
            for job in page["jobs"]:
                yield JobView.model_validate(job)
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    async def cancel(self, job_id: uuid.UUID | str) -> JobView:
        return JobView.model_validate((await self._client.request("POST", f"/jobs/{job_id}/cancel")).json())

    async def wait(
        self, job_id: uuid.UUID | str, timeout: float | None = None, on_progress: OnProgress | None = None
    ) -> JobView:
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = _Follower(on_progress)
        while True:
            left = _remaining(deadline, job_id)
            try:
                async with aconnect_sse(
                    self._client.http,
                    "GET",
                    f"/jobs/{job_id}/events",
                    headers=follower.headers(),
                    timeout=_stream_timeout(left),
                ) as source:
                    if source.response.status_code not in (200, 204):
                        await source.response.aread()
                    if not _streams(source.response):
                        return await self._poll(job_id, deadline, follower)
                    if source.response.status_code == 204:
                        return await self.get(job_id)
                    async for event in source.aiter_sse():
                        if (done := follower.seen(event)) is not None:
                            return done
            except httpx.TransportError:
                await asyncio.sleep(min(POLL_SECONDS, _remaining(deadline, job_id) or POLL_SECONDS))

    async def _poll(self, job_id: uuid.UUID | str, deadline: float | None, follower: _Follower) -> JobView:
        while True:
            if (done := follower.polled(await self.get(job_id))) is not None:
                return done
            _remaining(deadline, job_id)
            await asyncio.sleep(POLL_SECONDS)

    async def download(self, job_id: uuid.UUID | str, path: str | Path) -> Path:
        path = Path(path)
        response = await self._client.request("GET", f"/jobs/{job_id}/video")
        if response.is_redirect:
            async with (
                httpx.AsyncClient(timeout=self._client.http.timeout) as storage,
                storage.stream("GET", response.headers["location"]) as video,
            ):
                if video.status_code >= 400:
                    await video.aread()
                    _checked(video)
                with path.open("wb") as out:
                    async for chunk in video.aiter_bytes():
                        out.write(chunk)
        else:
            path.write_bytes(response.content)
        return path


class AsyncClient:
    """``Client`` for asyncio: the same calls, awaited (``jobs.list`` is an async iterator)."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5
    ) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.jobs = AsyncJobs(self)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise _unreachable(exc) from exc
                await asyncio.sleep(_delay(None, attempt, self.backoff))
                continue
            if response.status_code not in RETRIED or last:
                return _checked(response)
            await asyncio.sleep(_delay(response, attempt, self.backoff))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()
