"""Holds a consumer group like a running instance would: ``python reliability_holder.py
BROKER_URL GROUP TOPIC`` joins GROUP on TOPIC, prints ``joined`` and stays until stdin closes.

BROKER_URL is ``local:PATH`` or ``kafka://HOST:PORT``.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edm_runner.brokers import open_broker
from edm_runner.language.model import BrokerSpec


async def hold(url: str, group: str, topic: str) -> None:
    broker = open_broker(BrokerSpec(), Path("."), url)
    await broker.start()
    consumer = broker.consumer(group, [topic])
    await consumer.start()
    print("joined", flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await consumer.close()
        await broker.close()


if __name__ == "__main__":
    asyncio.run(hold(*sys.argv[1:4]))
