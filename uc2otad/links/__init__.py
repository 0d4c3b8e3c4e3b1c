"""How uc2otad reaches the CAN bus: the master CAN HAT over serial (and later SocketCAN).

A link offers commands and events; it knows nothing about jobs.
"""
