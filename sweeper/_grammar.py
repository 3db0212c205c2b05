"""hydra-optuna-sweeper's override grammar, mapped onto Optuna's distributions.

    lora.rank=4,8,16  model=small,medium     CategoricalDistribution (config-group choices too)
    trainer.batch_size=range(4,16,4)         IntDistribution(4, 16, step=4): `hi` is INCLUSIVE, as in the plugin
    lora.dropout=range(0.0,0.2,0.05)         FloatDistribution(0.0, 0.2, step=0.05)
    lora.dropout=interval(0,0.3)             FloatDistribution(0.0, 0.3); IntDistribution when both ends are ints
    optim.lr=tag(log,interval(1e-5,1e-3))    FloatDistribution(1e-5, 1e-3, log=True)
    model=medium                             fixed for every trial, recorded as a user attribute

Overrides are read in order and the last one of a key wins, so the command line overrides `hydra.sweeper.params`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    QuotedString,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_SCALAR = (str, int, float, bool, type(None))
_INTERVAL_ARGS = re.compile(r"interval\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)")
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)
ALLOWED_TAGS = frozenset({"log"})


@dataclass(frozen=True)
class Param:
    """One searched key: its Optuna distribution and how a sampled value is written back as an override."""

    name: str  # the Optuna parameter name: the key without a +/++ prefix
    key: str  # the key as written on the command line (prefix kept)
    distribution: BaseDistribution
    # override text of categorical choices that are not plain scalars ([qkv,fc], 'a b')
    texts: Mapping[Any, str] = field(default_factory=dict)

    def override(self, value: Any) -> str:
        text = self.texts.get(value) if isinstance(value, _SCALAR) else None
        return f"{self.key}={text if text is not None else format_value(value)}"


@dataclass(frozen=True)
class Fixed:
    """A plain `key=value`: the same for every trial, recorded as user attribute `name` (unless secret)."""

    name: str
    override: str
    value: Any

    @property
    def secret(self) -> bool:
        """Keys that look like credentials are passed to the job but never written to the study."""
        return bool(_SECRET_KEY.search(self.name))


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Param]
    fixed: dict[str, Fixed]

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: p.distribution for name, p in self.params.items()}

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The job's overrides: fixed ones, then one per sampled value (custom-search-space names included)."""
        out = [f.override for f in self.fixed.values()]
        for name, value in values.items():
            param = self.params.get(name)
            out.append(param.override(value) if param else f"{name}={format_value(value)}")
        return out

    def recorded(self) -> dict[str, Any]:
        """The fixed values written to every trial's user attributes and to optimization_results.yaml."""
        return {f.name: f.value for f in self.fixed.values() if not f.secret}

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for GridSampler; `hi` of range() included, as for other samplers."""
        return {name: grid_values(name, p.distribution) for name, p in self.params.items()}


def format_value(value: Any) -> str:
    """A sampled value as override text: null/true/false as Hydra spells them, strings escaped."""
    return Override._get_value_element_as_str(value)


def grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = getattr(dist, "step", None)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and step is not None:
        n = round((dist.high - dist.low) / step)
        return [round(dist.low + i * step, 12) for i in range(n + 1)]
    raise ValueError(
        "The grid sampler needs discrete values (a,b,c or range(lo,hi,step)), "
        f"but got {name}={describe(dist)}; use hydra/sweeper/sampler=tpe for continuous ranges."
    )


def parse_search_space(arguments: Sequence[str], config_loader: Any = None) -> SearchSpace:
    """Parse overrides (`hydra.sweeper.params` first, then the command line) into a search space.

    `config_loader` lets `glob(*)` list a config group's options, as Hydra's BasicSweeper does.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    params: dict[str, Param] = {}
    fixed: dict[str, Fixed] = {}
    for override in parser.parse_overrides(list(arguments)):
        name = override.get_key_element().lstrip("+~")
        params.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            params[name] = Param(name, override.get_key_element(), *_distribution(override, name))
        else:
            value = override.value()
            recorded = value if isinstance(value, _SCALAR) else override.get_value_element_as_str()
            fixed[name] = Fixed(name, override.input_line or "", recorded)
    return SearchSpace(params, fixed)


def _distribution(override: Override, name: str) -> tuple[BaseDistribution, dict[Any, str]]:
    sweep = override.value()
    unknown = set(getattr(sweep, "tags", set())) - ALLOWED_TAGS
    if unknown:
        raise ValueError(f"Sweep tags must be in {sorted(ALLOWED_TAGS)}, but got {name} tags={sorted(unknown)}.")
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, (ChoiceSweep, Glob)) or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        return _categorical(override, name, log)
    if isinstance(sweep, RangeSweep):
        return _range(sweep, name, log), {}
    if isinstance(sweep, IntervalSweep):
        return _interval(override, sweep, name, log), {}
    raise ValueError(
        "A swept value must be a,b,c, choice(), glob(), range(), interval() or tag(log, interval()), "
        f"but got {override.input_line}."
    )


def _categorical(override: Override, name: str, log: bool) -> tuple[BaseDistribution, dict[Any, str]]:
    if log:
        raise ValueError(f"`log` applies to range() and interval() only, but got {override.input_line}.")
    choices: list[Any] = []
    texts: dict[Any, str] = {}
    # the order written (or sorted, for a shuffled range): a resumed study must see the same distribution
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        elements = list(sweep.list)
    else:
        elements = list(override.sweep_iterator(transformer=Transformer.identity))
        if isinstance(sweep, RangeSweep):
            elements.sort()
    for element in elements:
        text = Override._get_value_element_as_str(element)
        if isinstance(element, QuotedString):
            value: Any = element.text
        elif isinstance(element, _SCALAR):
            value = element
        else:  # lists and dicts are stored by their override text: [qkv,fc]
            value = text
        if value not in choices:
            choices.append(value)
        if text != format_value(value):
            texts[value] = text
    return CategoricalDistribution(choices), texts


def _range(sweep: RangeSweep, name: str, log: bool) -> BaseDistribution:
    lo, hi, step = sweep.start, sweep.stop, sweep.step
    if not lo <= hi:
        raise ValueError(f"`lo <= hi` must hold in range(lo,hi,step), but got {name}=range({lo},{hi},{step}).")
    if not step > 0:
        raise ValueError(f"`step > 0` must hold in range(lo,hi,step), but got {name}=range({lo},{hi},{step}).")
    if log and step != 1:
        raise ValueError(f"`log` needs the default step of 1 (Optuna cannot combine them), but got {name} step={step}.")
    if all(isinstance(v, int) for v in (lo, hi, step)):
        return IntDistribution(int(lo), int(hi), log=log, step=int(step))
    if log:
        return FloatDistribution(float(lo), float(hi), log=True)
    return FloatDistribution(float(lo), float(hi), step=float(step))


def _interval(override: Override, sweep: IntervalSweep, name: str, log: bool) -> BaseDistribution:
    lo, hi = float(sweep.start), float(sweep.end)
    if not lo <= hi:
        raise ValueError(f"`lo <= hi` must hold in interval(lo,hi), but got {name}=interval({lo},{hi}).")
    if log and not lo > 0:
        raise ValueError(f"`lo > 0` must hold on a log scale, but got {name}=tag(log,interval({lo},{hi})).")
    # Hydra turns both ends into floats; the plugin's "int if both ints" needs the text as written
    match = _INTERVAL_ARGS.search(override.get_value_string())
    if match and all(_INT_TEXT.match(g) for g in match.groups()):
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(lo, hi, log=log)


def describe(dist: BaseDistribution) -> str:
    """A distribution written back in the grammar, for logs and errors."""
    if isinstance(dist, CategoricalDistribution):
        return ",".join(format_value(c) for c in dist.choices)
    fn = "interval" if getattr(dist, "step", None) is None else "range"
    body = f"{fn}({dist.low},{dist.high}" + (f",{dist.step})" if fn == "range" else ")")
    return f"tag(log,{body})" if dist.log else body
