"""The override grammar (hydra-optuna-sweeper's) mapped onto Optuna's distributions, and back to overrides."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper import parse_search_space
from sweeper._grammar import format_value


def test_issue_example_gives_log_float_categorical_and_stepped_int():
    space = parse_search_space(
        ["optim.lr=tag(log, interval(1e-5,1e-3))", "lora.rank=4,8,16", "trainer.batch_size=range(4,16,4)"]
    )
    assert space.distributions == {
        "optim.lr": FloatDistribution(1e-5, 1e-3, log=True),
        "lora.rank": CategoricalDistribution([4, 8, 16]),
        "trainer.batch_size": IntDistribution(4, 16, step=4),
    }
    assert space.fixed == {}


def test_range_includes_hi_for_samplers_as_the_plugin_reads_it():
    space = parse_search_space(["a=range(4,16,4)", "b=range(0.0,0.2,0.05)", "c=range(3)"])
    assert space.distributions == {
        "a": IntDistribution(4, 16, step=4),
        "b": FloatDistribution(0.0, 0.2, step=0.05),
        "c": IntDistribution(0, 3),
    }


def test_range_under_the_grid_sampler_is_hydras_half_open_range():
    args = ["a=range(4,16,4)", "b=range(0.0,0.2,0.05)", "c=range(3)", "d=range(4,17,4)", "e=int(interval(1,4))"]
    space = parse_search_space(args, grid=True)
    grid = space.grid()
    assert grid["a"] == [4, 8, 12] and grid["c"] == [0, 1, 2] and grid["d"] == [4, 8, 12, 16]
    assert grid["b"] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert grid["e"] == [1, 2, 3], "the plugin's grid reads an int interval as a range too"
    # Hydra's own reading of the same text, for reference
    (override,) = OverridesParser.create().parse_overrides(["a=range(4,16,4)"])
    assert list(override.sweep_iterator()) == grid["a"]
    assert space.distributions["a"] == IntDistribution(4, 12, step=4), "the study records what can run"
    with pytest.raises(ValueError, match=r"excludes hi under the grid sampler .* but got a=range\(4,4,1\)"):
        parse_search_space(["a=range(4,4)"], grid=True)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # hydra-optuna-sweeper's own test cases (test_create_optuna_distribution_from_override), in Optuna 4 names
        ("x=choice(1,2)", CategoricalDistribution([1, 2])),
        ("x=choice(true, false)", CategoricalDistribution([True, False])),
        ("x=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("x=range(1,3)", IntDistribution(1, 3)),
        ("x=interval(1, 5)", FloatDistribution(1, 5)),
        ("x=int(interval(1, 5))", IntDistribution(1, 5)),
        ("x=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
        ("x=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
        ("x=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
        # ours
        ("x=interval(1,10)", FloatDistribution(1.0, 10.0)),
        ("x=interval(0,1)", FloatDistribution(0.0, 1.0)),
        ("x=float(interval(1,10))", FloatDistribution(1.0, 10.0)),
        ("x=int(tag(log, interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("x=float(range(1,4))", FloatDistribution(1.0, 4.0, step=1.0)),
        ("x=int(range(1.0,4.0))", IntDistribution(1, 4)),
        ("x=str(1,2)", CategoricalDistribution(["1", "2"])),
        ("x=float(1,2)", CategoricalDistribution([1.0, 2.0])),
        ("x=interval(-0.5, 0.5)", FloatDistribution(-0.5, 0.5)),
        ("x=tag(log,range(1,64))", IntDistribution(1, 64, log=True)),
        ("x=choice(adamw,sgd)", CategoricalDistribution(["adamw", "sgd"])),
        ("x=shuffle(1,2,3)", CategoricalDistribution([1, 2, 3])),
        ("x=shuffle(range(1,4))", CategoricalDistribution([1, 2, 3])),
    ],
)
def test_each_form_maps_to_a_modern_distribution(override, expected):
    assert parse_search_space([override]).distributions["x"] == expected


def test_cast_values_reach_the_job_with_their_cast_type():
    space = parse_search_space(["a=str(1,2)", "b=float(1,2)", "c=int(interval(1,5))"])
    overrides = space.overrides({"a": "1", "b": 2.0, "c": 3})
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed == {"a": "1", "b": 2.0, "c": 3}
    assert [type(v) for v in parsed.values()] == [str, float, int]


def test_plain_values_are_fixed_and_recorded_with_their_type():
    space = parse_search_space(["model=medium", "trainer.max_steps=50", "+extra=[1,2]", "lora.rank=4,8"])
    assert {name: f.value for name, f in space.fixed.items()} == {
        "model": "medium",
        "trainer.max_steps": 50,
        "extra": "[1,2]",
    }
    assert space.overrides({"lora.rank": 8}) == ["model=medium", "trainer.max_steps=50", "+extra=[1,2]", "lora.rank=8"]


def test_the_last_override_of_a_key_wins_so_the_command_line_beats_params():
    space = parse_search_space(["lora.rank=4,8,16", "optim.lr=1e-3", "lora.rank=32", "optim.lr=interval(0.1,0.2)"])
    assert set(space.params) == {"optim.lr"} and set(space.fixed) == {"lora.rank"}
    assert space.fixed["lora.rank"].value == 32


def test_secret_looking_keys_are_passed_on_but_never_recorded():
    space = parse_search_space(["judge.api_key=abc123", "model=tiny"])
    assert space.recorded() == {"model": "tiny"}
    assert "judge.api_key=abc123" in space.overrides({})


def test_config_group_choices_and_list_values_are_categoricals_written_back_verbatim():
    space = parse_search_space(["finetune=full,lora", "lora.targets=[qkv],[qkv,fc]", "name='a b',c", "opt=null,true"])
    assert space.distributions["finetune"] == CategoricalDistribution(["full", "lora"])
    assert space.distributions["lora.targets"] == CategoricalDistribution(["[qkv]", "[qkv,fc]"])
    assert space.distributions["name"] == CategoricalDistribution(["a b", "c"])
    overrides = space.overrides({"finetune": "lora", "lora.targets": "[qkv,fc]", "name": "a b", "opt": None})
    assert overrides == ["finetune=lora", "lora.targets=[qkv,fc]", "name='a b'", "opt=null"]
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed == {"finetune": "lora", "lora.targets": ["qkv", "fc"], "name": "a b", "opt": None}


@pytest.mark.parametrize("value", [1e-05, 0.1 + 0.2, -3, True, None, "lora", "a,b", "x=y", 2.5e10, "1", "true", "null"])
def test_sampled_values_round_trip_through_the_override_parser(value):
    (parsed,) = OverridesParser.create().parse_overrides([f"k={format_value(value)}"])
    assert parsed.value() == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("x=range(10,1)", "`lo <= hi` must hold in range(lo,hi,step), but got x=range(10,1,1)"),
        ("x=interval(5,1)", "`lo <= hi` must hold in interval(lo,hi), but got x=interval(5.0,1.0)"),
        ("x=int(interval(5,1))", "`lo <= hi` must hold in interval(lo,hi), but got x=interval(5,1)"),
        ("x=tag(log, interval(0, 1))", "`lo > 0` must hold on a log scale, but got x=tag(log,interval(0.0,1.0))"),
        ("x=tag(log, range(1, 64, 2))", "`log` needs the default step of 1"),
        ("x=tag(log, choice(a, b))", "`log` applies to range() and interval() only"),
        ("x=tag(fancy, interval(0, 1))", "Sweep tags must be in ['log'], but got x tags=['fancy']"),
    ],
)
def test_bad_sweeps_fail_with_optunas_error_form(override, message):
    with pytest.raises(ValueError, match=r"but got|must|needs|applies") as info:
        parse_search_space([override])
    assert message in str(info.value)


def test_grid_refuses_continuous_intervals_and_names_the_fix():
    space = parse_search_space(["optim.lr=tag(log, interval(1e-5,1e-3))"])
    with pytest.raises(ValueError, match=r"but got optim.lr=tag\(log,interval\(1e-05,0.001\)\); use hydra/sweeper"):
        space.grid()
