"""The blob interface both back-ends implement; one contract test suite checks both."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator


class BlobNotFound(KeyError):
    """No object under that key."""


class BlobsUnavailable(RuntimeError):
    """The blob store could not be reached within the retry bound."""


class Blobs(abc.ABC):
    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any object there, atomically."""

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenation of `chunks` atomically; returns the byte count. Back-ends
        that can stream override this."""
        data = b"".join(chunks)
        self.put(key, data)
        return len(data)

    @abc.abstractmethod
    def get(self, key: str) -> bytes: ...

    def iter_lines(self, key: str) -> Iterator[bytes]:
        yield from self.get(key).splitlines()

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix`, sorted."""

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    def ping(self) -> None:
        self.list("__ping__/")
