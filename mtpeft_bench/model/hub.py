"""Whether ``--weights timm`` can be had, found out in about a second, before anything is built.

Asked for pretrained weights without a network, timm and huggingface_hub retry for a minute and
then fail with a long message. So mtbench first looks for the file in the local hub cache, then
honours ``HF_HUB_OFFLINE``, and otherwise opens one socket to the hub's host with a short timeout;
when none of them gives the weights, the user gets one line naming ``--weights builtin|none|PATH``.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from mtpeft_bench.errors import UserError


PROBE_TIMEOUT_S = 1.0
# the files timm's hub loader asks for, in its order (timm.models._hub.load_state_dict_from_hf)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
ALTERNATIVES = ("use --weights builtin|none|PATH (built-in small backbones, random initialisation, "
                "or a local checkpoint)")


def hub_offline_by_env() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_host() -> tuple[str, int]:
    """The hub's host and port (``HF_ENDPOINT`` if set, else huggingface.co:443)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (name lookup included:
    it runs in a thread, because a stuck DNS lookup ignores socket timeouts). Asked once per host
    and process."""
    return _probe(*hub_host(), timeout)


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int, timeout: float) -> bool:
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout * 1.5)
    return bool(answer and answer[0])


def hub_repo(name: str) -> str | None:
    """The hub repository timm loads the pretrained weights of ``name`` from (None if it has none)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def cached_hub_file(repo: str) -> Path | None:
    """The weights of hub repository ``repo`` in the local hub cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def local_pretrained_file(name: str) -> Path | None:
    """Where the pretrained weights of timm model ``name`` come from without the network.

    Returns:
        None when the hub answers (timm downloads or revalidates as usual); the cached file when
        the hub is offline or unreachable but the file is in the local cache.

    Raises:
        UserError: the hub is offline or unreachable and the weights are not in the cache (one line).
    """
    repo = hub_repo(name)
    if repo is None:
        return None  # timm reports a name it does not know, or a URL-only checkpoint, itself
    cached = cached_hub_file(repo)
    if hub_offline_by_env():
        if cached is not None:
            return cached
        raise UserError(f"the pretrained weights of '{name}' ({repo}) are not in the local hub cache and "
                        f"HF_HUB_OFFLINE is set; {ALTERNATIVES}")
    if hub_reachable():
        return None
    if cached is not None:
        return cached
    host, port = hub_host()
    raise UserError(f"cannot reach the Hugging Face hub ({host}:{port}) for the pretrained weights of '{name}', "
                    f"and they are not in the local hub cache; {ALTERNATIVES}")
