"""A Stripe API emulator for offline tests, benchmarks and demos.

from syncd.emulator import Emulator
async with Emulator.running(port=0, seed=1) as emu:
    client = emu.client()
"""

from .emulator import DEFAULT_API_KEY, Emulator
from .faults import FaultRule
from .state import API_VERSION, Clock

__all__ = ["API_VERSION", "DEFAULT_API_KEY", "Clock", "Emulator", "FaultRule"]
