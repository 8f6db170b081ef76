"""What the broker and the workers both import: wire messages, framing, specs, errors.

Nothing in this package does I/O or touches asyncio.
"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
