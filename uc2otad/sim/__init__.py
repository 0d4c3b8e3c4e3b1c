"""The virtual microscope: simulated boards that speak the real wire protocols.

Product code, not test code: users run it (``uc2otad-sim``) to try uc2otad without hardware, and the
tests run it to exercise the real protocols over real sockets and ptys. Everything here is written from
``shared/specs/``, never from our client code: this package imports nothing from ``links/``,
``methods/`` or ``firmware/``, so that a misreading of a protocol cannot hide on both sides of a test.
Only the hardware is simulated; faults are switchable.
"""
