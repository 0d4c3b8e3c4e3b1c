"""The composition root: the daemon's settings in, each room's typed settings and the engine out.

Only here do the settings meet the rooms that use them. :mod:`uc2otad.settings` reads and checks the
values and imports no room; the rooms take their own typed settings (``HatSettings``, ``VerifySettings``,
``UploadSettings`` …) and never see :class:`~uc2otad.settings.Settings`. A value the settings left
``None`` takes the default of the module that owns it, named where the value is used below.

Main constraint: idle memory (docs/benchmarks.md). The WiFi method with its ArduinoOTA upload and the USB
flash job with esptool load on first use, so their settings, and the defaults that live in their
modules, are built by functions the engine calls then (:class:`~uc2otad.engine.config.EngineConfig`'s
``wifi`` and ``usb_flash``), never at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from uc2otad.engine.config import EngineConfig, FirmwareSettings, MasterSettings
from uc2otad.engine.core import Engine
from uc2otad.engine.health import MAX_BUS_ERRORS, HealthSettings
from uc2otad.engine.jobs import RETRIES, RETRY_DELAY, RETRY_POLICY
from uc2otad.firmware.server import HttpSettings
from uc2otad.firmware.signing import SigningPolicy
from uc2otad.links.capture import LinkCapture
from uc2otad.links.ota_stream import MASTER_RX_TIMEOUT, StreamSettings
from uc2otad.links.ota_wifi import WIFI_EVENT_TIMEOUT, WifiOtaSettings
from uc2otad.links.reconnect import RECONNECT_POLICY
from uc2otad.links.serial_hat import DEFAULT_BAUD, HANDSHAKE_TIMEOUT, HatSettings
from uc2otad.methods.verify import INTERVAL, SETTLE, WINDOW, VerifySettings
from uc2otad.retry import RetryPolicy
from uc2otad.settings import PersistedSettings, Settings

if TYPE_CHECKING:
    from uc2otad.links.can_direct import CanDirectLink, CanSettings
    from uc2otad.methods.arduino_ota import UploadSettings
    from uc2otad.methods.usb.flash import UsbFlashSettings
    from uc2otad.methods.wifi import WifiMethodSettings

_T = TypeVar("_T")


def build_engine(config: Settings, persisted: Mapping[str, object]) -> Engine:
    """The engine for these settings (:func:`uc2otad.settings.load`'s two results)."""
    return Engine(engine_config(config, persisted))


def engine_config(config: Settings, persisted: Mapping[str, object]) -> EngineConfig:
    """:param persisted: the values set over D-Bus so far; the engine adds to them and writes them back"""
    verify = verify_settings(config)
    return EngineConfig(
        state_dir=config.daemon_state_dir,
        firmware=firmware_settings(config),
        master=master_settings(config) if config.serial_port else None,
        wifi_ssid=config.wifi_ssid,
        retry=job_retry(config),
        verify=verify,
        wifi=lambda window_ms: wifi_method_settings(config, verify, window_ms),
        usb_flash=lambda: usb_flash_settings(config),
        saved=PersistedSettings(config.daemon_state_dir, persisted),
        can_link=(lambda: direct_can_link(config)) if config.can_interface else None,
        health=health_settings(config),
    )


def _or(value: _T | None, default: _T) -> _T:
    """The value a source gave, else the owner's default."""
    return default if value is None else value


# ---- loaded at start-up --------------------------------------------------------------------------------


def firmware_settings(config: Settings) -> FirmwareSettings:
    http = HttpSettings(
        connect_timeout=config.firmware_connect_timeout,
        read_timeout=config.firmware_read_timeout,
        transfer_timeout=config.firmware_transfer_timeout,
        retry=RetryPolicy(attempts=_or(config.firmware_attempts, RetryPolicy.attempts)),
    )
    return FirmwareSettings(
        config.firmware_server,
        http,
        config.firmware_cache_dir,
        config.image_table(),
        config.firmware_channel,
        SigningPolicy(config.firmware_keys_dir, config.firmware_require_signature),
    )


def master_settings(config: Settings) -> MasterSettings:
    return MasterSettings(
        port=config.serial_port,
        baud=_or(config.serial_baud, DEFAULT_BAUD),
        ownership=config.serial_ownership,
        link=hat_settings(config),
    )


def hat_settings(config: Settings) -> HatSettings:
    max_delay = _or(config.serial_reconnect_max_delay, RECONNECT_POLICY.max_delay)
    return HatSettings(
        handshake_timeout=_or(config.serial_handshake_timeout, HANDSHAKE_TIMEOUT),
        reconnect=replace(RECONNECT_POLICY, max_delay=max_delay),
        stream=StreamSettings(master_rx_timeout=_or(config.serial_master_rx_timeout, MASTER_RX_TIMEOUT)),
        wifi_ota=WifiOtaSettings(event_timeout=_or(config.wifi_join_timeout, WIFI_EVENT_TIMEOUT)),
        capture=LinkCapture(config.serial_capture) if config.serial_capture else None,
    )


def job_retry(config: Settings) -> RetryPolicy:
    """``update.retries`` retries after the first attempt, ``update.retry_delay`` apart (never capped)."""
    delay = _or(config.update_retry_delay, RETRY_DELAY)
    return replace(
        RETRY_POLICY,
        attempts=1 + _or(config.update_retries, RETRIES),
        first_delay=delay,
        max_delay=max(delay, RETRY_POLICY.max_delay),
    )


def health_settings(config: Settings) -> HealthSettings:
    return HealthSettings(
        max_bus_errors=_or(config.update_max_bus_errors, MAX_BUS_ERRORS),
        rollback_on_unhealthy=config.update_rollback_on_unhealthy,
    )


def verify_settings(config: Settings) -> VerifySettings:
    return VerifySettings(
        settle=_or(config.update_verify_settle, SETTLE),
        window=_or(config.update_verify_window, WINDOW),
        interval=_or(config.update_verify_interval, INTERVAL),
    )


# ---- loaded on first use: these import their modules (and the defaults that live there) ---------------


def upload_settings(config: Settings) -> UploadSettings:
    # the WiFi upload's code loads with the first WiFi job (idle memory, see above)
    from uc2otad.methods.arduino_ota.uploader import (  # noqa: PLC0415
        CHUNK_TIMEOUT,
        INVITE_TIMEOUT,
        UploadSettings,
    )

    return UploadSettings(
        invite_timeout=_or(config.wifi_invite_timeout, INVITE_TIMEOUT),
        chunk_timeout=_or(config.wifi_chunk_timeout, CHUNK_TIMEOUT),
        host_ip=config.wifi_host_ip,
        host_port=config.wifi_host_port,
    )


def wifi_method_settings(config: Settings, verify: VerifySettings, window_ms: int) -> WifiMethodSettings:
    from uc2otad.methods.arduino_ota.uploader import ARDUINO_OTA_PORT  # noqa: PLC0415 - on first use
    from uc2otad.methods.wifi import WifiMethodSettings  # noqa: PLC0415 - on first use

    return WifiMethodSettings(
        window_ms=window_ms,
        ota_port=_or(config.wifi_ota_port, ARDUINO_OTA_PORT),
        upload=upload_settings(config),
        verify=verify,
    )


def usb_flash_settings(config: Settings) -> UsbFlashSettings:
    # the USB flash job and esptool's code load with the first FlashMaster (idle memory, see above)
    from uc2otad.methods.usb.esptool import ESPTOOL_TIMEOUT, EsptoolSettings  # noqa: PLC0415
    from uc2otad.methods.usb.flash import REBOOT_WAIT, RECONNECT_WINDOW, UsbFlashSettings  # noqa: PLC0415

    return UsbFlashSettings(
        esptool=EsptoolSettings(
            program=config.usb_esptool, timeout=_or(config.usb_esptool_timeout, ESPTOOL_TIMEOUT)
        ),
        reboot_wait=_or(config.usb_reboot_wait, REBOOT_WAIT),
        reconnect_window=_or(config.usb_reconnect_window, RECONNECT_WINDOW),
    )


def can_settings(config: Settings) -> CanSettings:
    """The ``[can]`` section as the direct link's settings (python-can and canopen load with it)."""
    from uc2otad.links.can_direct import CanSettings  # noqa: PLC0415 - only with a direct link

    defaults = CanSettings(interface=config.can_interface or CanSettings.interface)
    return replace(
        defaults,
        channel=_or(config.can_channel, defaults.channel),
        bitrate=_or(config.can_bitrate, defaults.bitrate),
        size_write_timeout=_or(config.can_size_write_timeout, defaults.size_write_timeout),
        sdo_timeout=_or(config.can_sdo_timeout, defaults.sdo_timeout),
        block_timeout=_or(config.can_block_timeout, defaults.block_timeout),
        reachable_timeout=_or(config.can_reachable_timeout, defaults.reachable_timeout),
        discovery_wait=_or(config.can_discovery_wait, defaults.discovery_wait),
        foreign_sdo_quiet=_or(config.can_foreign_sdo_quiet, defaults.foreign_sdo_quiet),
    )


def direct_can_link(config: Settings) -> CanDirectLink:
    """The direct CAN link of ``[can]``, unopened; built by the engine at start-up when configured."""
    from uc2otad.links.can_direct import CanDirectLink  # noqa: PLC0415 - only with a direct link

    return CanDirectLink(can_settings(config))


# ---- for people and tests ------------------------------------------------------------------------------


def with_defaults(config: Settings) -> Settings:
    """``config`` with every ``None`` replaced by the value the daemon uses: its owner's default.

    Read back from the rooms' settings as built above, so it cannot differ from what runs. It loads the
    modules the daemon loads only on first use; for a person or a test, not for the daemon's start-up.
    """
    hat = hat_settings(config)
    http = firmware_settings(config).http
    retry = job_retry(config)
    verify = verify_settings(config)
    wifi = wifi_method_settings(config, verify, 0)
    usb = usb_flash_settings(config)
    can = can_settings(config)
    return replace(
        config,
        serial_baud=master_settings(config).baud,
        serial_handshake_timeout=hat.handshake_timeout,
        serial_reconnect_max_delay=hat.reconnect.max_delay,
        serial_master_rx_timeout=hat.stream.master_rx_timeout,
        firmware_attempts=http.retry.attempts,
        wifi_ota_port=wifi.ota_port,
        wifi_join_timeout=hat.wifi_ota.event_timeout,
        wifi_invite_timeout=wifi.upload.invite_timeout,
        wifi_chunk_timeout=wifi.upload.chunk_timeout,
        update_retries=retry.attempts - 1,
        update_retry_delay=retry.first_delay,
        update_verify_settle=verify.settle,
        update_verify_window=verify.window,
        update_verify_interval=verify.interval,
        update_max_bus_errors=health_settings(config).max_bus_errors,
        usb_esptool_timeout=usb.esptool.timeout,
        usb_reboot_wait=usb.reboot_wait,
        usb_reconnect_window=usb.reconnect_window,
        can_channel=can.channel,
        can_bitrate=can.bitrate,
        can_size_write_timeout=can.size_write_timeout,
        can_sdo_timeout=can.sdo_timeout,
        can_block_timeout=can.block_timeout,
        can_reachable_timeout=can.reachable_timeout,
        can_discovery_wait=can.discovery_wait,
        can_foreign_sdo_quiet=can.foreign_sdo_quiet,
    )
