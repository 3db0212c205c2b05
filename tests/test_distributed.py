"""Several sweep processes on one study: PostgreSQL and journal storages, killed workers, a database restart.

Real processes (`python sweep.py -m ...` on the tiny model, or the toy app where only the database matters), a real
PostgreSQL server, a real `kill -9` and `pg_ctlcluster stop/start`. Tests marked `postgres` need
LORASWEEP_TEST_POSTGRES_URL (`.ci/run` starts a server and sets it); they are skipped without it, and fail instead
when LORASWEEP_REQUIRE_POSTGRES=1 (CI), so CI cannot pass by skipping them. Each such test gets a database of
its own, empty, dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from test_sweeper_e2e import ATTRS

from sweeper._budget import is_not_run

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "quadratic.py"
STUDY = "workers"
# a killed worker's trial: heartbeat every second, stale after 4 s without one
HEARTBEAT = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4"]

pytestmark = pytest.mark.slow


# --- PostgreSQL: a fresh database per test, and the server's switch -----------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("LORASWEEP_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"LORASWEEP_REQUIRE_POSTGRES=1, so this test must run, but {reason}")
    pytest.skip(reason)


def _admin_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the test server (the role has CREATEDB), dropped after the test."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = os.environ.get("LORASWEEP_TEST_POSTGRES_URL")
    if not base:
        _unavailable("LORASWEEP_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
    name = f"lorasweep_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(_admin_conninfo(base), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        _unavailable(f"the server of LORASWEEP_TEST_POSTGRES_URL cannot create a database: {str(e).strip()}")
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    _wait_for_server(base)
    with psycopg.connect(_admin_conninfo(base), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_for_server(url: str, timeout_s: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(_admin_conninfo(url), connect_timeout=5):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class PostgresServer:
    """`pg_ctlcluster <version> main stop|start` on the server the tests use (root, as in .ci/run)."""

    def __init__(self, version: str) -> None:
        self.version = version

    def stop(self) -> None:
        subprocess.run(["pg_ctlcluster", self.version, "main", "stop"], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        # exit status 2: already running
        proc = subprocess.run(["pg_ctlcluster", self.version, "main", "start"], capture_output=True, timeout=60)
        assert proc.returncode in (0, 2), proc.stderr
        _wait_for_server(os.environ["LORASWEEP_TEST_POSTGRES_URL"])


@pytest.fixture
def postgres_server(postgres_url: str) -> Iterator[PostgresServer]:
    from sqlalchemy.engine import make_url

    version = os.environ.get("PG_VERSION")
    if not version and Path("/usr/lib/postgresql").is_dir():
        version = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[-1]
    if make_url(postgres_url).host not in ("127.0.0.1", "localhost", "::1"):
        _unavailable("the test server is not on this machine, so it cannot be stopped and started")
    if not version or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        _unavailable("stopping and starting PostgreSQL needs root, pg_ctlcluster and PG_VERSION (as in .ci/run)")
    server = PostgresServer(version)
    try:
        yield server
    finally:
        server.start()  # whatever happened, the server runs again for the next tests


# --- running workers -----------------------------------------------------------------------------------------


def tiny_sweep(shared_data: Path, tmp_path: Path, storage: str, *args: str) -> list[str]:
    """`python sweep.py -m` on the tiny model and the SMS sample: seconds per trial."""
    return [
        sys.executable, str(ROOT / "sweep.py"), "-m", "model=tiny", "task=sms_spam",
        f"task.path={shared_data / 'sms_spam' / 'SMSSpamCollection'}", "task.max_length=48", "task.val_size=0.05",
        "task.test_size=0.05", "trainer.batch_size=8", "trainer.max_eval_batches=2", "trainer.save_checkpoint=false",
        "trainer.num_threads=1", f"paths.root_dir={tmp_path}", f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={STUDY}", "lora.rank=2,4,8", "optim.lr=tag(log, interval(1e-4, 1e-2))",
        "hydra/sweeper/sampler=random", *args,
    ]  # fmt: skip


def toy_sweep(tmp_path: Path, storage: str, *args: str) -> list[str]:
    """The toy app (tests/apps/quadratic.py): trials that only sleep and talk to the study."""
    return [
        sys.executable, str(APP), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={STUDY}", *args,
    ]  # fmt: skip


class Worker:
    """One sweep process, its output in a file (no pipe to fill up)."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def name(self) -> str:
        """The `worker` user attribute this process writes on its trials."""
        return f"{socket.gethostname()}:{self.proc.pid}"

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        return self.log.read_text()


def start_workers(
    n: int, command: list[str], tmp_path: Path, env: dict[str, str] | None = None, name: str = "worker"
) -> list[Worker]:
    return [Worker(command, tmp_path / f"{name}{i}.log", env) for i in range(n)]


def finish(workers: list[Worker], timeout: float = 240) -> list[int]:
    try:
        return [w.wait(timeout) for w in workers]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()


def load(storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    if isinstance(storage, str) and storage.startswith("journal:///"):
        path = storage[len("journal:///") :]
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.load_study(study_name=STUDY, storage=storage)


def wait_for(condition, what: str, timeout: float = 120, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except KeyError:  # the study is not created yet
            found = None
        if found:
            return found
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def run_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran (not those closed at once for losing a race for the budget's last place)."""
    return [t for t in study.trials if not is_not_run(t)]


def password_of(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def assert_no_password(password: str | None, *texts: str) -> None:
    if password:
        for text in texts:
            assert f":{password}@" not in text, "a storage URL with its password was written out"


def assert_shared_budget(study: optuna.Study, n_trials: int, workers: list[Worker]) -> None:
    """Exactly n_trials finished trials, no number twice, the trainer's user attributes on each."""
    trials = run_trials(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials, [(t.number, t.state) for t in trials]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    names = {w.name for w in workers}
    for trial in trials:
        assert set(trial.user_attrs) >= ATTRS, sorted(ATTRS - set(trial.user_attrs))
        assert trial.user_attrs["worker"] in names
        assert trial.value == trial.user_attrs["val_accuracy"]
    reported = sum(len(re.findall(r"\] trial \d+ COMPLETE", w.output)) for w in workers)
    assert reported == n_trials, "each trial is told once, by the worker that ran it"


# --- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_three_workers_started_together_on_an_empty_postgres_database_share_the_budget(
    shared_data, tmp_path, postgres_url
):
    command = tiny_sweep(shared_data, tmp_path, postgres_url, "trainer.max_steps=4", "hydra.sweeper.n_trials=6")
    workers = start_workers(3, command, tmp_path)
    assert finish(workers) == [0, 0, 0], [w.output[-3000:] for w in workers]
    study = load(postgres_url)
    assert_shared_budget(study, 6, workers)
    results = (tmp_path / "outputs" / "sweeps" / STUDY / "optimization_results.yaml").read_text()
    assert yaml.safe_load(results)["storage"] == postgres_url.replace(f":{password_of(postgres_url)}@", ":***@")
    attrs = [str(t.user_attrs) + str(t.system_attrs) for t in study.trials]
    assert_no_password(password_of(postgres_url), results, *attrs, *(w.output for w in workers))


@pytest.mark.postgres
def test_workers_racing_to_create_optunas_tables_all_succeed(postgres_url, tmp_path):
    """Eight processes open one empty database at the same instant (without a lock most of them fail)."""
    script = (
        "import sys, time, optuna\n"
        "from sweeper._storage import open_storage, open_study\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "storage = open_storage(sys.argv[1])\n"
        "open_study(storage, 'race', ['minimize'], optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(), None)\n"
    )
    start_at = str(time.time() + 4)  # after every interpreter has imported Optuna
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, postgres_url, start_at], env=env, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    assert len(optuna.get_all_study_summaries(postgres_url)) == 1


@pytest.mark.postgres
def test_a_wrong_password_fails_at_once_in_one_line_that_hides_it(tmp_path, postgres_url):
    """Refused for good (not a lost connection): no retries for reconnect_timeout, no traceback, no password."""
    wrong = postgres_url.replace(f":{password_of(postgres_url)}@", ":not-the-password@")
    started = time.monotonic()
    (worker,) = start_workers(1, toy_sweep(tmp_path, wrong, "x=0,1"), tmp_path)
    assert finish([worker], timeout=60) == [1]
    assert time.monotonic() - started < 30
    error = worker.output
    assert "The study's storage must be a database this worker can open, but got storage=postgresql+psycopg://" in error
    assert "password authentication failed" in error and "Traceback" not in error
    assert "not-the-password" not in error


def test_three_workers_on_a_journal_file_share_the_budget(shared_data, tmp_path):
    storage = f"journal:///{tmp_path / 'journal.log'}"
    command = tiny_sweep(shared_data, tmp_path, storage, "trainer.max_steps=4", "hydra.sweeper.n_trials=6")
    workers = start_workers(3, command, tmp_path)
    assert finish(workers) == [0, 0, 0], [w.output[-3000:] for w in workers]
    assert_shared_budget(load(storage), 6, workers)
    assert "Heartbeats need a database storage" in workers[0].output


@pytest.mark.postgres
def test_a_worker_killed_mid_trial_has_its_trial_failed_and_rerun_by_a_survivor(shared_data, tmp_path, postgres_url):
    password = password_of(postgres_url)
    # the workers use the URL without its password, which libpq then reads from PGPASSWORD (the README's advice)
    hidden = postgres_url.replace(f":{password}@", "@")
    command = tiny_sweep(
        shared_data, tmp_path, hidden, "trainer.max_steps=40", "trainer.eval_every=10", "hydra.sweeper.n_trials=5",
        *HEARTBEAT,
    )  # fmt: skip
    storage = optuna.storages.RDBStorage(postgres_url)
    workers = start_workers(3, command, tmp_path, env={"PGPASSWORD": password or ""})
    victim, survivors = workers[0], workers[1:]

    def victim_mid_trial() -> FrozenTrial | None:
        for trial in load(storage).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker") == victim.name and trial.intermediate_values:
                return trial
        return None

    killed = wait_for(victim_mid_trial, "the first worker to be in the middle of a trial")
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = dt.datetime.now()
    assert finish(survivors) == [0, 0], [w.output[-3000:] for w in survivors]
    assert victim.wait() == -signal.SIGKILL

    trials = run_trials(load(storage))
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 5, TrialState.FAIL: 1}
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number == killed.number
    # stale = no heartbeat for grace_period (4 s); the last one came at most an interval (1 s) before the kill,
    # and a survivor checks every interval: FAIL within the grace period plus one check (and slack for 2 busy cores)
    assert (failed.datetime_complete - killed_at).total_seconds() <= 4 + 1 + 3
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]  # Optuna's retry mark
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["retry_of"] == killed.number
    assert retry.user_attrs["worker"] in {w.name for w in survivors}
    assert set(retry.user_attrs) >= ATTRS
    logs = "".join(w.output for w in survivors)
    assert f"trial {killed.number} ({victim.name}) sent no heartbeat for grace_period=4 s: FAIL" in logs
    assert "supposed to be used with Study.optimize" not in logs and "ExperimentalWarning" not in logs
    assert_no_password(password, logs)


def test_a_killed_job_under_joblib_fails_only_its_own_trial_not_those_beside_it(tmp_path):
    """n_jobs=2: the job of x=3 kills its process, loky's shared pool dies with the other trial in flight; that
    trial is run again alone and completes, and x=3 (which kills its process again) alone is FAIL."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = toy_sweep(
        tmp_path, storage, "x=0,3,1", "kill_above=2.5", "sleep_s=1.0", "hydra/sweeper/sampler=grid",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
    )  # fmt: skip
    (worker,) = start_workers(1, command, tmp_path)
    assert finish([worker], timeout=120) == [0], worker.output[-3000:]
    trials = load(storage).trials
    by_x = {t.params["x"]: t for t in trials}
    assert len(trials) == 3 and by_x[0].state == by_x[1].state == TrialState.COMPLETE
    assert by_x[3].state == TrialState.FAIL
    assert by_x[3].user_attrs["fail_reason"].endswith("(run again alone, its job ended its worker process again)")
    assert "the launcher's process pool broke while other trials ran beside it" in worker.output


@pytest.mark.postgres
def test_a_postgres_restart_during_a_sweep_loses_no_trial(tmp_path, postgres_url, postgres_server):
    """Two workers; the server stops for a few seconds while trials run and report: jobs and sweepers retry,
    both workers end normally and every trial completes once."""
    command = toy_sweep(
        tmp_path, postgres_url, "x=interval(-2.0,2.0)", "hydra.sweeper.n_trials=8", "sleep_s=0.4",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=20", "hydra.sweeper.reconnect_timeout=60",
    )  # fmt: skip
    storage = optuna.storages.RDBStorage(postgres_url)
    workers = start_workers(2, command, tmp_path)
    wait_for(lambda: len(load(storage).get_trials(states=(TrialState.COMPLETE,))) >= 3, "three complete trials")
    before = {t.number: t.value for t in load(storage).get_trials(states=(TrialState.COMPLETE,))}
    postgres_server.stop()
    time.sleep(3)
    postgres_server.start()
    assert finish(workers, timeout=180) == [0, 0], [w.output[-3000:] for w in workers]

    storage = optuna.storages.RDBStorage(postgres_url)  # a fresh connection after the restart
    trials = run_trials(load(storage))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8, [(t.number, t.state) for t in trials]
    values = {t.number: t.value for t in trials}
    assert before.items() <= values.items(), "a trial complete before the restart is still complete"
    logs = "".join(w.output for w in workers)
    assert "trying again for up to" in logs, "the workers lost the database for a while"
    for number, value in re.findall(r"\] trial (\d+) COMPLETE: ([^ ]+)", logs):
        assert values[int(number)] == pytest.approx(float(value)), "every result a worker logged is in the study"
    assert_no_password(password_of(postgres_url), logs)


@pytest.mark.postgres
def test_a_worker_that_cannot_write_a_result_stops_clearly_and_the_trial_is_rerun(
    tmp_path, postgres_url, postgres_server
):
    """The server stays down longer than reconnect_timeout while a trial runs: the worker exits with one clear
    error; the trial, no longer beating, becomes stale, and the next worker fails it and runs it again."""
    args = ["x=0,1,2", "hydra/sweeper/sampler=grid", "sleep_s=0.5", "report=false"]  # only the sweeper writes
    args += ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    storage = optuna.storages.RDBStorage(postgres_url)
    (first,) = start_workers(1, toy_sweep(tmp_path, postgres_url, *args, "hydra.sweeper.reconnect_timeout=2"), tmp_path)
    running = wait_for(
        lambda: load(storage).get_trials(states=(TrialState.RUNNING,)) if len(load(storage).trials) >= 2 else None,
        "the second trial to run",
    )[0]
    postgres_server.stop()
    try:
        assert first.wait(timeout=60) != 0
    finally:
        postgres_server.start()
    error = first.output
    assert f"Trial {running.number}'s result (COMPLETE [" in error and "could not be written" in error, error[-3000:]
    assert "did not answer for reconnect_timeout=2 s" in error and "runs its parameters again" in error
    storage = optuna.storages.RDBStorage(postgres_url)
    after = load(storage).trials
    assert after[running.number].state == TrialState.RUNNING
    assert all(t.state == TrialState.COMPLETE for t in after if t.number < running.number), "no result is lost"

    (second,) = start_workers(1, toy_sweep(tmp_path, postgres_url, *args), tmp_path, name="second")
    assert finish([second]) == [0], second.output[-3000:]
    trials = load(storage).trials
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    assert trials[running.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == running.number]
    assert retry.state == TrialState.COMPLETE and retry.params == running.params
    assert_no_password(password_of(postgres_url), error, second.output)
