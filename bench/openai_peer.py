#!/usr/bin/env python3
"""The peer for bench/openai_fanout.py: the same fan-out written by hand, without orch.

What a user would write with the SDK alone: one `AsyncOpenAI` client on the
aiohttp transport (as orch uses), a semaphore of `--concurrency`, one Chat
Completions request per item, each reply written to `<out>/<item>/out.md`.
No locks, staging directories, manifests, output checks, retries or event
log. Its wall time is the floor for the server, the SDK and this disk; the
difference to orch's is what orch's bookkeeping costs.

Usage:
    python bench/openai_peer.py --base-url URL --out DIR [--partitions 1000]
                                [--concurrency 100]

Prints how many replies it wrote; bench/openai_fanout.py times it from
outside, exactly as it times orch (process start to exit, SDK import included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

PROMPT = "# Item {item}\nWrite a short note with a '## Result' heading.\n"


async def fan_out(args: argparse.Namespace) -> int:
    """Send one request per item, at most `args.concurrency` at once; return how many wrote a reply."""
    import httpx2
    import openai

    limits = httpx2.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    client = openai.AsyncOpenAI(
        api_key=os.environ.get("FAKE_OPENAI_KEY", "bench-key"),
        base_url=args.base_url,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(limits=limits),
    )
    gate = asyncio.Semaphore(args.concurrency)
    out = Path(args.out)

    async def one(index: int) -> bool:
        item = f"item{index:05d}"
        async with gate:
            response = await client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": PROMPT.format(item=item)}]
            )
            text = response.choices[0].message.content or ""
            directory = out / item
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "out.md").write_text(text, encoding="utf-8")
            return bool(text)

    try:
        done = await asyncio.gather(*(one(i) for i in range(args.partitions)))
    finally:
        await client.close()
    return sum(done)


def main() -> None:
    """Run the fan-out and print the number of replies written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--out", required=True, help="directory the replies go under")
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    print(asyncio.run(fan_out(args)))


if __name__ == "__main__":
    main()
