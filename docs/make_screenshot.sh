#!/usr/bin/env bash
# Regenerates docs/assets/report.png, the README's picture of the report: the offline quick start
# (`make sweep-offline`) into a scratch folder, its report, and the report's first screen (1280 x 800) rendered by
# headless Chromium. Run it through `make docs-screenshot` whenever the report's look changes.
#   PY       the interpreter (default .venv/bin/python)
#   SHARED   the shared samples folder (default ../shared), as for `make sweep-offline`
#   OUT      where the PNG goes (default docs/assets/report.png)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
OUT=${OUT:-docs/assets/report.png}
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$CHROMIUM" ]]; then
  echo "error: docs/make_screenshot.sh needs Chromium, but got no chromium on PATH; install it (apt-get install -y chromium)" >&2
  exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# the quick start exactly as the README gives it, with its study and run folders in the scratch folder
make --no-print-directory sweep-offline PY="$PY" SHARED="$SHARED" \
  SWEEP_ARGS="hydra.sweeper.storage=sqlite:///$scratch/sweeps.db paths.output_dir=$scratch/outputs"
"$PY" -m analysis.report -q --storage "sqlite:///$scratch/sweeps.db" --study quickstart-offline --out "$scratch/report"

"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$scratch/chromium" \
  --window-size=1280,800 --screenshot="$scratch/report.png" "file://$scratch/report/report.html" 2>/dev/null

# keep the repository small: palette quantisation, then lossless recompression, where the tools exist
if command -v pngquant >/dev/null; then
  pngquant --force --skip-if-larger --quality=70-95 --output "$scratch/report.png" -- "$scratch/report.png" || true
fi
if command -v optipng >/dev/null; then
  optipng -quiet -o2 "$scratch/report.png"
fi
mkdir -p "$(dirname "$OUT")"
cp "$scratch/report.png" "$OUT"
echo "wrote $OUT ($(($(stat -c %s "$OUT") / 1024)) KiB)"
