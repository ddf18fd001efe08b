#!/usr/bin/env python3
"""Where the gateway's CPU goes, from `perf script` output of a `perf record -g --call-graph dwarf`
of the running server (bench/load.sh does this with PERF=1).

    perf script -i perf.data -F comm,tid,period,ip,sym --no-inline | bench/perf_summary.py

Each sample is charged to the first step below whose marker is on its stack (leaf to root), so
the shares add up to 100%. The markers are function names of this crate and its dependencies:
when a function is renamed, its samples fall to a later row ("other" at worst), never vanish.
"""

import collections
import sys

# (row, markers): every marker must be on the stack; "@name" matches the thread name instead.
STEPS = [
    ("dispatch: sink write + fsync (blocking pool)", ["put_if_absent"]),
    ("dispatch: outbox scan (Store::pending)", ["flowgate::store::Store::pending"]),
    ("dispatch: other", ["flowgate::dispatch::"]),
    ("store writer: fsync (kernel)", ["@store-writer", "do_fsync"]),
    ("store writer: redb inserts, commit, serialisation", ["@store-writer"]),
    ("inbound poller", ["flowgate::inbound::"]),
    ("decide: rules (rhai)", ["flowgate::rules::Rules::run_batch"]),
    ("decide: body to rule scope", ["flowgate::rules::scope_for"]),
    ("decide: schema", ["flowgate::validate::"]),
    ("decide: parse", ["flowgate::pipeline::parse"]),
    ("decide: canonical hash", ["flowgate::pipeline::canonical_hash"]),
    ("decide: flow files", ["flowgate::flows::"]),
    ("decide: other", ["flowgate::pipeline::decide"]),
    # rhai recursion can be deeper than the sampled stack: such samples never reach run_batch.
    ("decide: rules (rhai, stack cut short)", ["rhai::"]),
    ("store: read path (replay lookup, record reads)", ["flowgate::store::Store::"]),
    ("logging (tracing fmt to stderr)", ["tracing_subscriber::"]),
    ("metrics", ["flowgate::metrics::"]),
    ("answer JSON / problem", ["flowgate::server::json_answer", "flowgate::server::problem"]),
    ("HTTP: hyper, sockets, auth, limits, body read", ["flowgate::server::"]),
    ("HTTP: hyper (outside the handler)", ["hyper"]),
    ("tokio scheduler / park", ["tokio::runtime::"]),
]


def classify(comm, stack):
    text = "\n".join(stack)
    for row, markers in STEPS:
        if all((comm == m[1:]) if m.startswith("@") else (m in text) for m in markers):
            return row
    return "other"


def samples(lines):
    comm, stack = None, []
    for line in lines:
        if line and not line[0].isspace():
            if comm is not None:
                yield comm, stack
            comm, stack = line.split()[0], []
        elif line.strip():
            parts = line.strip().split(" ", 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
    if comm is not None:
        yield comm, stack


def main():
    # --other: also list the commonest stacks (5 frames from the leaf) that matched no step.
    show_other = "--other" in sys.argv[1:]
    rows, threads, others, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for comm, stack in samples(sys.stdin):
        total += 1
        threads[comm] += 1
        row = classify(comm, stack)
        rows[row] += 1
        if row == "other":
            others[comm + ": " + " < ".join(stack[:5])[:300]] += 1
    if not total:
        sys.exit("no samples on stdin")
    print(f"{total} samples")
    print("\n| step | share of samples |\n|---|---|")
    for row, n in rows.most_common():
        print(f"| {row} | {100 * n / total:.1f}% |")
    print("\n| thread | share of samples |\n|---|---|")
    for comm, n in threads.most_common():
        print(f"| {comm} | {100 * n / total:.1f}% |")
    if show_other:
        print("\nCommonest stacks in \"other\":\n")
        for stack, n in others.most_common(15):
            print(f"- {100 * n / total:.1f}% {stack}")


if __name__ == "__main__":
    main()
