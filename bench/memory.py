"""``--memory``: the server's resident memory across a long run of new executions."""

from __future__ import annotations

from bench.harness import BODY_MARGIN, Bench, Scenario, check_exactly_once, scenario_space, verdict

MIB = 1024 * 1024
WARMUP_S = 10.0  # the first round; RSS after it is the baseline "flat" is judged against
ROUND_S = 30.0
# "Flat": the second half of the run adds at most 2%. The first half may not be flat: bounded
# caches fill there (SQLite keeps up to 2 MiB of pages per pooled connection).
FLAT = 0.02


def run_memory(bench: Bench, total: int) -> None:
    """Demo-mode echo with a unique nonce per request (so the store grows too), in rounds of
    fresh bodies until ``total`` requests were answered; RSS is read while the server idles
    between rounds."""
    scenario = Scenario("demo echo, unique nonces", mode="demo", approval=None)
    print(f"\nMemory: {total:,} requests, {scenario.label}, 1 worker, SQLite", flush=True)
    with scenario_space(bench, scenario, "memory") as space:
        with space.serve(scenario) as server:
            samples = [(0, server.rss_bytes())]
            print(f"  {0:>9,} requests {'':>13} RSS {samples[0][1] / MIB:7.1f} MiB", flush=True)
            rps, answered, rounds = bench.budget(1, 1) / BODY_MARGIN, 0, 0
            while answered < total:
                full = ROUND_S if rounds else WARMUP_S
                seconds = min(full, max(2.0, (total - answered) / rps))
                bodies = bench.mint(
                    scenario, space, f"round{rounds}", int(rps * seconds * BODY_MARGIN) + 500
                )
                result = bench.drive(server, bodies, seconds, "once")
                answered, rps, rounds = answered + result.requests, result.rps, rounds + 1
                samples.append((answered, server.rss_bytes()))
                print(
                    f"  {answered:>9,} requests {result.rps:>7.0f} req/s"
                    f" RSS {samples[-1][1] / MIB:7.1f} MiB",
                    flush=True,
                )
        check = check_exactly_once(space.database, answered, bench.slack(rounds))
    (_, idle), (_, warm), (_, end) = samples[0], samples[1], samples[-1]
    middle_count, middle = next(sample for sample in samples if sample[0] >= answered / 2)
    late = (end - middle) / middle
    per_request = (end - middle) / max(answered - middle_count, 1)
    print(f"  RSS before: {idle / MIB:.1f} MiB idle, {warm / MIB:.1f} MiB after the first round")
    print(f"  RSS after:  {end / MIB:.1f} MiB after {answered:,} requests ({check})")
    print(f"  growth after the first round: {(end - warm) / warm:+.1%}")
    print(
        f"  growth over the second half (from {middle_count:,} requests): {late:+.1%}"
        f" ({per_request:+.1f} bytes/request); flat (<= {FLAT:.0%}): {verdict(late <= FLAT)}"
    )
