"""Defaults of the methods' settings, in a module that imports nothing, for :mod:`uc2otad.settings`.

The daemon resolves its settings at start-up but loads a method's code only when a job needs it (idle
memory, docs/benchmarks.md), so the numbers the settings offer as defaults live here. Their owners
re-export them and remain where they are used and documented: :mod:`.arduino_ota.uploader` (WiFi
upload) and :mod:`.usb.esptool` (USB flash).
"""

from __future__ import annotations

# ---- ArduinoOTA upload (uc2otad.methods.arduino_ota.uploader) ----------------------------------------

#: the board's UDP port unless the sketch calls ``ArduinoOTA.setPort`` (arduino-ota.md §1)
ARDUINO_OTA_PORT = 3232
#: wait for an answer to each invitation: espota's ``-t`` default, 10 s (arduino-ota.md §1.3)
INVITE_TIMEOUT = 10.0
#: no byte sent or received for this long: stalled. The procedure document: "Timeout: 20 seconds per
#: chunk" (Phase 5); it also bounds the wait for the board's result after the last byte
CHUNK_TIMEOUT = 20.0

# ---- esptool (uc2otad.methods.usb.esptool) ------------------------------------------------------------

#: seconds one esptool run may take in all: a 1.3 MB master image uncompressed through the ROM at
#: 921600 baud takes ~17 s (esptool-rom.md, timing table), at 115200 about 2.5 min; a hung esptool
#: (a board that stopped answering mid-block) is stopped after this
ESPTOOL_TIMEOUT = 300.0
