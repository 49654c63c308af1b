#!/usr/bin/env python3
"""Extra sacrebleu 2.6.0 vectors for kaizen's chrF/BLEU (tests/fixtures/envs/sacrebleu_extra_vectors.json):
tokenizer edge cases (numbers, dashes, entities, brackets), repeated n-grams, whitespace, scripts.

    source scripts/lib/venv.sh
    py=$(kaizen_venv data reasoning-gym==0.1.25 math-verify==0.9.0 sacrebleu==2.6.0)
    $py scripts/data/sacrebleu_vectors.py
"""
import json
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import CHRF

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/envs/sacrebleu_extra_vectors.json"

PAIRS = [
    ("It costs $3,000.50 (approx.) in 1990-2000.", "It cost $3,000.50 (approximately) in 1990-2000."),
    ("the the the the the the the", "The cat is on the mat."),
    ("AT&amp;T &lt;b&gt; \"quoted\"", "AT&T <b> \"quoted\""),
    ("  spaced   out\ttext  ", "spaced out text"),
    ("miro dako ga tasu o kan .", "miro dako ga tasu pilu o kan ."),
    ("Ça va? Très bien, merci!", "Ça va ? Très bien , merci !"),
    ("Привет, мир!", "Привет мир"),
    ("a", "a b c d e f g h"),
    ("a b c d e f g h", "a"),
    ("x-ray well-known 3-4", "x - ray well - known 3 - 4"),
    ("(hi) [there] {you}", "hi there you"),
    ("end.", "end"),
]


def main():
    chrf_pp = CHRF(word_order=2)
    rows = []
    for hyp, ref in PAIRS:
        rows.append({
            "hyp": hyp,
            "ref": ref,
            "sentence_bleu": sacrebleu.sentence_bleu(hyp, [ref]).score,
            "sentence_chrf": sacrebleu.sentence_chrf(hyp, [ref]).score,
            "chrf_pp": chrf_pp.sentence_score(hyp, [ref]).score,
        })
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    OUT.write_text(json.dumps({
        "version": sacrebleu.__version__,
        "pairs": rows,
        "corpus": {
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        },
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs -> {OUT}")


if __name__ == "__main__":
    main()
