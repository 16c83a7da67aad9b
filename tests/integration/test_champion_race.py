"""Two decisions racing for ``@champion`` on the real MLflow server: the better model wins, the loser says why.

Orderings: two threads released together (each started first, twice), and two forced
interleavings, where the other decision runs whole between one decision's read and its write
(a real ``MlflowClient`` whose first alias write first lets the other decision run).
"""

from __future__ import annotations

import itertools
import threading

import mlflow
import pytest
import torch
from eoforge.tracking import champion as registry_champion
from eoforge.tracking.champion import ChampionDecision, decide_champion
from eoforge.tracking.registry import register_backbone

METRIC = "val/aa"
_names = itertools.count()


def _versions(stack, values: list[float]) -> tuple[str, list[str]]:
    """A fresh registered model with one version per value (tagged by the decisions, not here)."""
    name = f"it-race-{next(_names)}"
    client = mlflow.MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("it-race") or client.get_experiment(client.create_experiment("it-race"))
    versions = []
    for _ in values:
        run = client.create_run(exp.experiment_id)
        versions.append(register_backbone(torch.nn.Linear(2, 2), name, None, run.info.run_id, stack.mlflow_url, {})[0])
    return name, versions


def _champion(stack, name: str) -> str:
    return mlflow.MlflowClient(stack.mlflow_url).get_model_version_by_alias(name, "champion").version


def _check(name: str, stack, better: str, worse: str, decisions: dict[str, ChampionDecision]) -> None:
    assert _champion(stack, name) == better, {v: d.reason for v, d in decisions.items()}
    assert decisions[better].promoted, decisions[better].reason
    lost = decisions[worse]
    if lost.promoted:  # it finished before the better one started: replaced in turn, as the better one says
        assert decisions[better].previous_version == worse, decisions[better].reason
    else:  # it says why, naming the better version
        assert f"version {better}" in lost.reason, lost.reason


@pytest.mark.parametrize(("first", "repeat"), [("worse", 0), ("better", 0), ("worse", 1), ("better", 1)])
def test_two_threads_racing_leave_the_better_model_champion(stack, first: str, repeat: int) -> None:
    assert stack.running("mlflow") and stack.ray_cmdline  # eoforge up recorded who it started
    name, (old, worse, better) = _versions(stack, [0.5, 0.6, 0.7])
    assert decide_champion(stack.mlflow_url, name, old, METRIC, 0.5).promoted  # an earlier champion
    order = [(worse, 0.6), (better, 0.7)] if first == "worse" else [(better, 0.7), (worse, 0.6)]
    gate = threading.Barrier(2)
    decisions: dict[str, ChampionDecision] = {}
    errors: list[BaseException] = []

    def decide(version: str, value: float) -> None:
        try:
            gate.wait(timeout=60)
            decisions[version] = decide_champion(stack.mlflow_url, name, version, METRIC, value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=item) for item in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    _check(name, stack, better, worse, decisions)


@pytest.mark.parametrize("late", ["worse", "better"])
def test_a_decision_that_runs_whole_between_anothers_read_and_write(
    stack, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """``late`` read the alias (none yet), then the other decision ran to its end, then ``late`` wrote."""
    name, (worse, better) = _versions(stack, [0.6, 0.7])
    values = {worse: 0.6, better: 0.7}
    late_v, other_v = (worse, better) if late == "worse" else (better, worse)
    decisions: dict[str, ChampionDecision] = {}
    real = mlflow.MlflowClient
    fired = threading.Event()

    class ReadThenOthersTurn(real):  # the real client; its first alias write waits for the other decision
        def set_registered_model_alias(self, *args: object, **kwargs: object) -> None:
            if not fired.is_set():
                fired.set()
                decisions[other_v] = decide_champion(stack.mlflow_url, name, other_v, METRIC, values[other_v])
            super().set_registered_model_alias(*args, **kwargs)

    monkeypatch.setattr(mlflow, "MlflowClient", ReadThenOthersTurn)
    decisions[late_v] = decide_champion(stack.mlflow_url, name, late_v, METRIC, values[late_v])
    monkeypatch.setattr(mlflow, "MlflowClient", real)
    assert fired.is_set()
    _check(name, stack, better, worse, decisions)
    if late == "worse":  # its write landed over the better champion: it saw that and handed the alias back
        assert not decisions[worse].promoted and "handed back" in decisions[worse].reason
    # the decisions' entrants tag stays on both versions, so later decisions see this race
    tags = mlflow.MlflowClient(stack.mlflow_url).get_model_version(name, worse).tags
    assert registry_champion.DECIDED_TAG in tags
