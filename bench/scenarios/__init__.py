"""Failure scenarios under a Locust load: faults injected on a schedule, and a verdict.

    python -m bench.scenarios kill-one                    # 60 s, 20 users, own balancer + stubs
    python -m bench.scenarios errors --duration 30 --users 10
    python -m bench.scenarios all                         # every scenario in turn, one table
    python -m bench.scenarios slow --host http://127.0.0.1:8080   # a running balancer
    python -m bench.scenarios --list                      # scenarios and their criteria
    python -m bench.scenarios kill-one --control          # the balancer's protection off
    python -m bench.scenarios all --load heavy            # >= 1/4 of the measured capacity
    python -m bench.scenarios all --matrix                # both loads, protected and control

Without ``--host`` the runner starts its own balancer on 127.0.0.1 (short health-check
intervals, pools ``default`` and ``large``, ``/large/`` routed to ``large``) and three
*nodes*: each node is one stub in ``default`` (small bodies) and one in ``large`` (64 KiB
bodies), all registered through the API with a base latency (``--latency``, 5 ms). A fault
hits every stub of a node, as if one machine serving both went wrong. With ``--host`` it
uses the balancer there and the registered stubs of ``--state-dir`` (``bunancer stubs
start --count 3 --register``), grouped into nodes by pool; ``--api`` defaults to the API
the stubs registered with.

Locust runs headless as a subprocess (bench/locustfile.py: each user sends ``--rate``
requests/s of small GETs, 64 KiB GETs and 4 KiB POSTs) and records every request into
per-second buckets; meanwhile this process injects the scenario's faults through the stubs
SDK on a schedule relative to the start of the load (the second node, ``n2``, is the
victim) and polls the API for server states. Locust's CSV and HTML report, the timeline,
the balancer's config and logs and ``summary.json`` go to
``bench/results/<scenario>-<time>/``. The summary: requests, failures, the failure window,
requests/s (median of whole seconds) and p99 before/during/after the fault, the victim's
share of answers, and PASS/FAIL against the scenario's criteria (``--list``; every
threshold is a promise of the README: verdicts.py). Exit code 0 when every scenario passed
(with ``--matrix``: every protected run), 1 when one failed, 2 when a run could not be set
up.

Modules: setup (the balancer, its stubs, the state monitor), faults (the schedule), verdicts
(the judges, sans-I/O), catalog (the scenarios), report (summaries and tables), runner
(Locust, loads, the command line).

Every process started here is stopped by its recorded PID (process group for the balancer
and Locust, the SDK's pid files for stubs); all traffic stays on 127.0.0.1.
"""

from bench.scenarios.catalog import SCENARIOS, Scenario
from bench.scenarios.runner import Options, main, run_scenario

__all__ = ["SCENARIOS", "Options", "Scenario", "main", "run_scenario"]
