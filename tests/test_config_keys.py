"""A key no trial reads, or an option no group has, is refused in one line naming it and the nearest real one, before
any work: through sweep.py as a user types it, and through the functions behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_sweep_py

from tasks.config.checks import ConfigError, check_config
from tasks.config.keys import override_problems, unknown_keys


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["trainer.lr=1e-4"], ["but got trainer.lr=1e-4 (did you mean optim.lr?)"]),
        (["+trainer.lr=1e-4"], ["but got trainer.lr=0.0001 (did you mean optim.lr?)"]),  # Hydra adds it: the check
        (["+modle=tiny"], ["but got modle=tiny (did you mean model=tiny?)"]),
        (
            ["model=tinny"],
            ["model must be one of large, medium, small, tiny, xl, but got model=tinny (did you mean tiny?)"],
        ),
        # a sweep: refused before its first trial, and Hydra's `+` is no way around it
        (["-m", "+trainer.lr=1e-4", "lora.rank=4,8"], ["but got +trainer.lr=1e-4 (did you mean optim.lr?)"]),
        # every problem of the command line at once
        (
            ["trainer.lr=1", "model=tinny", "lora.rnak=3", "trainer.batch_size=8"],
            ["trainer.lr=1 (did you mean optim.lr?), lora.rnak=3 (did you mean lora.rank?)", "but got model=tinny"],
        ),
        # the sweeper's own keys: the nearest of the same node
        (
            ["-m", "hydra.sweeper.n_trails=3", "lora.rank=4,8"],
            [
                "every key of hydra.sweeper must be one it has, but got hydra.sweeper.n_trails=3 (did you mean "
                "hydra.sweeper.n_trials?)"
            ],
        ),
        # a key of a sweeper node (packing): the node's own key
        (
            ["-m", "hydra.sweeper.pack.siz=2", "lora.rank=4,8"],
            [
                "every key of hydra.sweeper.pack must be one it has, but got hydra.sweeper.pack.siz=2 (did you mean "
                "hydra.sweeper.pack.size?)"
            ],
        ),
    ],
    ids=["key", "added-key", "added-group", "option", "sweep", "several", "sweeper-key", "sweeper-pack-key"],
)
def test_sweep_py_refuses_in_one_line_naming_the_key_and_the_nearest_real_one(args, named, tmp_path: Path):
    proc = run_sweep_py(
        *args, f"paths.root_dir={tmp_path}", f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db", cwd=tmp_path,
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and all(text in lines[0] for text in named), lines[0]
    assert not list(tmp_path.rglob("metrics.json")) and not (tmp_path / "s.db").exists(), "nothing ran, no study"


def test_the_trial_check_names_keys_hydra_added_with_the_values_it_refuses(compose_cfg):
    cfg = compose_cfg("+trainer.lr=1e-4", "+modle=tiny", "+judge.api_key=s3cret", "trainer.batch_size=0")
    assert unknown_keys(cfg) == [
        "trainer.lr=0.0001 (did you mean optim.lr?)",
        "judge.api_key=*** (did you mean judge.api_version?)",
        "modle=tiny (did you mean model=tiny?)",
    ]
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith("every key must be a setting a trial reads, but got trainer.lr=0.0001")
    assert "`trainer.batch_size > 0` must hold, but got trainer.batch_size=0" in message  # and the values, at once
    assert "s3cret" not in message and "\n" not in message


def test_a_key_of_another_option_is_named_as_such():
    assert override_problems(["task.prompt_style=raschka"]) == []  # alpaca has it: Hydra judges it per option
    cfg_keys = ["trainer.batchsize=4", "optim.momentom=0.9", "lora.target=[q]"]
    assert override_problems(cfg_keys) == [
        "every key must be a setting a trial reads, but got trainer.batchsize=4 (did you mean trainer.batch_size?), "
        "optim.momentom=0.9 (did you mean optim.momentum?), lora.target=[q] (did you mean lora.targets?)"
    ]


def test_a_task_built_from_a_dict_refuses_a_key_it_does_not_have():
    from tasks import get_task

    with pytest.raises(
        ValueError, match=r"task alpaca: .* but got task.promt_style=raschka \(did you mean task.prompt"
    ):
        get_task({"name": "alpaca", "promt_style": "raschka"})
