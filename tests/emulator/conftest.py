"""Fixtures: an emulator in the test loop (async SDK) and one in a thread (sync SDK)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import stripe

from syncd.emulator import Emulator


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
