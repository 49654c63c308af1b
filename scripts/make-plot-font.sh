#!/usr/bin/env bash
# Regenerates tracking/assets/DejaVuSans-kaizen.ttf, the font `kaizen report` draws PNG text with.
#
# The PNG backend rasterises glyphs itself (plotters + ab_glyph), so a plot must not depend on
# fonts installed on the machine: a clean CI box or a container often has none, and a plot without
# text is useless. We embed a subset of DejaVu Sans (Bitstream Vera licence, see
# tracking/assets/LICENSE-DejaVu) taken from the matplotlib wheel on PyPI, cut down with
# fontTools' pyftsubset to the characters metric names and labels use (about 50 KiB instead of
# 740 KiB): ASCII, Latin-1, Greek, general punctuation, sub/superscripts, arrows, math operators.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh
py=$(kaizen_venv plotfont "matplotlib==3.11.2" "fonttools==4.68.0")
src=$("$py" -c 'import matplotlib, os; print(os.path.join(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf"))')
lic=$(dirname "$src")/LICENSE_DEJAVU
"$py" -m fontTools.subset "$src" \
    --unicodes="U+0020-007E,U+00A0-00FF,U+0391-03A9,U+03B1-03C9,U+2010-2027,U+2030-203A,U+2070-209C,U+2190-2199,U+2200-22FF" \
    --layout-features='kern' --no-hinting --desubroutinize \
    --output-file=tracking/assets/DejaVuSans-kaizen.ttf
cp "$lic" tracking/assets/LICENSE-DejaVu
ls -l tracking/assets/DejaVuSans-kaizen.ttf
