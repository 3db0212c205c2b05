"""Numbers as a person writes them: "32x the trainable parameters", "16.5k", "embeddings and blocks 0-3 frozen".

No scientific notation and no percentages above a few hundred reach a sentence of the report.
"""

from __future__ import annotations

import math

from analysis import stats

# a change of a cost smaller than this (relative) reads "about the same", also without a measured spread
SAME_WITHIN = 0.03


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def count(n: float) -> str:
    """A count the way people say it: 950, 16.5k, 3.4M, 124M, 1.6B."""
    if is_missing(n):
        return "—"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            scaled = n / size
            return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{n:.0f}"


def number(x: float, digits: int = 3) -> str:
    """A measured value at `digits` significant digits, without an exponent (0.785, 11.5, 1,646)."""
    if is_missing(x):
        return "—"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def percent(pct: float) -> str:
    """A share in percent: 33%, 1.5%, 0.24%, <0.01%."""
    if is_missing(pct):
        return "—"
    if 0 < pct < 0.01:
        return "<0.01%"
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def ratio(part: float, whole: float, noun: str) -> str | None:
    """ "33% of the trainable parameters" / "32x the trainable parameters" / "about the same ..."; None if unknown."""
    if is_missing(part) or is_missing(whole) or whole == 0:
        return None
    r = part / whole
    if abs(r - 1) < SAME_WITHIN:
        return f"about the same {noun}"
    if r > 1:
        return f"{r:.2g}x the {noun}" if r < 10 else f"{r:.0f}x the {noun}"
    return f"{percent(100 * r)} of the {noun}"


Range = tuple[float, float]


def overlap(a: Range | None, b: Range | None) -> bool:
    """Whether two measured ranges (a run's p10-p90 spread) share a value; False when either is unknown."""
    return a is not None and b is not None and max(a[0], b[0]) <= min(a[1], b[1])


def change(
    name: str,
    lora: list[float] | tuple[float, ...],
    full: list[float] | tuple[float, ...],
    spreads: tuple[Range | None, Range | None] | None = None,
) -> str | None:
    """How a cost changes from full fine-tuning to LoRA: "41% less peak memory", "1.9x the tokens/s".

    With two runs or more per side (confirmation seeds), a change whose Welch interval contains zero is
    "within noise"; with single runs, so is one whose measured `spreads` (each run's p10-p90 range, LoRA's then
    full's) overlap; a change under 3% reads "about the same". None when a side is unknown.
    """
    lora = [v for v in lora if not is_missing(v)]
    full = [v for v in full if not is_missing(v)]
    if not lora or not full:
        return None
    interval = stats.welch_interval(lora, full)
    if interval is not None and interval.contains(0.0):
        return f"{name} within noise"
    if interval is None and spreads is not None and overlap(*spreads):
        return f"{name} within noise"
    a, b = math.fsum(lora) / len(lora), math.fsum(full) / len(full)
    if b == 0:
        return None
    r = a / b
    if abs(r - 1) < SAME_WITHIN:
        return f"about the same {name}"
    if r >= 2:
        return f"{r:.2g}x the {name}"
    return f"{abs(100 * (1 - r)):.0f}% {'less' if r < 1 else 'more'} {name}"


def frozen(blocks: float, n_layer: float | None = None) -> str | None:
    """What `freeze.blocks=k` froze, in words; None when nothing was frozen or k is unknown."""
    if is_missing(blocks) or int(blocks) <= 0:
        return None
    k = int(blocks)
    if n_layer is not None and not is_missing(n_layer) and k >= int(n_layer):
        return f"embeddings and all {int(n_layer)} blocks frozen"
    return "embeddings and block 0 frozen" if k == 1 else f"embeddings and blocks 0-{k - 1} frozen"


def join(parts: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]
