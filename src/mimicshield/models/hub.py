"""Whether the Hugging Face hub can be reached now, answered in a few seconds.

The hub client retries unreachable endpoints with back-off, so a user without network would wait
tens of seconds, under a screen of warnings, for the answer "the model is not here". One short
TCP connection answers the same question first; when it fails, models load from the local cache
only and a missing one is reported at once.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants

#: Seconds to wait for the hub's TCP handshake before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """False when offline mode is on or the hub endpoint refuses or ignores a connection.

    Behind a proxy the direct connection says nothing, so the hub counts as reachable and the
    hub client decides.
    """
    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
