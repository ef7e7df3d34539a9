"""Fixtures: an emulator in the test loop (async SDK) and one in a thread (sync SDK)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

# Test the package in this checkout even when another checkout is installed in editable mode.
_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
    for _m in [m for m in sys.modules if m == "syncd" or m.startswith("syncd.")]:
        del sys.modules[_m]

import pytest  # noqa: E402
import stripe  # noqa: E402

from syncd.emulator import Emulator  # noqa: E402


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator.running(port=0, seed=1) as e:
        yield e


@pytest.fixture
async def aclient(emu: Emulator) -> AsyncIterator[stripe.StripeClient]:
    http = stripe.AIOHTTPClient()
    client = emu.client(http_client=http)
    yield client
    await http.close_async()


@pytest.fixture
def temu() -> Iterator[Emulator]:
    with Emulator.in_thread(port=0, seed=2) as e:
        yield e


@pytest.fixture
def sclient(temu: Emulator) -> stripe.StripeClient:
    return temu.client()  # type: ignore[no-any-return]


def make_catalog(client: Any, n_prices: int = 1, amount: int = 1000) -> list[Any]:
    prod = client.v1.products.create({"name": "Pro"})
    return [
        client.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": amount * (i + 1),
                "recurring": {"interval": "month"},
            }
        )
        for i in range(n_prices)
    ]


@pytest.fixture
async def raw(emu: Emulator) -> AsyncIterator[Any]:
    """A plain aiohttp session with the emulator's key (for headers and odd requests)."""
    import aiohttp

    async with aiohttp.ClientSession(
        base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}
    ) as s:
        yield s
