"""gunicorn settings that run one http-broker for the whole group.

The master starts the broker before it forks any worker; ``broker.start()`` exports
``HTTP_BROKER``, which the workers inherit. The broker stops when the master exits (and
by itself if the master dies).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import broker  # noqa: E402

_broker = broker.start()


def on_starting(server: object) -> None:
    _broker.__enter__()


def on_exit(server: object) -> None:
    _broker.__exit__(None, None, None)
