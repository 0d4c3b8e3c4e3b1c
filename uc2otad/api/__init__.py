"""The D-Bus face of the daemon: ``org.openuc2.OTA1``. Translation only; the only room that knows D-Bus."""
