"""HTTP transport and retry options shared by the storage adapters.

By default the SDKs' ``requests`` transport trusts the environment: on *every* request it
scans ``os.environ`` for proxy settings and a CA bundle (and reads ``~/.netrc``), ~0.3 ms of CPU
each time, about a tenth of a local step transition. The adapters read the environment once
instead, when the client is built:

* a proxy set (``HTTP(S)_PROXY``/``ALL_PROXY``): nothing changes, requests keeps honouring it
  (and ``NO_PROXY``) per request;
* otherwise the per-request lookup is off (``use_env_settings=False``), and a CA bundle named
  by ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` is passed as ``connection_verify``, which is
  what requests would have used.

Retries (``STORAGE_RETRY``): the storage SDKs wait 15 s, 18 s and 24 s between their retries by
default (queue, blob: ``ExponentialRetry``), longer than a queue handler may take (its message
comes back after 30 s). Here they retry 3 times after about 1, 3 and 5 s (tables: 0.5, 1, 2 s),
so a busy or briefly unreachable service is absorbed inside the call and a handler that still
fails leaves its message for redelivery well within its visibility timeout. ``client_kwargs``
(tests) override them. With ``faults`` (shared.faults) the client gets a transport of its own
whose ``requests`` session fails that share of the requests, under these retries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.faults import FaultInjector

PROXY_KEYS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
CA_BUNDLE_KEYS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests' order of precedence


# Understood by both retry policies: ExponentialRetry (queue, blob) reads initial_backoff,
# increment_base and random_jitter_range; TablesRetryPolicy reads retry_backoff_factor/_max.
STORAGE_RETRY: dict[str, Any] = {
    "retry_total": 3,
    "initial_backoff": 1,
    "increment_base": 2,
    "random_jitter_range": 1,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 8,
}
CONNECTION_TIMEOUT = 20  # the storage SDKs' own defaults, given to a transport built here
READ_TIMEOUT = 60


def transport_kwargs(
    environ: Mapping[str, str] | None = None, *, faults: FaultInjector | None = None, service: str = "storage"
) -> dict[str, Any]:
    """Keyword arguments for an Azure storage SDK client: see the module docstring."""
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = dict(STORAGE_RETRY)
    proxied = any(env.get(k) for k in PROXY_KEYS)
    transport: dict[str, Any] = {} if proxied else {"use_env_settings": False}
    bundle = next((env[k] for k in CA_BUNDLE_KEYS if env.get(k)), None)
    if bundle and not proxied:
        transport["connection_verify"] = bundle
    if faults is None:
        return {**kwargs, **transport}
    from azure.core.pipeline.transport import RequestsTransport

    from shared.faults import faulty_session

    kwargs["transport"] = RequestsTransport(
        session=faulty_session(faults, service),
        session_owner=True,
        connection_timeout=CONNECTION_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        **transport,
    )
    return kwargs
