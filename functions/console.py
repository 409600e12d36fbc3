"""The web console in the Function App: ``/api/console/...`` -> shared.console.handlers.Console.

One HTTP function serves every console page and asset with FUNCTION auth (never anonymous):
open ``https://<app>.azurewebsites.net/api/console/?code=<function key>``; the pages carry
the key on in every link, form and poll. With App Service Authentication (Easy Auth, Entra
ID) in front, people sign in instead of sharing a key, and the key still guards the function
(infra/README.md, "The web console"). Cancel and rerun POSTs are checked by the console itself
(same origin + a token bound to the page), whatever the auth in front.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from functions.webhooks import to_request, to_response

bp = func.Blueprint()

CONSOLE_BASE = "/api/console"  # host.json routePrefix "api" + the route below


@bp.function_name("console")
@bp.route(route="console/{*path}", methods=["GET", "HEAD", "POST"], auth_level=func.AuthLevel.FUNCTION)
def console(req: func.HttpRequest) -> func.HttpResponse:
    from shared.console.handlers import Console

    secure = urlsplit(req.url).scheme == "https"
    return to_response(Console().handle(to_request(req), CONSOLE_BASE, secure=secure))
