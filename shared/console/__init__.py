"""The web console: runs, a run's graph, timeline, logs, lineage and trace, models, dead letters.

Framework-neutral like ``shared.api``: :class:`shared.console.handlers.Console` takes a
``shared.api.http.HttpRequest`` and answers a ``HttpResponse`` with server-rendered HTML
(Jinja2, autoescaped; graphs and charts are SVG drawn on the server) or a static asset
(``static/``, htmx vendored from the npm-pinned package). The local host routes ``/``,
``/runs/…``, ``/models…``, ``/dead-letters`` and ``/static/…`` to it; in Azure
``functions/console.py`` serves it under ``/api/console/`` with function-key auth.
"""
