#!/usr/bin/env bash
# Prunes a cargo target directory that CI reuses across runs on one machine: each run builds the
# workspace's crates and test binaries under new hashes, and the old ones would pile up until
# the disk is full. Keeps the newest few builds of each workspace crate and of each test
# binary; drops incremental caches (CI builds with CARGO_INCREMENTAL=0). Third-party crates are
# kept: their hashes do not change from run to run.
# Usage: scripts/lib/prune_target.sh TARGET_DIR
set -euo pipefail
target=${1:?usage: prune_target.sh TARGET_DIR}
[[ -d $target ]] || exit 0
for profile in debug release; do
    dir=$target/$profile
    [[ -d $dir ]] || continue
    rm -rf "$dir/incremental"
    [[ -d $dir/deps ]] || continue
    python3 - "$dir/deps" <<'PY'
import collections, os, sys
deps = sys.argv[1]
groups = collections.defaultdict(list)
for name in os.listdir(deps):
    path = os.path.join(deps, name)
    if not os.path.isfile(path) or "-" not in name:
        continue
    stem, _, rest = name.rpartition("-")
    ext = rest.partition(".")[2]
    if ext == "" and os.access(path, os.X_OK):
        keep = 3  # a test binary or the kaizen binary: one per feature set (plain, gpu, mpi)
    elif stem.startswith("libkaizen") and ext in ("rlib", "rmeta"):
        keep = 4  # one per feature set (plain, gpu, mpi) and one spare
    else:
        continue
    groups[(stem, ext, keep)].append((os.path.getmtime(path), path))
freed = 0
for (_, _, keep), files in groups.items():
    files.sort(reverse=True)
    for _, path in files[keep:]:
        freed += os.path.getsize(path)
        os.remove(path)
print(f"pruned {freed / 2**30:.1f} GiB of stale builds from {deps}")
PY
done
