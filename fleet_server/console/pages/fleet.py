"""The fleet and its devices."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from edge_agent.capabilities import device_kind
from edge_agent.protocol.messages import Capabilities
from fleet_server.api.deps import ServicesDep, SessionDep
from fleet_server.console import queries
from fleet_server.console.base import ConsoleUser, get_or_404, render
from fleet_server.devices import slots as slot_rows
from fleet_server.devices.service import device_public
from fleet_server.devices.tables import Device

router = APIRouter(prefix="/console", include_in_schema=False)


def fleet_filter(
    q: str = "", state: str = "", tag: str = "", model: str = "", page: int = Query(1, ge=1, le=1_000_000)
) -> queries.FleetFilter:
    """The fleet page's filters from the query string, cut to sane lengths."""
    return queries.FleetFilter(q=q[:64], state=state[:16], tag=tag[:130], model=model[:80], page=page)


FleetQuery = Annotated[queries.FleetFilter, Depends(fleet_filter)]


@router.get("", include_in_schema=False)
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/console/fleet", status_code=303)


@router.get("/fleet")
def fleet(request: Request, session: SessionDep, who: ConsoleUser, f: FleetQuery) -> HTMLResponse:
    fp = queries.fleet_page(session, f)
    return render(request, who, "fleet.html", f=f, fp=fp, tags=queries.tag_values(session), nav="fleet")


@router.get("/fleet/rows")
def fleet_rows(request: Request, session: SessionDep, who: ConsoleUser, f: FleetQuery) -> HTMLResponse:
    """The part of the fleet page that polling replaces: counts, rows, pager."""
    return render(request, who, "_fleet_rows.html", f=f, fp=queries.fleet_page(session, f))


@router.get("/devices/{device_id}")
def device(
    request: Request, device_id: str, session: SessionDep, services: ServicesDep, who: ConsoleUser
) -> HTMLResponse:
    d = get_or_404(session, Device, device_id, f"device {device_id!r}")
    caps = json.loads(d.capabilities_json) if d.capabilities_json else {}
    kind = device_kind(Capabilities.model_validate(caps)) if caps else "-"
    return render(
        request,
        who,
        "device.html",
        d=device_public(d, services.bridge.shed.get(device_id, 0), slot_rows.rows_of(session, [d.id]).get(d.id)),
        caps=caps,
        kind=kind,
        revoked=d.token_hash == "revoked",
        deployments=queries.deployments(session, device_id),
        samples=queries.device_samples(session, device_id),
        events=queries.device_timeline(session, device_id),
        nav="fleet",
    )


@router.get("/devices/{device_id}/live")
def device_live(
    request: Request, device_id: str, session: SessionDep, services: ServicesDep, who: ConsoleUser
) -> HTMLResponse:
    d = get_or_404(session, Device, device_id, f"device {device_id!r}")
    slots = slot_rows.rows_of(session, [d.id]).get(d.id)
    return render(request, who, "_device_live.html", d=device_public(d, services.bridge.shed.get(device_id, 0), slots))


@router.get("/devices/{device_id}/series")
def device_series(device_id: str, session: SessionDep, _: ConsoleUser, minutes: float = 60) -> JSONResponse:
    return JSONResponse(queries.series(session, device_id, max(1.0, min(minutes, 7 * 24 * 60))))
