"""LoRA's variants from the command line to the study: `lora.variant`, `lora.init`, `lora.targets`, `lora.lr_ratio`
and the `lora_method` presets are sweepable, reach metrics.json and the study, and bad values stop before training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import lean_sweep, run_sweep_py

from tasks.config.checks import ConfigError, check_config


def lean(shared_data: Path, tmp_path: Path) -> list[str]:
    return [*lean_sweep(shared_data, tmp_path), "hydra/sweeper/sampler=grid", "hydra.sweeper.study_name=variants"]


@pytest.mark.slow
def test_a_tiny_sweep_over_variant_init_and_targets_runs_each_point_and_records_it(shared_data, tmp_path):
    run_sweep_py(
        *lean(shared_data, tmp_path), "lora.variant=lora,dora", "lora.init=default,pissa",
        "lora.targets=[v,q],[qkv,fc]", "lora.rank=2", cwd=tmp_path,
    )  # fmt: skip
    trials = optuna.load_study(study_name="variants", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 8
    seen = {
        (t.user_attrs["lora_variant"], t.user_attrs["lora_init"], t.user_attrs["lora_targets"]): t.user_attrs
        for t in trials
    }
    assert set(seen) == {
        (variant, init, targets)
        for variant in ("lora", "dora")
        for init in ("default", "pissa")
        for targets in ("q,v", "qkv,fc")  # in the model's order, whatever the order written
    }
    for (variant, init, _), attrs in seen.items():
        expected = " + ".join(p for p in ("dora" if variant == "dora" else "", "pissa" if init == "pissa" else "") if p)
        assert attrs["lora_method"] == (expected or "lora")
        assert (attrs["lora_rslora"], attrs["lora_lr_ratio"]) == (False, 1.0)
        log = (Path(attrs["run_dir"]) / "sweep.log").read_text()
        assert ("init=pissa on a randomly initialised base" in log) == (init == "pissa"), "model=tiny is random"
    # tiny GPT-2 is 64 wide: [q, v] at r=2 is 2 adapters x 2 blocks x (64*2 + 2*64); DoRA adds 64 magnitudes each
    plain, dora = seen[("lora", "default", "q,v")], seen[("dora", "default", "q,v")]
    assert dora["trainable_params"] - plain["trainable_params"] == 2 * 2 * 64
    assert len({t.user_attrs["config_fingerprint"] for t in trials}) == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.targets=[q,o]"], "lora.targets must be a non-empty list of q, k, v, qkv, attn_proj, fc, mlp_proj"),
        (["lora.targets=[qkv,k]"], "lora.targets must adapt each projection once (qkv covers q, k and v)"),
        (["lora.variant=vera"], "lora.variant must be one of lora, dora, but got lora.variant='vera'"),
        (["lora.init=olora"], "lora.init must be one of default, pissa, but got lora.init='olora'"),
        (["lora.rank=65", "lora.targets=[q]"], "`lora.rank <= 64` must hold for target q of model=tiny"),
        (["lora.lr_ratio=0"], "`lora.lr_ratio > 0` must hold, but got lora.lr_ratio=0"),
    ],
)
def test_bad_lora_settings_are_refused_in_one_line_before_any_data(overrides, message, compose_cfg):
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg("model=tiny", *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_full_fine_tuning_ignores_the_lora_node(compose_cfg):
    check_config(compose_cfg("model=tiny", "finetune=full", "lora.variant=vera", "lora.rank=1000"))


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "pissa", "lora_plus"])
def test_each_lora_method_preset_sets_the_four_keys_that_make_it(method, compose_cfg):
    from tasks.train.record import lora_method

    lora = compose_cfg(f"lora_method={method}", "lora.variant=lora").lora  # the command line wins over a preset
    assert lora_method(lora) == {"lora": "lora", "rslora": "rslora", "dora": "lora", "pissa": "pissa",
                                 "lora_plus": "lora+ x16"}[method]  # fmt: skip


def test_the_order_targets_are_written_in_changes_neither_fingerprint_nor_summary(compose_cfg):
    from tasks.train.record import summary
    from tasks.train.reuse import config_fingerprint

    qv, vq = compose_cfg("lora.targets=[q,v]"), compose_cfg("lora.targets=[v,q]")
    assert config_fingerprint(qv, "data") == config_fingerprint(vq, "data")
    assert config_fingerprint(qv, "data") != config_fingerprint(compose_cfg("lora.targets=[q,k]"), "data")
    assert summary(qv)["lora_targets"] == summary(vq)["lora_targets"] == "q,v"


@pytest.mark.slow
def test_a_swept_lora_value_the_model_refuses_stops_the_sweep_before_any_trial(shared_data, tmp_path):
    proc = run_sweep_py(
        *lean(shared_data, tmp_path), "lora.variant=lora,vera", "lora.targets=[q],[qkv,q]", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if "must pass the app's config check" in ln]
    assert "but got lora.variant=vera: lora.variant must be one of lora, dora" in line
    assert "lora.targets=[qkv,q]: lora.targets must adapt each projection once" in line
    assert not list(tmp_path.rglob("metrics.json")), "no trial ran"
