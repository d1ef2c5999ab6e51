"""Cost of confining a forked child, per layer and for all layers, against a plain fork from the same run.

Each sample forks a child that applies one layer set with ``apply_policy`` (a no-op for the baseline), writes
the time its ``apply_policy`` took to a pipe and leaves with ``os._exit``; the parent times fork to reap.
Variants run interleaved (round-robin) so that drift on a shared machine spreads evenly over them. The
seccomp program is built once in the parent, as the workers do; its build cost is shown separately.

Run: ``.venv/bin/python bench/bench_confine.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time

from workers.confine import ALL_LAYERS, Layer, SandboxPolicy, apply_policy, build_program

VARIANTS: dict[str, tuple[Layer, ...]] = {
    "plain fork (baseline)": (),
    "no_new_privs": (Layer.NO_NEW_PRIVS,),
    "netns": (Layer.NETNS,),
    "rlimits": (Layer.RLIMITS,),
    "landlock (+nnp)": (Layer.NO_NEW_PRIVS, Layer.LANDLOCK),
    "seccomp (+nnp)": (Layer.NO_NEW_PRIVS, Layer.SECCOMP),
    "all layers": ALL_LAYERS,
}


def sample(layers: tuple[Layer, ...], program: bytes) -> tuple[float, float]:
    """Fork one child that applies ``layers``; return (fork-to-reap seconds, in-child apply seconds)."""
    policy = SandboxPolicy(layers=layers)
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(read_fd)
            begin = time.perf_counter()
            report = apply_policy(policy, program) if layers else None
            elapsed = time.perf_counter() - begin
            code = 0 if report is None or report.complete else 71
            os.write(write_fd, struct.pack("d", elapsed))
        finally:
            os._exit(code)
    os.close(write_fd)
    data = os.read(read_fd, 8)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    total = time.perf_counter() - start
    if status != 0 or len(data) != 8:
        raise SystemExit(f"child for {layers} failed (wait status {status})")
    return total, struct.unpack("d", data)[0]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, by the inclusive method."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main() -> None:
    """Measure every variant and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="samples per variant")
    args = parser.parse_args()

    builds = []
    for _ in range(20):
        begin = time.perf_counter()
        program = build_program()
        builds.append(time.perf_counter() - begin)

    totals: dict[str, list[float]] = {name: [] for name in VARIANTS}
    applies: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, layers in VARIANTS.items():
            total, applied = sample(layers, program)
            totals[name].append(total)
            applies[name].append(applied)

    base50 = percentile(totals["plain fork (baseline)"], 0.50)
    ms = 1000.0
    print(f"{args.runs} runs per variant; seccomp program: {len(program) // 8} BPF instructions")
    print(
        f"building the seccomp program (parent, once): p50 {percentile(builds, 0.5) * ms:.2f} ms, "
        f"p95 {percentile(builds, 0.95) * ms:.2f} ms"
    )
    header = f"{'variant':<24}{'fork..reap p50':>16}{'p95':>10}{'x baseline':>12}{'apply p50':>12}{'p95':>10}"
    print(header)
    print("-" * len(header))
    for name in VARIANTS:
        t50, t95 = percentile(totals[name], 0.50), percentile(totals[name], 0.95)
        a50, a95 = percentile(applies[name], 0.50), percentile(applies[name], 0.95)
        print(
            f"{name:<24}{t50 * ms:>13.2f} ms{t95 * ms:>7.2f} ms{t50 / base50:>11.2f}x"
            f"{a50 * ms:>9.3f} ms{a95 * ms:>7.3f} ms"
        )


if __name__ == "__main__":
    main()
