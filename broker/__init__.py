"""The http-broker broker: one process that owns the connection pools of a process group.

``broker.start()`` runs one for the lifetime of a block; ``python -m broker serve`` runs a
standalone one.
"""

from .start import BrokerProcess, start

__all__ = ["BrokerProcess", "start"]
