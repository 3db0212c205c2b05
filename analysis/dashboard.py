"""The report's conclusions inside optuna-dashboard: the answer on the study page, figures and files as artifacts.

    optuna-dashboard sqlite:///sweeps.db --artifact-dir sweeps-artifacts

Each verdict is a study user attribute (`answer: <task> · <model>`), which the study's first page lists; the full
answer (verdicts and what LoRA saves) is the study's note, Markdown (`optuna_dashboard.save_note`); the report's part
of it sits between two invisible marker lines, so text a person wrote into the note in the dashboard is kept.
Artifacts go to a file-system store (`optuna.artifacts.FileSystemArtifactStore`, by default `<database
stem>-artifacts/` beside a SQLite file): report.html and the study's figures on the study, each trial's
metrics.json, training curve and (alpaca) a sample of its generations on the trial. Finished trials cannot take new
system attributes, so trial artifacts are recorded where optuna-dashboard also looks for them: the study attribute
`dashboard:artifacts:<trial_id>:<artifact_id>`.

Re-running replaces, never duplicates: the study attribute `lorasweep:report_artifacts` remembers what the last
run uploaded; the same file of the same trial keeps its artifact id (its content is overwritten), and artifacts the
new run no longer produces are removed from the store and their records cleared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import get_note, save_note
from sqlalchemy.engine import make_url

from analysis import runs
from analysis.study_plots import train_curve_plot

logger = logging.getLogger(__name__)

TRACK_ATTR = "lorasweep:report_artifacts"
STUDY_PREFIX = "artifacts:"  # optuna.artifacts' key for a study artifact (study system attribute)
TRIAL_PREFIX = "dashboard:artifacts:{trial_id}:"  # optuna-dashboard's key for a trial artifact, on the study
NOTE_START = "[//]: # (lorasweep report: start - replaced by python -m analysis.report)"
NOTE_END = "[//]: # (lorasweep report: end)"
SAMPLE_ROWS = 20  # generations per alpaca trial in its sample artifact


def default_artifact_dir(storage_url: str) -> Path | None:
    """`<stem>-artifacts/` beside a SQLite database or a journal file; None for a server database."""
    if "://" not in storage_url:
        path = Path(storage_url)
        return path.with_name(f"{path.stem}-artifacts")
    if storage_url.startswith("sqlite:"):
        database = make_url(storage_url).database
        if database and database != ":memory:":
            path = Path(database)
            return path.with_name(f"{path.stem}-artifacts")
    return None


def merge_note(existing: str, section: str) -> str:
    """`existing` with the report's section (between the markers) replaced by `section`, or added on top."""
    block = f"{NOTE_START}\n\n{section.strip()}\n\n{NOTE_END}"
    if NOTE_START in existing and NOTE_END in existing:
        before, rest = existing.split(NOTE_START, 1)
        after = rest.split(NOTE_END, 1)[1]
        return f"{before}{block}{after}"
    return block + ("\n\n" + existing.strip() if existing.strip() else "")


def write_note(study: optuna.Study, section: str) -> str:
    """Put the report's section into the study's note, keeping the rest; returns the note as written."""
    body = merge_note(get_note(study), section)
    save_note(study, body)
    return body


@dataclass(frozen=True)
class Upload:
    """One file to attach: to the study (trial_id None) or to a trial."""

    path: Path
    trial_id: int | None
    name: str  # the file name the dashboard shows

    @property
    def key(self) -> str:
        return f"{'' if self.trial_id is None else self.trial_id}/{self.name}"


def trial_uploads(study: optuna.Study, scratch: Path) -> list[Upload]:
    """Each trial's files from its run folder: metrics.json, a training-curve PNG, alpaca's generation sample."""
    out = []
    for trial in study.get_trials(deepcopy=False):
        run_dir = trial.user_attrs.get("run_dir")
        metrics = runs.read_metrics(run_dir)
        if metrics is None:
            continue
        out.append(Upload(Path(str(run_dir)) / runs.METRICS_FILE, trial._trial_id, runs.METRICS_FILE))
        if "duplicate_of" not in trial.user_attrs:  # a reused result carries its twin's curve: shown there
            title = f"{study.study_name}#{trial.number}: training loss"
            png = train_curve_plot(metrics.get("train_curve") or [], title, scratch / f"{trial.number}_train_curve.png")
            if png is not None:
                out.append(Upload(png, trial._trial_id, "train_curve.png"))
        sample = runs.generation_sample(run_dir, SAMPLE_ROWS)
        if sample:
            path = scratch / f"{trial.number}_generations_sample.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample), encoding="utf-8")
            out.append(Upload(path, trial._trial_id, "generations_sample.jsonl"))
    return out


def _meta_key(trial_id: int | None, artifact_id: str) -> str:
    return (STUDY_PREFIX if trial_id is None else TRIAL_PREFIX.format(trial_id=trial_id)) + artifact_id


def _previous(storage: optuna.storages.BaseStorage, study_id: int) -> dict:
    raw = storage.get_study_system_attrs(study_id).get(TRACK_ATTR)
    try:
        previous = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        previous = {}
    return previous if isinstance(previous, dict) else {}


def _remove(store_dir: Path, artifact_id: str) -> None:
    if store_dir.is_dir():
        with contextlib.suppress(ArtifactNotFound):  # removed by hand, e.g. in the dashboard
            FileSystemArtifactStore(store_dir).remove(artifact_id)


def publish_artifacts(study: optuna.Study, files: list[Upload], store_dir: Path) -> dict[str, str]:
    """Upload `files` to the study's artifacts in `store_dir`, replacing the last run's; returns key -> id."""
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(store_dir)
    previous = _previous(storage, study_id)
    old_ids: dict[str, str] = previous.get("artifacts", {}) if isinstance(previous.get("artifacts"), dict) else {}
    old_store = Path(previous.get("store", str(store_dir)))
    moved = old_store.resolve() != store_dir.resolve()
    uploaded: dict[str, str] = {}
    for upload in files:
        artifact_id = old_ids.get(upload.key) if not moved else None
        artifact_id = artifact_id or str(uuid.uuid4())
        with upload.path.open("rb") as fh:
            store.write(artifact_id, fh)
        mimetype, encoding = mimetypes.guess_type(upload.name)
        meta = {
            "artifact_id": artifact_id,
            "filename": upload.name,
            "mimetype": mimetype or "application/octet-stream",
            "encoding": encoding,
        }
        storage.set_study_system_attr(study_id, _meta_key(upload.trial_id, artifact_id), json.dumps(meta))
        uploaded[upload.key] = artifact_id
    for key, artifact_id in old_ids.items():
        if uploaded.get(key) == artifact_id:
            continue
        _remove(old_store, artifact_id)
        trial_part = key.split("/", 1)[0]
        trial_id = int(trial_part) if trial_part else None
        storage.set_study_system_attr(study_id, _meta_key(trial_id, artifact_id), json.dumps(None))
    record = {"store": str(store_dir.resolve()), "artifacts": uploaded}
    storage.set_study_system_attr(study_id, TRACK_ATTR, json.dumps(record))
    return uploaded


ANSWER_PREFIX = "answer: "  # study user attributes: the dashboard's study page lists them on its first screen
STALE_ANSWER = "(not in the latest report)"


def write_answers(study: optuna.Study, answers: dict[str, str]) -> None:
    """One study user attribute per verdict ("answer: sms_spam · tiny"), shown on the dashboard's study page.

    Optuna cannot delete an attribute: an answer the latest report no longer gives is overwritten as stale.
    """
    for key, value in study.user_attrs.items():
        if key.startswith(ANSWER_PREFIX) and key.removeprefix(ANSWER_PREFIX) not in answers and value != STALE_ANSWER:
            study.set_user_attr(key, STALE_ANSWER)
    for title, text in answers.items():
        study.set_user_attr(ANSWER_PREFIX + title, text)


def publish(
    study: optuna.Study,
    note: str,
    study_files: list[Path],
    store_dir: Path | None,
    answers: dict[str, str] | None = None,
    trial_files: bool = True,
) -> dict[str, int]:
    """The note and answers, and (with a store) the study's and each trial's files; returns what was written."""
    write_note(study, note)
    write_answers(study, answers or {})
    if store_dir is None:
        return {"artifacts": 0, "trials": 0}
    with tempfile.TemporaryDirectory(prefix="lorasweep-artifacts-") as tmp:
        files = [Upload(p, None, p.name) for p in study_files]
        if trial_files:
            files += trial_uploads(study, Path(tmp))
        uploaded = publish_artifacts(study, files, store_dir)
    trials = {u.trial_id for u in files if u.trial_id is not None}
    logger.info("%s: note and %d artifacts (%d trials) written", study.study_name, len(uploaded), len(trials))
    return {"artifacts": len(uploaded), "trials": len(trials)}
