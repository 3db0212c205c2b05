"""Shared test setup: offline by construction.

Every test runs with the Hugging Face hub and Gemini out of reach: `HF_HUB_OFFLINE=1`, a private `HF_HOME`, no API
keys, and tiktoken reading GPT-2's BPE from the shared folder beside the checkout (`../shared/tokenizer`), copied
into a private `TIKTOKEN_CACHE_DIR` under the names tiktoken looks for. Subprocesses inherit all of it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# tiktoken caches a download under the sha1 of its URL; these are the names for GPT-2's files
TIKTOKEN_CACHE_NAMES = {
    "gpt2.tiktoken": "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4",
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}


def _shared_dir() -> Path:
    path = Path(os.environ.get("LORASWEEP_SHARED_DIR", ROOT.parent / "shared"))
    if not (path / "data").is_dir():
        raise RuntimeError(
            f"the shared test data folder must exist beside the checkout, but got {path} "
            "(set LORASWEEP_SHARED_DIR to its location)"
        )
    return path


SHARED = _shared_dir()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only `../shared` folder: `data/` samples, `tokenizer/`, the original report."""
    return SHARED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED / "data"


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No network, no secrets, no writes outside temp folders; inherited by subprocesses."""
    tiktoken_cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name, cache_name in TIKTOKEN_CACHE_NAMES.items():
        shutil.copyfile(SHARED / "tokenizer" / name, tiktoken_cache / cache_name)
    saved = dict(os.environ)
    os.environ.update(
        {
            "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
            "LORASWEEP_CACHE_DIR": str(tmp_path_factory.mktemp("lorasweep_cache")),
            "TOKENIZERS_PARALLELISM": "false",
            "MPLBACKEND": "Agg",
        }
    )
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "HF_TOKEN"):
        os.environ.pop(key, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


CONF_DIR = ROOT / "conf"


@pytest.fixture
def compose_cfg(tmp_path: Path):
    """Compose conf/config.yaml as sweep.py would, with outputs and caches in `tmp_path`.

    Returns a function `compose(*overrides) -> DictConfig`; `hydra:` interpolations resolve because the composed
    Hydra config is installed as the current one (as the lightning-hydra-template's conftest does).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import tasks.config  # noqa: F401  (registers the schemas and resolvers conf/config.yaml needs)

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # later tests must not see this run's Hydra config
