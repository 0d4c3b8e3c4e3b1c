"""uc2otad: keeps the firmware of an openUC2 microscope's ESP32 boards current."""

__version__ = "0.1.0"
