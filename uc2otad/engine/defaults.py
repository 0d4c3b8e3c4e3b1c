"""Defaults of the USB flash job's settings, in a module that imports nothing, for :mod:`uc2otad.settings`.

The daemon resolves its settings at start-up but loads the USB flash job (:mod:`.usb_flash`, with
esptool's code) only on the first FlashMaster (idle memory, docs/benchmarks.md), so the numbers the
settings offer as defaults live here. :mod:`.usb_flash` re-exports them and remains where they are
used and documented.
"""

from __future__ import annotations

#: seconds the board takes to boot after esptool's hard reset (document, Phase 4: "Wait for device
#: reboot (1 second)")
REBOOT_WAIT = 1.0
#: seconds the master has to answer ``/state_get`` again after the flash: an ESP32 boots in about 1 s;
#: the link's reconnect backoff (0.5, 1, 2, 4, 8 s) has had five tries by then
RECONNECT_WINDOW = 30.0
