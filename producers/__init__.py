"""The way in and out: Python `Client`, `bemq` CLI, HTTP gateway, length-bucketed packing."""
