"""How uc2otad reaches the CAN bus: the master CAN HAT over serial (and later SocketCAN).

A link offers commands and events; it knows nothing about jobs. Methods and the engine see a link only
through ``protocol`` (what an update needs), so the HAT link and a later direct CAN link are
interchangeable. One module per job:

- ``protocol``: ``UpdateLink``, ``WifiTriggerLink``, ``MasterLink`` and their results (no concrete link);
- ``frames``: bytes from the master into frames, bare JSON lines and log lines (pure, bounded);
- ``replies``: which message answers which command (qid or shape); event listeners;
- ``base``: the ``Link`` template — state, reader thread, deadlines, logging, reconnecting;
- ``serial_hat``: ``SerialHatLink``, the HAT on any pyserial URL, with its commands;
- ``commands``: the HAT's requests, reply shapes and typed results;
- ``ota_stream``, ``ota_wifi``: the two ways to update a slave through the HAT — streaming an image
  (CANopen masters) and asking the slave to join WiFi for ArduinoOTA (legacy masters); typed against
  ``hat_channel.HatChannel``, the HAT primitives they use, so that ``serial_hat`` calls them one way;
- ``reconnect``, ``ports``, ``redact``: backoff, finding a re-plugged adapter, hiding secrets in logs;
- ``holder``: ``LinkHolder``, the exclusive use of a link, shared by every link;
- ``can_direct`` (a package): ``CanDirectLink``, the daemon on the CAN bus itself as a CANopen client.
"""
