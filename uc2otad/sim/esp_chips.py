"""What tells one ESP chip from another to a host talking to its ROM loader: the chip's own numbers.

ESP32-S3 facts come from ``shared/specs/esptool-rom.md``. That spec covers only the S3; the classic
ESP32 — the CAN HAT's chip (``uc2-stack.md`` §6) — is filled in from the same sources the spec used:
the register addresses esptool 5.6 reads (its ``targets/esp32.py``) and the ESP32 TRM's eFuse layout.

- Detection: an S3 ROM answers GET_SECURITY_INFO with chip id 9; the classic ESP32 ROM has no such
  command, and a host falls back to the magic word at 0x40001000 (0x00F01D83).
- eFuse words: the MAC, the chip revision (v3.0 ESP32-D0WD-V3; v0.2 ESP32-S3), no security fuses.
- SPI1's "user command" registers, through which a host reads the flash chip's id and SFDP table.

Main constraint: any register not listed reads as 0 — on real silicon that is what an unburnt eFuse or
an idle peripheral register reads, and it keeps every security check of a host "off".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from uc2otad.errors import ConfigError

#: the ROM address whose word differs per chip model (esptool ``CHIP_DETECT_MAGIC_REG_ADDR``)
CHIP_DETECT_MAGIC_ADDR = 0x40001000
#: both chips run from a 40 MHz crystal on the boards uc2otad flashes
CRYSTAL_HZ = 40_000_000
#: SPI_CMD's USR bit: written 1 to start a user command, reads 0 once it is done
SPI_CMD_USR = 1 << 18


@dataclass(frozen=True)
class SpiRegisters:
    """SPI1's user-command registers (esptool ``run_spiflash_command``)."""

    base: int
    usr: int
    usr1: int
    usr2: int
    miso_dlen: int
    w0: int
    #: ESP32 keeps an address in the register's top bits (``SPI_ADDR_REG_MSB``); the S3 in its bottom
    addr_msb: bool

    @property
    def cmd(self) -> int:
        return self.base

    @property
    def addr(self) -> int:
        return self.base + 0x04


@dataclass(frozen=True)
class ChipProfile:
    """One chip model as its ROM loader presents it."""

    #: the name esptool prints and ``--chip`` takes
    name: str
    key: str
    #: ``esp_image_header_t.chip_id`` of images built for it (arduino-ota.md §5.1)
    image_chip_id: int
    magic_value: int
    #: the ROM implements GET_SECURITY_INFO and reports ``image_chip_id`` there
    has_security_info: bool
    #: where its ROM looks for the second-stage bootloader (uc2-stack.md §6: 0x1000 on ESP32)
    bootloader_offset: int
    spi: SpiRegisters
    #: eFuse words holding the MAC: the high word's low 16 bits carry bytes 0-1, the low word 2-5
    mac_high_addr: int
    mac_low_addr: int
    #: the UART clock divider a host reads to guess the crystal (None: the host assumes 40 MHz)
    uart_clkdiv_addr: int | None
    #: fixed words: chip revision and the calibration a host reads; everything else reads 0
    fixed_registers: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def registers(self, mac: bytes) -> dict[int, int]:
        """The readable words of a chip whose factory MAC is ``mac`` (6 bytes)."""
        words = dict(self.fixed_registers)
        words[CHIP_DETECT_MAGIC_ADDR] = self.magic_value
        words[self.mac_high_addr] = int.from_bytes(mac[:2], "big")
        words[self.mac_low_addr] = int.from_bytes(mac[2:6], "big")
        return words


#: eFuse BLK0 of the classic ESP32 (read base 0x3FF5A000); word n at base + 4n (TRM, esptool)
_ESP32_EFUSE = 0x3FF5A000
#: ESP32 "v3.0" (ESP32-D0WD-V3): word 3 bit 15 and word 5 bit 20 set, and APB_CTL_DATE bit 31
_ESP32_APB_CTL_DATE = 0x3FF6607C
#: word 3 bits 9-11: package 1 = D0WD
_ESP32_PKG_D0WD = 1 << 9
#: word 4 bits 0-7: the 8 MHz oscillator's calibration; with RTCCALICFG1 it gives the ROM's crystal
#: estimate (cali * 15625 * ck8m / 40 = 40 MHz), which esptool scales CHANGE_BAUDRATE by on ESP32
_ESP32_CK8M = 80
_ESP32_RTCCALICFG1 = 0x3FF5F06C
_ESP32_RTC_CALI = CRYSTAL_HZ * 40 // (15625 * _ESP32_CK8M)

ESP32 = ChipProfile(
    name="ESP32",
    key="esp32",
    image_chip_id=0x0000,
    magic_value=0x00F01D83,
    has_security_info=False,
    bootloader_offset=0x1000,
    spi=SpiRegisters(
        base=0x3FF42000, usr=0x3FF4201C, usr1=0x3FF42020, usr2=0x3FF42024, miso_dlen=0x3FF4202C,
        w0=0x3FF42080, addr_msb=True,
    ),
    mac_high_addr=_ESP32_EFUSE + 4 * 2,
    mac_low_addr=_ESP32_EFUSE + 4 * 1,
    uart_clkdiv_addr=0x3FF40014,
    fixed_registers=MappingProxyType({
        _ESP32_EFUSE + 4 * 3: _ESP32_PKG_D0WD | 1 << 15,
        _ESP32_EFUSE + 4 * 4: _ESP32_CK8M,
        _ESP32_EFUSE + 4 * 5: 1 << 20,
        _ESP32_APB_CTL_DATE: 1 << 31,
        _ESP32_RTCCALICFG1: _ESP32_RTC_CALI << 7,
    }),
)  # fmt: skip

#: eFuse BLOCK1 of the ESP32-S3 (0x60007044); the spec's list of words esptool reads
_S3_BLK1 = 0x60007044
ESP32S3 = ChipProfile(
    name="ESP32-S3",
    key="esp32s3",
    image_chip_id=0x0009,
    # the S3 is told by its security info; its magic word is only a fallback, answered as the spec did
    magic_value=0x9,
    has_security_info=True,
    bootloader_offset=0x0,
    spi=SpiRegisters(
        base=0x60002000,
        usr=0x60002018,
        usr1=0x6000201C,
        usr2=0x60002020,
        miso_dlen=0x60002028,
        w0=0x60002058,
        addr_msb=False,
    ),
    mac_high_addr=_S3_BLK1 + 4,
    mac_low_addr=_S3_BLK1,
    uart_clkdiv_addr=None,
    # W3 bits 20:18: minor revision 2 (v0.2); a non-zero minor spares the host the eco0 workaround
    fixed_registers=MappingProxyType({_S3_BLK1 + 4 * 3: 2 << 18}),
)

CHIPS: Mapping[str, ChipProfile] = MappingProxyType({chip.key: chip for chip in (ESP32, ESP32S3)})


def chip_profile(key: str) -> ChipProfile:
    """The chip called ``key`` ("esp32", "esp32s3").

    :raises ConfigError: no such chip is simulated
    """
    try:
        return CHIPS[key]
    except KeyError:
        raise ConfigError("chip", f"must be one of {', '.join(CHIPS)}, not {key!r}") from None
