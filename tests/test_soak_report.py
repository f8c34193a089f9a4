"""The soak's judge, without a broker: it passes a clean run and names each way one can fail."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from soak.monitor import Stall
from soak.report import Outcome, StopSummary, parse_stop_summary
from soak.traffic import expected_events


def messages_for(flows: int) -> list[tuple[str, bytes]]:
    return [(f"p-{n}", json.dumps({"Type": kind, "Original": {
        "Layer3": {"Dst": address}, "Layer4": {"Dport": port}}}).encode())
        for n, (kind, address, port) in enumerate(expected_events(flows), 1)]


def outcome(**changes: Any) -> Outcome:
    flows = changes.pop("flows", 50)
    fields: dict[str, Any] = {
        "flows": flows, "messages": messages_for(flows),
        "stop": StopSummary(2 * flows, 2 * flows, 0, {}), "exit_code": 0,
        "exited_early": False, "injected": Counter({"stall": 1}), "scheduled": ["stall"],
        "faults_without_effect": [], "fault_error": None,
        "stall": Stall(10.0, 50.0, "fault stall"), "metric_samples": 800,
        "peak_outstanding": 900,
        "max_buffer_events": 500_000, "max_stall_s": 30.0, "elapsed_s": 200.0}
    fields.update(changes)
    return Outcome(**fields)


def test_a_clean_run_passes_and_duplicates_are_allowed() -> None:
    assert outcome().failures() == []
    run = outcome()
    run.messages += run.messages[:7]  # republished after a lost connection: same message_id
    run.__post_init__()
    assert run.failures() == [] and run.duplicates == 7


def test_the_stop_summary_is_parsed_with_its_reasons() -> None:
    line = ("... INFO stopped: received 6940 events, delivered 4840, not delivered 2100 "
            "(fatal: 2100, shutdown: 3); the kernel dropped 292 event(s) before we could read them "
            "(socket buffer full)")
    lines = ["x", line]
    assert parse_stop_summary(lines) == StopSummary(6940, 4840, 2100,
                                                    {"fatal": 2100, "shutdown": 3})
    assert parse_stop_summary(["no summary"]) is None


def test_each_failure_is_named() -> None:
    def fails(run: Outcome, text: str) -> None:
        assert any(text in failure for failure in run.failures()), run.failures()

    missing = outcome()
    del missing.messages[3]
    missing.__post_init__()
    fails(missing, "1 event(s) counted as received are neither in the queue")
    fails(missing, "1 are not in the queue")
    fails(outcome(stop=StopSummary(100, 90, 10, {"fatal": 10})), "dropped for 'fatal'")
    fails(outcome(stop=StopSummary(100, 90, 10, {"buffer_full": 10})), "backlog peaked at 900")
    fails(outcome(stop=StopSummary(100, 101, 0, {})), "the broker confirmed 101")
    fails(outcome(stall=Stall(31.0, 5.0, "fault node-kill")), "a stall of 31.0 s")
    fails(outcome(exited_early=True, exit_code=1), "exited during the soak")
    fails(outcome(exit_code=143), "exit code after SIGTERM: 143")
    fails(outcome(injected=Counter()), "fault stall never injected")
    fails(outcome(faults_without_effect=["proxy-reset: none"]), "without effect")
    fails(outcome(stop=None), "no stop summary")
    fails(outcome(metric_samples=0), "metrics were never read")
    again = outcome()
    again.messages.append(("p-new", again.messages[0][1]))
    again.__post_init__()
    fails(again, "again under another message_id")
    conflict = outcome()
    conflict.messages.append(("p-1", b'{"other": 1}'))
    conflict.__post_init__()
    fails(conflict, "repeated with a different body")
