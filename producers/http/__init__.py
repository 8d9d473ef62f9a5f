"""The HTTP gateway (`bemq serve`)."""

from producers.http.app import create_app

__all__ = ["create_app"]
