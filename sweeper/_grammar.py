"""hydra-optuna-sweeper's override grammar, mapped onto Optuna's distributions as that plugin reads it.

    lora.rank=4,8,16  model=small,medium     CategoricalDistribution (config-group choices too)
    trainer.batch_size=range(4,16,4)         IntDistribution(4, 16, step=4): `hi` INCLUDED, as the plugin reads it;
                                             under the grid sampler Hydra's half-open range: 4, 8, 12
    lora.dropout=range(0.0,0.2,0.05)         FloatDistribution(0.0, 0.2, step=0.05)
    optim.weight_decay=interval(0,1)         FloatDistribution(0.0, 1.0): Hydra makes both ends floats, always
    trainer.max_steps=int(interval(1,10))    IntDistribution(1, 10): a cast (int, float, str) is honoured
    optim.lr=tag(log,interval(1e-5,1e-3))    FloatDistribution(1e-5, 1e-3, log=True)
    model=medium                             fixed for every trial, recorded as a user attribute

Overrides are read in order and the last one of a key wins, so the command line overrides `hydra.sweeper.params`.
"""

from __future__ import annotations

import functools
import math
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
    Quote,
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
        """Every value of every parameter, for GridSampler (a space parsed with `grid=True` holds Hydra's
        half-open ranges)."""
        return {name: grid_values(name, p.distribution) for name, p in self.params.items()}


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def format_value(value: Any) -> str:
    """A sampled value as override text: null/true/false as Hydra spells them, strings escaped, and quoted when
    Hydra would read them as another type (`str(1,2)` gives '1', not the integer 1)."""
    text = Override._get_value_element_as_str(value)
    if isinstance(value, str):
        (parsed,) = _parser().parse_overrides([f"k={text}"])
        if parsed.value() != value or not isinstance(parsed.value(), str):
            text = Override._get_value_element_as_str(QuotedString(text=value, quote=Quote.single))
    return text


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


def parse_search_space(arguments: Sequence[str], config_loader: Any = None, *, grid: bool = False) -> SearchSpace:
    """Parse overrides (`hydra.sweeper.params` first, then the command line) into a search space.

    `config_loader` lets `glob(*)` list a config group's options, as Hydra's BasicSweeper does. `grid=True` (the
    grid sampler) reads `range()` and `int(interval())` as Hydra's half-open ranges, as the plugin's grid does.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    params: dict[str, Param] = {}
    fixed: dict[str, Fixed] = {}
    for override in parser.parse_overrides(list(arguments)):
        name = override.get_key_element().lstrip("+~")
        params.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            params[name] = Param(name, override.get_key_element(), *_distribution(override, name, grid))
        else:
            value = override.value()
            recorded = value if isinstance(value, _SCALAR) else override.get_value_element_as_str()
            fixed[name] = Fixed(name, override.input_line or "", recorded)
    return SearchSpace(params, fixed)


def _distribution(override: Override, name: str, grid: bool) -> tuple[BaseDistribution, dict[Any, str]]:
    sweep = override.value()
    unknown = set(getattr(sweep, "tags", set())) - ALLOWED_TAGS
    if unknown:
        raise ValueError(f"Sweep tags must be in {sorted(ALLOWED_TAGS)}, but got {name} tags={sorted(unknown)}.")
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, (ChoiceSweep, Glob)) or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        return _categorical(override, name, log)
    if isinstance(sweep, RangeSweep):
        return _range(sweep, name, log, grid), {}
    if isinstance(sweep, IntervalSweep):
        return _interval(sweep, name, log, grid), {}
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
        # lists, dicts and quoted strings keep their text as written; plain scalars (cast ones too) are formatted
        if not isinstance(element, _SCALAR) and text != format_value(value):
            texts[value] = text
    return CategoricalDistribution(choices), texts


def _range(sweep: RangeSweep, name: str, log: bool, grid: bool) -> BaseDistribution:
    lo, hi, step = sweep.start, sweep.stop, sweep.step
    shown = f"{name}=range({lo},{hi},{step})"
    if not lo <= hi:
        raise ValueError(f"`lo <= hi` must hold in range(lo,hi,step), but got {shown}.")
    if not step > 0:
        raise ValueError(f"`step > 0` must hold in range(lo,hi,step), but got {shown}.")
    if log and step != 1:
        raise ValueError(f"`log` needs the default step of 1 (Optuna cannot combine them), but got {name} step={step}.")
    is_int = all(isinstance(v, int) for v in (lo, hi, step))
    if grid and not log:  # Hydra's range: lo, lo + step, ... while < hi
        hi = _last_below(lo, hi, step, shown)
    if is_int:
        return IntDistribution(int(lo), int(hi), log=log, step=int(step))
    if log:
        return FloatDistribution(float(lo), float(hi), log=True)
    return FloatDistribution(float(lo), float(hi), step=float(step))


def _last_below(lo: float, hi: float, step: float, shown: str) -> float:
    """The last value of Hydra's half-open range(lo, hi, step)."""
    n = math.ceil(round((hi - lo) / step, 9))
    if n < 1:
        raise ValueError(
            f"range(lo,hi,step) excludes hi under the grid sampler (Hydra's range), so `lo < hi` must hold, "
            f"but got {shown}."
        )
    last = lo + (n - 1) * step
    return last if isinstance(last, int) else round(last, 12)


def _interval(sweep: IntervalSweep, name: str, log: bool, grid: bool) -> BaseDistribution:
    """A float distribution, unless a cast made both ends ints (`int(interval(1,5))`), as the plugin reads it."""
    lo, hi = sweep.start, sweep.end
    shown = f"{name}={'tag(log,' if log else ''}interval({lo},{hi}){')' if log else ''}"
    if not lo <= hi:
        raise ValueError(f"`lo <= hi` must hold in interval(lo,hi), but got {shown}.")
    if log and not lo > 0:
        raise ValueError(f"`lo > 0` must hold on a log scale, but got {shown}.")
    if isinstance(lo, int) and isinstance(hi, int):
        if grid and not log:  # the plugin's grid reads an int interval as range(lo, hi)
            hi = _last_below(lo, hi, 1, shown)
        return IntDistribution(lo, hi, log=log)
    return FloatDistribution(float(lo), float(hi), log=log)


def describe(dist: BaseDistribution) -> str:
    """A distribution as the values it holds (discrete ones, listed) or in the grammar (continuous ones)."""
    if isinstance(dist, CategoricalDistribution):
        return ",".join(format_value(c) for c in dist.choices)
    is_int = isinstance(dist, IntDistribution)
    if dist.log or (not is_int and dist.step is None):
        body = f"interval({dist.low},{dist.high})"
        body = f"int({body})" if is_int else body
        return f"tag(log,{body})" if dist.log else body
    values = grid_values("", dist)
    shown = values if len(values) <= 8 else [*values[:2], "...", values[-1]]
    text = ",".join(v if v == "..." else format_value(v) for v in shown)
    return text if len(values) <= 8 else f"{text} ({len(values)} values)"
