"""gunicorn settings that run one http-broker for the whole group.

The master starts the broker before it forks any worker; ``broker.start()`` exports
``HTTP_BROKER``, which the workers inherit. The broker stops when the master exits (and
by itself if the master dies). Workers that exit or are replaced (HUP, TTOU, max
requests) leave it alone: only the process that started a broker stops it.
"""

from __future__ import annotations

import atexit
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import broker  # noqa: E402


def on_starting(server: object) -> None:
    # Called once in the master. A reload (HUP) re-reads this file but does not call
    # on_starting again, so the broker is kept in no module global that a reload loses.
    block = broker.start()
    block.__enter__()
    atexit.register(block.__exit__, None, None, None)
