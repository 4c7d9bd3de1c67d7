"""The review web app (Starlette): worklist, review page, images, save; behind guard.Guard.

Pages are rendered on the server from the report template family; review.js adds the keyboard
and sends a save as JSON. A save is validated against the very report version the reviewer was
shown and appended to the ledger under the run lock (audit.reviews.save_review).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from pathlib import Path
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..audit.reviews import ReviewInvalid, clean_reviewer, make_review, save_review
from ..audit.session import LedgerDamaged, STATE_DIR
from ..errors import first_line
from . import pages
from .guard import MAX_BODY, Guard, Secrets
from .runview import RunView, vocabulary_for

log = logging.getLogger("medvlm.review")
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"review.js": "text/javascript; charset=utf-8"}
REVIEWER_COOKIE = "medvlm_reviewer_{port}"


class ReviewServer:
    """One review session over one run folder: what the routes share."""

    def __init__(self, run_dir: Path, *, port: int, reviewer: str | None = None, blind: bool = False):
        self.view = RunView(run_dir)
        self.run_dir = Path(run_dir)
        self.run_name = self.run_dir.resolve().name
        self.keys = Secrets(port)
        self.reviewer = clean_reviewer(reviewer) if reviewer else None
        self.blind = blind
        self.saved = 0
        self.queued = 0
        self._count_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------------

    def reviewer_of(self, request: Request) -> str | None:
        if self.reviewer:
            return self.reviewer
        raw = request.cookies.get(REVIEWER_COOKIE.format(port=self.keys.port))
        if not raw:
            return None
        try:
            return clean_reviewer(unquote(raw))
        except ReviewInvalid:
            return None

    def filter_of(self, request: Request) -> pages.Filter:
        return pages.Filter(request.query_params.get("show"), request.query_params.getlist("risk"), self.blind)

    # -- routes --------------------------------------------------------------------------------

    async def worklist(self, request: Request) -> Response:
        snap = self.view.snapshot()
        ctx = pages.worklist_context(snap, run_name=self.run_name, reviewer=self.reviewer_of(request),
                                     reviewer_fixed=self.reviewer is not None, blind=self.blind,
                                     flt=self.filter_of(request), csrf=self.keys.csrf)
        return HTMLResponse(pages.render("worklist.html.j2", **ctx))

    async def study(self, request: Request) -> Response:
        key = request.path_params["key"]
        reviewer = self.reviewer_of(request)
        flt = self.filter_of(request)
        if reviewer is None:
            return RedirectResponse("/" + flt.query(), status_code=303)
        snap = self.view.snapshot()
        entry = snap.by_key.get(key)
        if entry is None:
            raise HTTPException(404, "no such study in this run")
        doc, problem = self.view.report(key)
        if doc is None:
            return HTMLResponse(pages.message_page(self.run_name, f"Study {key}", problem, f"/{flt.query()}"),
                                status_code=409)
        ctx = pages.study_context(snap, entry, doc, reviewer=reviewer, blind=self.blind, flt=flt,
                                  run_name=self.run_name, csrf=self.keys.csrf)
        return HTMLResponse(pages.render("study.html.j2", **ctx))

    async def image(self, request: Request) -> Response:
        key, index = request.path_params["key"], request.path_params["index"]
        path = self.view.image(key, index)
        if path is None:
            raise HTTPException(404, "no such image")
        return Response(path.read_bytes(), media_type="image/png")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    async def set_reviewer(self, request: Request) -> Response:
        if self.reviewer is not None:
            return _error(409, f"this server records reviews as {self.reviewer} (--reviewer)")
        body = await _json_body(request)
        try:
            name = clean_reviewer(body.get("reviewer"))
        except ReviewInvalid as exc:
            return _error(400, str(exc))
        response = JSONResponse({"ok": True, "reviewer": name})
        response.set_cookie(REVIEWER_COOKIE.format(port=self.keys.port), quote(name), httponly=True, samesite="strict",
                            path="/")
        return response

    async def save(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        key = request.path_params["key"]
        reviewer = self.reviewer_of(request)
        if reviewer is None:
            return _error(400, "enter your name on the worklist before reviewing")
        body = await _json_body(request)
        return await run_in_threadpool(self._save, key, reviewer, body, self.filter_of(request))

    def _save(self, key: str, reviewer: str, body: dict, flt: pages.Filter) -> Response:
        snap = self.view.snapshot()
        entry = snap.by_key.get(key)
        if entry is None or not entry.reviewable:
            return _error(404, "no such study with a report in this run")
        sha = body.get("report_sha256")
        if not isinstance(sha, str) or sha not in snap.reports_seen.get(key, set()):
            return _error(409, "this is not a version of the study's report that the ledger recorded; reload the page")
        doc, problem = self.view.report(key, sha)
        if doc is None:
            return _error(409, f"{problem}; reload the page (your marks stay in this tab until you do)")
        read = pages.read_mode(snap, key, reviewer, self.blind)
        if body.get("read") != read:
            return _error(409, f"this page records a {body.get('read')!s:.12} read but a {read} read is due; reload the page")
        try:
            record = self._record(key, reviewer, read, sha, doc, body)
        except ReviewInvalid as exc:
            return _error(400, str(exc))
        try:
            status = save_review(self.run_dir, record, self.view.cache)
        except LedgerDamaged as exc:
            return _error(503, f"not saved: {first_line(exc)}")
        with self._count_lock:
            self.saved += 1
            self.queued += status == "queued"
        stale = sha != entry.report_sha256
        snap = self.view.snapshot()
        _, next_key, _, _ = pages.neighbours(snap, key, reviewer, flt, self.blind)
        message = {"recorded": "saved to the ledger",
                   "queued": "saved; it is written to the ledger as soon as the command holding the run finishes"}[status]
        if stale:
            message += " (the report was regraded while you reviewed it: this review is kept as a review of the earlier version)"
        nav = flt.query()
        return JSONResponse({
            "ok": True, "status": status, "stale": stale, "message": message, "time": record["time"], "read": read,
            "reload": read == "first",
            "next": f"/study/{quote(next_key)}{nav}" if next_key else None, "worklist": f"/{nav}",
        })

    def _record(self, key: str, reviewer: str, read: str, sha: str, doc: dict, body: dict) -> dict:
        findings = [f for f in doc.get("findings", []) if isinstance(f, dict)] if read != "first" else []
        verdicts = body.get("verdicts") or {}
        added_in = body.get("added") or []
        if not isinstance(verdicts, dict) or not isinstance(added_in, list):
            raise ReviewInvalid("verdicts must be an object and added a list")
        if not all(isinstance(v, dict) for v in verdicts.values()) or not all(isinstance(a, dict) for a in added_in):
            raise ReviewInvalid("each verdict and added finding must be an object")
        vocab = vocabulary_for(doc)
        added = []
        for a in added_in:
            code = a.get("code")
            if not isinstance(code, str) or code not in vocab.entries or code == "no_finding":
                raise ReviewInvalid(f"{str(code)[:40]!r} is not a finding of the {vocab.id} vocabulary")
            added.append({"code": code, "label": vocab.entries[code].label, "laterality": a.get("laterality") or None,
                          "note": a.get("note")})
        return make_review(
            reviewer=reviewer, study_key=key, report_path=f"{key}/report.json", report_sha256=sha, read=read,
            findings=findings, verdicts=verdicts, added=added, risk_level=body.get("risk_level") or None,
            comment=body.get("comment"), model_risk_level=(doc.get("risk") or {}).get("level"), blind=self.blind,
            extra={"app": {"port": self.keys.port}},
        )

    # -- the ASGI app --------------------------------------------------------------------------

    def asgi(self):
        routes = [
            Route("/", self.worklist, methods=["GET", "HEAD"]),
            Route("/study/{key}", self.study, methods=["GET", "HEAD"]),
            Route("/study/{key}/image/{index:int}", self.image, methods=["GET", "HEAD"]),
            Route("/static/{name}", self.static, methods=["GET", "HEAD"]),
            Route("/favicon.ico", _no_icon, methods=["GET", "HEAD"]),
            Route("/api/reviewer", self.set_reviewer, methods=["POST"]),
            Route("/api/review/{key}", self.save, methods=["POST"]),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error, Exception: self._crash})
        return Guard(app, self.keys)

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return _error(exc.status_code, str(exc.detail))
        return HTMLResponse(pages.message_page(self.run_name, str(exc.status_code), str(exc.detail)),
                            status_code=exc.status_code)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        # The client gets one sentence; the terminal one line; the traceback goes to a log file in .medvlm/.
        print(f"medvlm review: internal error on {request.method} {request.url.path}: {type(exc).__name__}: "
              f"{first_line(exc)}", file=sys.stderr)
        try:
            with open(self.run_dir / STATE_DIR / "review-errors.log", "a", encoding="utf-8") as fh:
                fh.write("".join(traceback.format_exception(exc)))
        except OSError:
            pass
        if request.url.path.startswith("/api/"):
            return _error(500, "internal error in the review server (not saved); see its terminal")
        return HTMLResponse("<!DOCTYPE html><title>error</title><p>Internal error in the review server; see its terminal.",
                            status_code=500)


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204)  # browsers ask for one; no console error for its absence


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(413, "request too large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body is not a JSON object")
    return body
