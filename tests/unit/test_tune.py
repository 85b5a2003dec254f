"""tlearn.tune: the search space as a head and back, the study's name, and the loop that
fills a study to n_trials whichever processes run the trials (cheap objectives, a real
journal file): resuming, replacing the trials of a killed process, waiting for another
process's last trial, never running a trial past the total."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from conftest import make_config
from tlearn import tune

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def cfg():
    return make_config()


# --- the space ------------------------------------------------------------------------

def test_trial_params_become_the_head_with_every_other_key_from_params_yaml(cfg):
    head = tune.suggest_head(FixedTrial({"layers": 2, "units_0": 300, "units_1": 40,
                                         "dropout": 0.2, "learning_rate": 0.003}),
                             cfg.tune.space, cfg.head)
    assert (head.units, head.dropout, head.learning_rate) == ([300, 40], 0.2, 0.003)
    assert dataclasses.replace(head, units=cfg.head.units, dropout=cfg.head.dropout,
                               learning_rate=cfg.head.learning_rate) == cfg.head
    linear = tune.head_of({"layers": 0, "dropout": 0.5, "learning_rate": 0.01},
                          cfg.tune.space, cfg.head)
    assert linear.units == []  # 0 layers: softmax right on the features
    assert tune.searched_keys(cfg.tune.space) == ["units", "dropout", "learning_rate"]


def test_optional_keys_and_a_fixed_layer_count(cfg):
    space = dataclasses.replace(cfg.tune.space, layers=None, dropout=None, batch_size=[32, 128],
                                optimizer=["adam", "sgd"], label_smoothing=[0.0, 0.2])
    head = tune.head_of({"units_0": 64, "learning_rate": 0.001, "batch_size": 128,
                         "optimizer": "sgd", "label_smoothing": 0.1}, space, cfg.head)
    assert len(head.units) == len(cfg.head.units) == 1  # the layer count of head.units
    assert (head.units, head.batch_size, head.optimizer, head.label_smoothing,
            head.dropout) == ([64], 128, "sgd", 0.1, cfg.head.dropout)


def test_drawn_values_stay_in_their_ranges(cfg):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = cfg.tune.space
    for _ in range(30):
        head = tune.suggest_head(study.ask(), space, cfg.head)
        assert space.layers[0] <= len(head.units) <= space.layers[1]
        assert all(space.units[0] <= u <= space.units[1] for u in head.units)
        assert space.dropout[0] <= head.dropout <= space.dropout[1]
        assert space.learning_rate[0] <= head.learning_rate <= space.learning_rate[1]


def test_the_study_name_follows_data_and_objective_only(cfg):
    space, head = cfg.tune.space, cfg.head
    name = tune.study_name("a" * 64, space, head, "val_accuracy", 42)
    assert name.startswith("head-aaaaaaaa-")
    same = [tune.study_name("a" * 64, space, dataclasses.replace(head, dropout=0.1, units=[9]),
                            "val_accuracy", 42)]  # searched keys: tuning replaces them
    other = [tune.study_name("b" * 64, space, head, "val_accuracy", 42),
             tune.study_name("a" * 64, dataclasses.replace(space, dropout=[0.0, 0.3]), head,
                             "val_accuracy", 42),
             tune.study_name("a" * 64, space, dataclasses.replace(head, epochs=5),
                             "val_accuracy", 42),
             tune.study_name("a" * 64, space, head, "val_loss", 42),
             tune.study_name("a" * 64, space, head, "val_accuracy", 7)]
    assert set(same) == {name}
    assert len({name, *other}) == 6
    # without searching the layer count, head.units sets it
    fixed_layers = dataclasses.replace(space, layers=None)
    assert tune.study_name("a" * 64, fixed_layers, head, "val_accuracy", 42) != \
        tune.study_name("a" * 64, fixed_layers, dataclasses.replace(head, units=[8, 8]),
                        "val_accuracy", 42)


# --- filling a study ------------------------------------------------------------------

@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "optuna" / "journal.log")


def new_study(journal: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=tune.open_storage(journal),
                               load_if_exists=True)


def objective(calls: list[int] | None = None):
    def run(trial: optuna.Trial) -> float:
        if calls is not None:
            calls.append(trial.number)
        return trial.suggest_float("x", 0, 1)
    return run


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if tune.counts(t)]


def test_n_trials_is_the_total_a_rerun_completes(journal):
    study = new_study(journal)
    tune.optimize(study, objective(), 5)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 5
    calls: list[int] = []
    tune.optimize(new_study(journal), objective(calls), 5)
    assert calls == []  # already full: nothing runs
    tune.optimize(new_study(journal), objective(calls), 8)
    assert calls == [5, 6, 7]  # raised to 8: the 3 added trials only


def test_a_killed_process_s_trial_is_replaced_and_failures_count(journal):
    study = new_study(journal)
    tune.optimize(study, objective(), 2)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    killed = study.ask()  # what a SIGKILLed worker leaves: RUNNING forever
    killed.set_user_attr(tune.WORKER, {"host": socket.gethostname(),
                                       "pid": int(gone.stdout), "started": 0.0})
    failed = study.ask()
    failed.set_user_attr(tune.ERROR, "ValueError: bad")
    study.tell(failed, state=TrialState.FAIL)
    calls: list[int] = []
    tune.optimize(new_study(journal), objective(calls), 5)
    trials = new_study(journal).get_trials()
    assert trials[killed.number].state == TrialState.FAIL  # marked, not counted
    assert not tune.counts(trials[killed.number]) and tune.counts(trials[failed.number])
    assert calls == [4, 5]  # 2 done + 1 failed by its own error + 2 new = 5
    assert len(counted(new_study(journal))) == 5


def test_another_process_s_running_trial_is_waited_for(journal):
    study = new_study(journal)
    tune.optimize(study, objective(), 2)
    running = study.ask()  # another live process's trial: this test process
    running.set_user_attr(tune.WORKER, tune.process())

    def finish_later():
        time.sleep(1.5)
        new_study(journal).tell(running.number, 0.5)

    threading.Thread(target=finish_later).start()
    started = time.monotonic()
    tune.optimize(new_study(journal), objective(), 3)
    assert time.monotonic() - started >= 1.4  # returned once the study was finished
    assert [t.state for t in new_study(journal).get_trials()] == [TrialState.COMPLETE] * 3


def test_a_trial_started_past_the_total_is_skipped_not_run(journal):
    """Two processes see one trial missing and both start one: the later never runs."""
    study = new_study(journal)
    tune.optimize(study, objective(), 2)
    other = new_study(journal)
    raced = []
    real_ask = study.ask

    def ask_after_the_other_process(*args, **kwargs):
        if not raced:  # between this process's count and its ask
            raced.append(other.ask())
            raced[0].set_user_attr(tune.WORKER, tune.process())
            threading.Timer(1.0, lambda: other.tell(raced[0], 0.3)).start()
        return real_ask(*args, **kwargs)

    study.ask = ask_after_the_other_process
    calls: list[int] = []
    tune.optimize(study, objective(calls), 3)
    trials = new_study(journal).get_trials()
    assert calls == []
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert "already had its 3 trials" in trials[3].user_attrs[tune.SKIPPED]
    assert len(counted(new_study(journal))) == 3


def test_a_deadline_stops_starting_trials(journal):
    calls: list[int] = []

    def slow(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        time.sleep(0.4)
        return 0.0

    tune.optimize(new_study(journal), slow, 100, deadline=time.time() + 1.0)
    assert 2 <= len(calls) <= 4


def test_a_database_url_opens_a_database_storage_with_heartbeats(tmp_path):
    storage = tune.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() == tune.HEARTBEAT
    assert os.path.exists(tmp_path / "optuna.db")
