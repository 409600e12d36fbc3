"""HTTP routes -> shared.api.handlers.Api, one function per route of ``ROUTES``.

Each function converts ``func.HttpRequest`` to the framework-neutral ``HttpRequest``, calls the
same ``Api`` method the local host dispatches to, and converts the answer back. Routes are
relative to host.json's ``routePrefix`` ("api"). The Azure DevOps hook is ANONYMOUS at the
Functions level because it checks its own credentials (basic auth and/or a shared-secret
header, CONVEYOR_DEVOPS_*); every other route needs a function key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import azure.functions as func

if TYPE_CHECKING:
    from shared.api.http import HttpRequest, HttpResponse

bp = func.Blueprint()


def to_request(req: func.HttpRequest) -> HttpRequest:
    from shared.api.http import HttpRequest

    return HttpRequest(
        method=req.method,
        path=urlsplit(req.url).path,
        route_params=dict(req.route_params),
        query=dict(req.params),
        headers=dict(req.headers),
        body=req.get_body() or b"",
    )


def to_response(resp: HttpResponse) -> func.HttpResponse:
    headers = dict(resp.headers)
    content_type = resp.content_type
    mimetype = content_type.split(";", 1)[0].strip() if content_type else None
    return func.HttpResponse(body=resp.body, status_code=resp.status, headers=headers, mimetype=mimetype)


def _call(handler: str, req: func.HttpRequest) -> func.HttpResponse:
    from shared.api.handlers import Api

    return to_response(getattr(Api(), handler)(to_request(req)))


@bp.function_name("devops_hook")
@bp.route(route="hooks/azure-devops", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def devops_hook(req: func.HttpRequest) -> func.HttpResponse:
    return _call("devops_hook", req)


@bp.function_name("start_run")
@bp.route(route="flows/{flow}/runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def start_run(req: func.HttpRequest) -> func.HttpResponse:
    return _call("start_run", req)


@bp.function_name("list_runs")
@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    return _call("list_runs", req)


@bp.function_name("get_run")
@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    return _call("get_run", req)


@bp.function_name("list_instances")
@bp.route(route="runs/{run_id}/steps/{step}/instances", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_instances(req: func.HttpRequest) -> func.HttpResponse:
    return _call("list_instances", req)


@bp.function_name("cancel_run")
@bp.route(route="runs/{run_id}/cancel", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def cancel_run(req: func.HttpRequest) -> func.HttpResponse:
    return _call("cancel_run", req)


@bp.function_name("rerun")
@bp.route(route="runs/{run_id}/rerun", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def rerun(req: func.HttpRequest) -> func.HttpResponse:
    return _call("rerun", req)


@bp.function_name("eventgrid_webhook")
@bp.route(route="events/blob", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.FUNCTION)
def eventgrid_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return _call("eventgrid", req)


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return _call("openapi", req)
