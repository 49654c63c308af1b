#!/usr/bin/env bash
# Make the `translate` world's English -> French pairs from Django's French gettext catalogues
# in a cached venv (see make_translation_pairs.py). The committed data/translate/ was made by it.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh
py=$(kaizen_venv translation-data polib==1.2.0)
exec "$py" scripts/data/make_translation_pairs.py "$@"
