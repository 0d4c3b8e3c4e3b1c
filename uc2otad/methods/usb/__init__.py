"""The USB method: the master CAN HAT flashed with esptool over its own USB serial port.

The procedure document's "USB Flash Procedure", made safe (CONTRACT.md §4): the image decides the
offset, erase goes only with a merged image, the image's chip must be the board's, and it must fit the
flash. Small modules, one job each:

- :mod:`.chips`: which chip a USB adapter's VID:PID means, where each chip's bootloader lives;
- :mod:`.ports`: serial ports as the document lists them, the port to flash, may we open it;
- :mod:`.rules`: the image rules, checked before anything touches the board;
- :mod:`.output`: what esptool's output lines say (progress, chip, failure);
- :mod:`.esptool`: esptool as a subprocess, never blocking the event loop;
- :mod:`.status`: the USB flash status dict, kept to the document's status table (light: read at idle);
- :mod:`.flash`: the flash job itself, loaded with esptool's code on the first FlashMaster.
"""
