"""Adapters put straight into a runtime's cache, for tests that need no registry or blobs."""

from __future__ import annotations

from workers.adapters import parse
from workers.runtime import Runtime


def install(rt: Runtime, **adapters: bytes) -> None:
    """Install adapter files (`make_adapter` bytes) by name, in the runtime's dtype; the next
    forward rebuilds the model's stack."""
    for name, data in adapters.items():
        rt.adapters._cache[name] = parse(data, rt.device, rt.dtype)
    rt._installed = []
