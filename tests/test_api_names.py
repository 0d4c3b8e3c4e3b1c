"""Every engine property has a D-Bus name: a property without one would fail its change signal."""

from uc2otad.api.names import PROPERTY_NAMES
from uc2otad.engine.events import PROPERTY_FIELDS


def test_every_engine_property_has_its_dbus_name() -> None:
    assert set(PROPERTY_NAMES) == PROPERTY_FIELDS
    assert len(set(PROPERTY_NAMES.values())) == len(PROPERTY_NAMES)
