"""The remembered answers of ingestion's Idempotency-Key (serve.idempotency): real LMDB, bounded
by count and by age, kept across a reopen (an instance restarted on its state directory)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edm_runner.serve.idempotency import Answer, IdempotencyKeys


def test_answers_are_kept_bounded_and_survive_a_reopen(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = IdempotencyKeys(tmp_path, capacity=3)
        for n in range(5):
            await keys.put("/clicks", f"k{n}", Answer(200, {"offset": n}, f"d{n}"))
        assert [keys.get("/clicks", f"k{n}") for n in range(2)] == [None, None]  # the oldest went first
        assert keys.get("/clicks", "k4") == Answer(200, {"offset": 4}, "d4")
        assert keys.get("/other", "k4") is None  # per path
        await keys.put("/clicks", "k4", Answer(207, {"accepted": 1}, "d4"))  # replaced, not duplicated
        keys.close()
        again = IdempotencyKeys(tmp_path, capacity=3)
        assert [again.get("/clicks", f"k{n}") is not None for n in range(2, 5)] == [True, True, True]
        assert again.get("/clicks", "k4").status == 207
        again.close()
        later = time.time() + 61  # a clock past the minute every answer so far was given in
        expired = IdempotencyKeys(tmp_path, capacity=3, ttl_s=60, clock=lambda: later)
        assert expired.get("/clicks", "k4") is None  # past the time to live
        await expired.put("/clicks", "k5", Answer(200, {}, "d5"))  # and dropped on the next write
        with expired.env.begin() as txn:
            assert txn.stat(expired.answers)["entries"] == 1  # k5 alone
        expired.close()

    asyncio.run(scenario())
