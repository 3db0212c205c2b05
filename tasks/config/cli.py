"""The entry points' config errors in one line, before any work: sweep.py (a Hydra app) and `tasks.inspect`.

Hydra reports a config it cannot compose in a dozen lines (the search path, the options, a hint to set
HYDRA_FULL_ERROR), and exits 1. Here Hydra is asked to raise instead (HYDRA_FULL_ERROR=1, its documented switch,
for this process only), and the error becomes one line on stderr naming every override that names no key or option,
with the nearest real one (`tasks.config.keys.composition_problems`). A user who sets HYDRA_FULL_ERROR=1 gets Hydra's
full report as before. Keys Hydra adds rather than refuses (`+trainer.lr=1e-4`) are the trial's check's to refuse
(`check_config`: the sweeper runs it on every swept value before the first trial, and every trial first thing).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from tasks.config.keys import UNKNOWN, composition_problems, override_problems, unknown_keys

FULL_ERROR = "HYDRA_FULL_ERROR"


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The overrides of a Hydra command line (`key=value`, `+key=value`, `~key`), without its flags and their
    values (`-m`, `--cfg job`, `--config-name x`)."""
    return [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def run_hydra_app(main: Callable[[], Any], argv: Sequence[str] | None = None) -> Any:
    """Call a `@hydra.main` function; a command line Hydra cannot compose ends the process with one line and
    status 1. Any other error is left as it is."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )

    if os.environ.get(FULL_ERROR) == "1":
        return main()
    os.environ[FULL_ERROR] = "1"
    try:
        return main()
    except HydraException as error:
        overrides = overrides_of(sys.argv[1:] if argv is None else argv)
        # a bad key or option on the command line is the cause, also of a sweep that could not compose a trial
        problems = override_problems(overrides)
        if problems or isinstance(error, ConfigCompositionException | MissingConfigException | OverrideParseException):
            sys.exit("error: " + "; ".join(problems or composition_problems(error, overrides)))
        # the sweeper refusing its settings: Hydra wraps the sweeper's one-line error in its own words; the line alone
        cause = error.__cause__ if isinstance(error, InstantiationException) else None
        sys.exit("error: " + " ".join(str(cause or error).split()))
    finally:
        os.environ.pop(FULL_ERROR, None)


def compose_checked(compose: Callable[[list[str]], DictConfig], overrides: Sequence[str]) -> DictConfig:
    """`compose(overrides)`, with a config that does not compose, or holds keys no schema has, refused as one
    `ValueError` line (for entry points that compose with Hydra's compose API, e.g. `tasks.inspect`)."""
    from hydra.errors import HydraException

    try:
        cfg = compose(list(overrides))
    except HydraException as error:
        raise ValueError("; ".join(composition_problems(error, overrides))) from None
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"{UNKNOWN}, but got {', '.join(unknown)}")
    return cfg
