"""What the broker and the workers both import: wire messages, framing, specs, errors.

Nothing in this package does I/O or touches asyncio.
"""
