# shellcheck shell=bash
# The PyTorch/transformers/TRL reference stack used by scripts/reference and scripts/bench
# (CPU; see ../shared refs torch-trl-notes). Not needed by CI: fixtures are committed.
#   source scripts/reference/venv.sh   # sets $REF_PY
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"
REF_PY=$(kaizen_venv reference torch==2.15.0 transformers==5.24.0 gguf==0.19.0 \
    accelerate==1.15.0 trl==1.16.0 safetensors)
export REF_PY
