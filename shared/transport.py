"""HTTP transport options shared by the storage adapters.

By default the SDKs' ``requests`` transport trusts the environment: on *every* request it
scans ``os.environ`` for proxy settings and a CA bundle (and reads ``~/.netrc``), ~0.3 ms of CPU
each time, about a tenth of a local step transition. The adapters read the environment once
instead, when the client is built:

* a proxy set (``HTTP(S)_PROXY``/``ALL_PROXY``): nothing changes, requests keeps honouring it
  (and ``NO_PROXY``) per request;
* otherwise the per-request lookup is off (``use_env_settings=False``), and a CA bundle named
  by ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` is passed as ``connection_verify``, which is
  what requests would have used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

PROXY_KEYS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
CA_BUNDLE_KEYS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests' order of precedence


def transport_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for an Azure SDK client's transport: see the module docstring."""
    env = os.environ if environ is None else environ
    if any(env.get(k) for k in PROXY_KEYS):
        return {}
    kwargs: dict[str, Any] = {"use_env_settings": False}
    bundle = next((env[k] for k in CA_BUNDLE_KEYS if env.get(k)), None)
    if bundle:
        kwargs["connection_verify"] = bundle
    return kwargs
