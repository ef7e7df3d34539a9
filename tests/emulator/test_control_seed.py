"""Control API, seeding, import, objects inspection, clock, and the standalone CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import stripe

from syncd.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = Path(__file__).resolve().parents[1] / "data" / "stripe" / "events"


async def test_seed_python_api(emu: Emulator, aclient: stripe.StripeClient) -> None:
    t = time.monotonic()
    counts = emu.seed(customers=2000, subscriptions=300, big_every=10)
    assert time.monotonic() - t < 20
    assert counts["customer"] == 2000 and counts["subscription"] == 300
    custs = emu.objects("customer")
    assert all(len(c["metadata"]["supabase_user_id"]) == 36 for c in custs)
    created = sorted(c["created"] for c in custs)
    assert created[-1] - created[0] > 100 * 86400  # spread over a past range
    assert emu.events() == []  # events=False by default
    subs = emu.objects("subscription")
    assert any(s["status"] == "canceled" for s in subs)
    assert any(s["items"]["has_more"] for s in subs)
    invs = emu.objects("invoice")
    assert any(i["lines"]["total_count"] > 10 for i in invs)
    # listing by time slices sees every customer exactly once
    mid = created[len(created) // 2]
    seen: list[str] = []
    for window in ({"created": {"lt": mid}}, {"created": {"gte": mid}}):
        page = await aclient.v1.customers.list_async({"limit": 100, **window})  # type: ignore[arg-type]
        seen += [c.id async for c in page.auto_paging_iter()]
    assert sorted(seen) == sorted(c["id"] for c in custs)


async def test_seed_with_events(emu: Emulator) -> None:
    emu.seed(customers=20, subscriptions=5, events=True, days=10)
    types = {e["type"] for e in emu.events()}
    assert {"customer.created", "customer.subscription.created", "invoice.paid"} <= types


async def test_control_api(emu: Emulator) -> None:
    async with aiohttp.ClientSession(base_url=emu.url) as s:
        async with s.post("/_emulator/seed", json={"customers": 50}) as r:
            assert (await r.json())["customer"] == 50
        async with s.get("/_emulator/objects/customer") as r:
            assert (await r.json())["count"] == 50
        async with s.post("/_emulator/clock", json={"action": "freeze", "at": 1_800_000_000}) as r:
            assert (await r.json()) == {
                "now": 1_800_000_000,
                "time": 1_800_000_000.0,
                "frozen": True,
            }
        async with s.post("/_emulator/clock", json={"action": "advance", "seconds": 60}) as r:
            assert (await r.json())["now"] == 1_800_000_060
        async with s.post("/_emulator/clock", json={"action": "set", "time": 1_900_000_000}) as r:
            assert (await r.json())["now"] == 1_900_000_000
        async with s.post(
            "/_emulator/events/visibility", json={"late_visibility_ms": [10, 20], "burst": True}
        ) as r:
            assert await r.json() == {"late_visibility_ms": [10.0, 20.0], "burst": True}
        async with s.post(
            "/_emulator/events/visibility", json={"late_visibility_ms": None, "burst": False}
        ) as r:
            assert (await r.json())["late_visibility_ms"] is None
        async with s.get("/_emulator/meter_totals") as r:
            assert (await r.json())["totals"] == []
        async with s.post("/_emulator/reset", json={}) as r:
            assert r.status == 200
        async with s.get("/_emulator/objects/customer") as r:
            assert (await r.json())["count"] == 0
        assert not emu.clock.frozen


async def test_import_real_objects(emu: Emulator, aclient: stripe.StripeClient) -> None:
    sub_evt = EVENTS_DIR / "subscription_created.json"
    objs: list[Any] = [orjson.loads(sub_evt.read_bytes())["data"]["object"]]
    objs.append(
        {
            "id": "cus_imported",
            "object": "customer",
            "created": 1_600_000_000,
            "email": "imp@example.com",
            "metadata": {},
            "deleted": False,
        }
    )
    async with (
        aiohttp.ClientSession(base_url=emu.url) as s,
        s.post("/_emulator/import", json=objs) as r,
    ):
        assert (await r.json())["imported"] >= 2
    c = await aclient.v1.customers.retrieve_async("cus_imported")
    assert c.email == "imp@example.com"
    assert objs[0]["object"] == "subscription"
    sid = objs[0]["id"]
    items = await aclient.v1.subscription_items.list_async({"subscription": sid})
    assert len(items.data) == len(objs[0]["items"]["data"])
    lst = await aclient.v1.subscriptions.list_async({"status": "all"})
    assert sid in [x.id for x in lst.data]


async def test_objects_include_deleted(emu: Emulator, aclient: stripe.StripeClient) -> None:
    c = await aclient.v1.customers.create_async()
    await aclient.v1.customers.delete_async(c.id)
    (obj,) = emu.objects("customer")
    assert obj["id"] == c.id and obj["deleted"] is True and "email" in obj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_standalone_and_sigint() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd.emulator",
            "--port",
            str(port),
            "--seed",
            "customers=1000",
            "--api-key",
            "sk_test_cli",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/customers?limit=3"
        req = urllib.request.Request(url, headers={"Authorization": "Bearer sk_test_cli"})
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = orjson.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert body is not None and len(body["data"]) == 3 and body["has_more"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
