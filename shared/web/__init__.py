"""The HTTP layer of the local stack (``conveyor up`` and the local scoring endpoint).

``server.py`` runs an ASGI app under Hypercorn on a socket bound here (limits: ``HttpLimits``);
``asgi.py`` holds the pieces every app of ours is built from: the request guard (Host, Origin,
content type, header count), a body reader with a size limit and a deadline, the bridge from
ASGI to a framework-neutral handler, and JSON answers for every error. The Functions app never
imports this package: Azure's front end is its server.
"""
