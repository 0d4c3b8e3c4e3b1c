"""What the engine is built from: each room's typed settings, put together by the composition root.

The engine never reads :mod:`uc2otad.settings`; :mod:`uc2otad.compose` turns the daemon's settings into
an :class:`EngineConfig` and hands it to :class:`~uc2otad.engine.core.Engine`. The settings of the parts
that load on first use (the WiFi method with its ArduinoOTA upload, the USB flash job with esptool) are
functions here, not values: calling one imports those modules, so that an idle daemon never loads them
(docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from uc2otad.engine.health import HealthSettings
from uc2otad.firmware.catalog import ImageTable
from uc2otad.firmware.channels import DEFAULT_CHANNEL, Channel
from uc2otad.firmware.server import HttpSettings
from uc2otad.firmware.signing import SigningPolicy
from uc2otad.links.serial_hat import HatSettings
from uc2otad.methods.verify import VerifySettings
from uc2otad.retry import RetryPolicy

if TYPE_CHECKING:
    from uc2otad.links.protocol import BusLink
    from uc2otad.methods.usb.flash import UsbFlashSettings
    from uc2otad.methods.wifi import WifiMethodSettings


class SettingsWriter(Protocol):
    """Where the values set over D-Bus (``firmware.server``, ``wifi.ssid``) are kept for the next start."""

    def save(self, values: Mapping[str, object]) -> None:
        """Add ``values`` (config key → value) to the kept ones; blocking, so called in a worker thread.

        :raises OSError: they could not be written
        """


@dataclass(frozen=True)
class MasterSettings:
    """The master CAN HAT: where it is and how the link to it behaves."""

    #: a pyserial URL (``serial.port``)
    port: str
    baud: int
    #: "exclusive" or "on-demand" (CONTRACT.md §3, :mod:`.master`)
    ownership: str
    link: HatSettings


@dataclass(frozen=True)
class FirmwareSettings:
    """The firmware server, its cache and the image table (:class:`FirmwareRepository`'s parts)."""

    #: the server at start-up; SetFirmwareServer replaces it
    server: str
    http: HttpSettings
    cache_dir: Path
    images: ImageTable
    #: ``firmware.channel``: "stable" never offers a prerelease (:mod:`uc2otad.firmware.channels`)
    channel: Channel = DEFAULT_CHANNEL
    #: ``firmware.keys_dir`` and ``require_signature`` (:mod:`uc2otad.firmware.signing`)
    signing: SigningPolicy = field(default_factory=SigningPolicy)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine is built from."""

    #: the status database and the WiFi password live here
    state_dir: Path
    firmware: FirmwareSettings
    #: None: no ``serial.port``, so no master (scans and updates fail with LinkClosedError)
    master: MasterSettings | None
    #: the stored SSID at start-up (SetWiFiCredentials replaces it)
    wifi_ssid: str
    #: a job's attempts when its failure may pass
    retry: RetryPolicy
    #: how the boards are asked, after an update and at start-up, whether they run the new image
    verify: VerifySettings
    #: the WiFi method's settings for a window (ms, StartOTA's ``timeout``); loads the method's code
    wifi: Callable[[int], WifiMethodSettings]
    #: the USB flash job's settings; loads its code and esptool's
    usb_flash: Callable[[], UsbFlashSettings]
    #: keeps SetFirmwareServer's and SetWiFiCredentials' values
    saved: SettingsWriter
    #: the limits of the checks before an update (:mod:`.health`)
    health: HealthSettings = field(default_factory=HealthSettings)
    #: builds the direct CAN link (``[can] interface``; it imports python-can and canopen); None: none
    can_link: Callable[[], BusLink] | None = None
