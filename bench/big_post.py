#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 load with large bodies, for the photo section of bench/load.sh.

Each of --connections keep-alive connections to 127.0.0.1 posts the body back to back, every
request with its own job_details.job_id ("<job_id>-<run>-<connection>-<n>", spliced in without
copying the rest of the body), until --duration has passed or it has sent --per-connection
requests; a request started before the deadline is waited for (at most --timeout). The body
is written in chunks as the socket takes it, so a 30 MB body is never copied per request, and
an answer that comes before the whole body is sent (a 413, a 429) is read as soon as it comes
(unless the server closed the connection with the rest of the body unread, which resets it and
may discard the answer: that counts as an "io" error).

    bench/big_post.py --addr 127.0.0.1:PORT --key KEY --body photos-8mb.json \\
        --connections 8 --duration 20
    bench/big_post.py --addr 127.0.0.1:PORT --key K1 --key K2 --key K3 --key K4 \\
        --body photos-30mb.json --connections 64 --per-connection 1   # all 64 at once

Several --key values are handed out round robin over the connections. Latency runs from the
first byte of a request to the last byte of its answer (and, apart, to the last byte of its body
handed to the socket). Prints one machine-readable line starting with BIG_POST, then a human
summary. Bounded: loopback only, at most 256 connections, --duration at most 600 s, every
request at most --timeout seconds, --max-requests in all.
"""

import argparse
import asyncio
import json
import math
import re
import sys
import time

from loadlib import percentile, split_body

CHUNK = 256 * 1024


class Answer(Exception):
    """The connection cannot be used again (closed, or an answer came early)."""


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if m:
        await reader.readexactly(int(m.group(1)))
    elif re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    keep = not re.search(rb"(?i)\r\nconnection:\s*close", head)
    return status, keep


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True, help="HOST:PORT; the host must be 127.0.0.1")
    ap.add_argument("--key", action="append", required=True, help="API key; repeat for several")
    ap.add_argument("--body", required=True)
    ap.add_argument("--path", default="/v4/sip")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds during which requests are started")
    ap.add_argument("--per-connection", type=int, default=100000, help="most requests one connection sends")
    ap.add_argument("--max-requests", type=int, default=100000, help="most requests in all")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    ap.add_argument("--run", default=str(int(time.time())), help="tag put into every job_id")
    args = ap.parse_args()

    host, _, port = args.addr.rpartition(":")
    if host != "127.0.0.1":
        sys.exit("big_post.py only targets 127.0.0.1")
    port = int(port)
    if not (0 < args.connections <= 256 and 0 < args.duration <= 600 and 0 < args.timeout <= 600
            and 0 < args.per_connection and 0 < args.max_requests <= 100000):
        sys.exit("connections, duration, timeout or request counts out of the bounded range")

    before, after = split_body(args.body)
    before_view, after_view = memoryview(before), memoryview(after)
    heads = [
        (
            f"POST {args.path} HTTP/1.1\r\nHost: {args.addr}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {key}\r\n"
        ).encode()
        for key in args.key
    ]

    latencies = []  # seconds, first byte sent -> last byte of the answer
    sent = []  # seconds, first byte sent -> last byte of the body written (to the socket buffer)
    ok_latencies = []
    statuses = {}
    errors = {"connect": 0, "io": 0, "timeout": 0}
    started = [0]
    last_done = [0.0]

    async def one(reader, writer, head, conn, n):
        tag = f"-{args.run}-{conn}-{n}".encode()
        body_len = len(before) + len(tag) + len(after)

        async def send():
            t0 = time.perf_counter()
            writer.write(head + b"Content-Length: " + str(body_len).encode() + b"\r\n\r\n")
            for part in (before_view, memoryview(tag), after_view):
                for i in range(0, len(part), CHUNK):
                    writer.write(part[i:i + CHUNK])
                    await writer.drain()
            sent.append(time.perf_counter() - t0)

        sender = asyncio.create_task(send())
        try:
            status, keep = await read_answer(reader)
        finally:
            early = not sender.done()
            if early:
                sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionError, OSError):
                keep = False
        return status, keep and not early

    async def worker(conn, go, deadline_box):
        head = heads[conn % len(heads)]
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors["connect"] += 1
            return
        await go.wait()
        n = 0
        while n < args.per_connection and time.perf_counter() < deadline_box[0] and started[0] < args.max_requests:
            n += 1
            started[0] += 1
            t0 = time.perf_counter()
            keep = False
            try:
                status, keep = await asyncio.wait_for(one(reader, writer, head, conn, n), args.timeout)
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                if 200 <= status < 300:
                    ok_latencies.append(t1 - t0)
                last_done[0] = t1
                statuses[status] = statuses.get(status, 0) + 1
            except asyncio.TimeoutError:
                errors["timeout"] += 1
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError, ValueError):
                errors["io"] += 1
            if not keep:
                writer.close()
                if n >= args.per_connection or time.perf_counter() >= deadline_box[0]:
                    return
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    errors["connect"] += 1
                    return
        writer.close()

    go = asyncio.Event()
    deadline_box = [math.inf]
    workers = [asyncio.create_task(worker(c, go, deadline_box)) for c in range(args.connections)]
    await asyncio.sleep(0.2)  # every connection open before the first byte
    start = time.perf_counter()
    deadline_box[0] = start + args.duration
    go.set()
    # Bounded whatever happens: the deadline, then one request's timeout, then a margin.
    done, pending = await asyncio.wait(workers, timeout=args.duration + args.timeout + 5)
    for t in pending:
        t.cancel()

    lat = sorted(latencies)
    snt = sorted(sent)
    okl = sorted(ok_latencies)
    ms = lambda s: s * 1000.0
    ok = len(ok_latencies)
    elapsed = (last_done[0] - start) if latencies else 0.0
    result = {
        "body_bytes": len(before) + len(after),
        "connections": args.connections,
        "keys": len(args.key),
        "duration_s": args.duration,
        "started": started[0],
        "completed": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "ok": ok,
        "elapsed_s": elapsed,
        "ok_rate": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(lat[-1]) if lat else float("nan"),
        "min_ms": ms(lat[0]) if lat else float("nan"),
        "sent_p50_ms": ms(percentile(snt, 50)),
        "sent_max_ms": ms(snt[-1]) if snt else float("nan"),
        "ok_p50_ms": ms(percentile(okl, 50)),
        "ok_p99_ms": ms(percentile(okl, 99)),
        "unfinished_workers": len(pending),
    }
    print("BIG_POST " + json.dumps(result))
    print(
        f"{args.connections} connections, {result['body_bytes']} byte body: {len(latencies)}/{started[0]} answered "
        f"in {elapsed:.1f} s, statuses {result['statuses']}, errors {errors}; "
        f"{result['ok_rate']:.2f} accepted req/s; latency p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
