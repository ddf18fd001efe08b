#!/usr/bin/env python3
"""Open-loop, fixed-rate HTTP/1.1 load for bench/load.sh (wrk has no fixed-rate mode and wrk2 is
not packaged in Debian).

Request i is *scheduled* at start + i/rate whatever happened before it; its latency runs from
that scheduled time to the end of its answer, so a stall shows up in every request it delays
(no coordinated omission). Requests go over a pool of keep-alive connections to 127.0.0.1 only;
a request whose scheduled time has come waits for a free connection, and that wait is counted.

    bench/fixed_rate.py --addr 127.0.0.1:PORT --key KEY --body tests/bench/s01-reference.json \
        --rate 1000 --duration 10 --connections 32

Prints one machine-readable line starting with FIXED_RATE, then a human summary. Bounded: it
schedules rate*duration requests and gives in-flight ones at most --drain seconds afterwards.
"""

import argparse
import asyncio
import json
import re
import sys
import time

from loadlib import percentile, split_body


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True, help="HOST:PORT; the host must be 127.0.0.1")
    ap.add_argument("--key", required=True)
    ap.add_argument("--body", default="tests/bench/s01-reference.json")
    ap.add_argument("--path", default="/v4/sip")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of scheduled load")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--drain", type=float, default=5.0, help="seconds allowed after the last send")
    ap.add_argument("--run", default=str(int(time.time())), help="tag put into every job_id")
    args = ap.parse_args()

    host, _, port = args.addr.rpartition(":")
    if host != "127.0.0.1":
        sys.exit("fixed_rate.py only targets 127.0.0.1")
    port = int(port)
    if not (0 < args.rate <= 20000 and 0 < args.duration <= 120 and 0 < args.connections <= 512):
        sys.exit("rate, duration or connections out of the bounded range")

    before, after = split_body(args.body)
    head = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.addr}\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {args.key}\r\n"
    ).encode()
    tag = f"-{args.run}-fr-".encode()

    def request_bytes(i):
        body = before + tag + str(i).encode() + after
        return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    total = int(round(args.rate * args.duration))
    queue = asyncio.Queue()
    latencies = []  # seconds, scheduled time -> last byte of the answer
    send_lag = []  # seconds, scheduled time -> request written (generator + pool wait)
    gen_lag = []  # seconds, scheduled time -> handed to the pool (the generator's own lateness)
    last_done = [0.0]
    statuses = {}
    errors = {"connect": 0, "io": 0, "timeout": 0}

    conns = []
    for _ in range(args.connections):
        conns.append(await asyncio.open_connection(host, port))

    async def worker(reader, writer):
        while True:
            item = await queue.get()
            if item is None:
                return
            i, scheduled = item
            try:
                writer.write(request_bytes(i))
                send_lag.append(time.perf_counter() - scheduled)
                head_bytes = await reader.readuntil(b"\r\n\r\n")
                status = int(head_bytes[9:12])
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head_bytes)
                if m:
                    await reader.readexactly(int(m.group(1)))
                now = time.perf_counter()
                latencies.append(now - scheduled)
                last_done[0] = now
                statuses[status] = statuses.get(status, 0) + 1
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                errors["io"] += 1
                try:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    errors["connect"] += 1
                    return

    workers = [asyncio.create_task(worker(r, w)) for r, w in conns]

    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, scheduled))
        gen_lag.append(time.perf_counter() - scheduled)
    for _ in workers:
        queue.put_nowait(None)
    done, pending = await asyncio.wait(workers, timeout=args.drain)
    for t in pending:
        t.cancel()
    for _, w in conns:
        w.close()

    completed = len(latencies)
    errors["timeout"] = total - completed - errors["io"]
    lat = sorted(latencies)
    lag = sorted(send_lag)
    glag = sorted(gen_lag)
    ms = lambda s: s * 1000.0
    result = {
        "target_rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "scheduled": total,
        "completed": completed,
        "achieved_rate": completed / (last_done[0] - start) if completed else 0.0,
        "statuses": statuses,
        "errors": errors,
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "p999_ms": ms(percentile(lat, 99.9)),
        "max_ms": ms(lat[-1]) if lat else float("nan"),
        "send_lag_p99_ms": ms(percentile(lag, 99)),
        "send_lag_max_ms": ms(lag[-1]) if lag else float("nan"),
        "generator_lag_p99_ms": ms(percentile(glag, 99)),
        "generator_lag_max_ms": ms(glag[-1]) if glag else float("nan"),
    }
    print("FIXED_RATE " + json.dumps(result, sort_keys=True))
    print(
        f"{completed}/{total} answered at {args.rate:g} req/s over {args.connections} connections; "
        f"statuses {statuses}; errors {errors}\n"
        f"latency from scheduled send: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"p99.9 {result['p999_ms']:.2f} ms, max {result['max_ms']:.2f} ms\n"
        f"scheduled -> written (generator lateness + wait for a free connection): "
        f"p99 {result['send_lag_p99_ms']:.2f} ms, max {result['send_lag_max_ms']:.2f} ms; "
        f"generator lateness alone: p99 {result['generator_lag_p99_ms']:.2f} ms, "
        f"max {result['generator_lag_max_ms']:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
