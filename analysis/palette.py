"""One palette for every figure: a fine-tuning mode has the same colour and marker in each plot of the report."""

from __future__ import annotations

MODE_COLORS = {"full": "#1f77b4", "lora": "#ff7f0e"}  # matplotlib's tab:blue and tab:orange
MODE_MARKERS = {"full": "s", "lora": "o"}
MODE_NAMES = {"full": "full fine-tuning", "lora": "LoRA"}
OTHER_COLOR = "#7f7f7f"  # a mode the palette does not know
BASELINE_COLOR = "#444444"
# a trial's state is a line style, never a colour (colour is the mode)
STATE_LINESTYLES = {"COMPLETE": "-", "PRUNED": "--", "FAIL": ":", "RUNNING": "-."}
# LoRA variants (lora.variant / targets) share LoRA's colour and differ by marker
VARIANT_MARKERS = ("o", "^", "D", "v", "P", "X", "*")


def mode_style(mode: object) -> dict[str, str]:
    """matplotlib keyword arguments (color, marker) for a fine-tuning mode."""
    key = str(mode)
    return {"color": MODE_COLORS.get(key, OTHER_COLOR), "marker": MODE_MARKERS.get(key, "^")}


def mode_name(mode: object) -> str:
    return MODE_NAMES.get(str(mode), str(mode))
