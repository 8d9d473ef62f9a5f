"""The embedded broker's transport: kombu's `filesystem://`, with each message written whole.

kombu's filesystem channel creates a message file under its final name and then writes it, and
a consumer moves any file with that name out of the folder without waiting for the writer: a
consumer that lists the folder in between, or a writer killed in between, leaves a consumer
reading an empty or partial message, which stops its worker with a JSON error. Here a message
is written under a name no consumer picks up and renamed into place (`os.replace` is atomic on
one file system), so a consumer sees each message whole or not at all; a writer killed before
the rename leaves a `.partial` file that is never delivered (its message was never sent).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
