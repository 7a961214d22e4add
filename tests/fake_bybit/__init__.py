"""A fake Bybit v5 venue for tests and demos; see :mod:`tests.fake_bybit.server`."""

from tests.fake_bybit.server import FakeBybit, Faults, Instrument

__all__ = ["FakeBybit", "Faults", "Instrument"]
