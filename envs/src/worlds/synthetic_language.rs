//! A small synthetic language pair, English ↔ Zelan, made from a deterministic grammar and
//! lexicon so that a tiny model can learn to translate it.
//!
//! English: `Det [Adj] Noun Verb Det [Adj] Noun [Prep Det [Adj] Noun] .`
//! Zelan is subject-object-verb with postposed adjectives and particles:
//! `Noun [Adj] [ta] ga Noun [Adj] [ta] o [Noun [Adj] [ta] Post] Verb[ne] .`
//! where `ta` marks a definite noun phrase (English "the"), a plural noun takes the suffix
//! `-i`, and a past-tense verb the suffix `-ne`. Example:
//! "The big cat saw a dog near the river." ↔ "Miro dako ta ga tasu o lova ta ken kanne."

use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// (English singular, English plural, Zelan stem).
const NOUNS: [(&str, &str, &str); 16] = [
    ("cat", "cats", "miro"),
    ("dog", "dogs", "tasu"),
    ("bird", "birds", "pelo"),
    ("child", "children", "kina"),
    ("farmer", "farmers", "doru"),
    ("teacher", "teachers", "sela"),
    ("fish", "fish", "wemu"),
    ("horse", "horses", "garo"),
    ("apple", "apples", "fesa"),
    ("book", "books", "rupa"),
    ("boat", "boats", "nami"),
    ("house", "houses", "bamu"),
    ("river", "rivers", "lova"),
    ("tree", "trees", "juni"),
    ("stone", "stones", "keto"),
    ("basket", "baskets", "soli"),
];

/// (English base, English third person singular, English past, Zelan stem).
const VERBS: [(&str, &str, &str, &str); 10] = [
    ("see", "sees", "saw", "kan"),
    ("eat", "eats", "ate", "mor"),
    ("find", "finds", "found", "tel"),
    ("carry", "carries", "carried", "bor"),
    ("like", "likes", "liked", "sum"),
    ("follow", "follows", "followed", "nir"),
    ("wash", "washes", "washed", "lup"),
    ("hide", "hides", "hid", "zav"),
    ("draw", "draws", "drew", "pek"),
    ("hear", "hears", "heard", "dim"),
];

/// (English, Zelan).
const ADJECTIVES: [(&str, &str); 8] = [
    ("big", "dako"),
    ("small", "pilu"),
    ("red", "rasi"),
    ("old", "veno"),
    ("happy", "lumi"),
    ("quiet", "sofa"),
    ("green", "tira"),
    ("tired", "mazu"),
];

/// (English preposition, Zelan postposition).
const PLACES: [(&str, &str); 4] = [
    ("near", "ken"),
    ("under", "sul"),
    ("behind", "pata"),
    ("in", "nu"),
];

/// One aligned sentence pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    /// The English sentence.
    pub english: String,
    /// Its Zelan translation.
    pub zelan: String,
}

struct NounPhrase {
    noun: usize,
    adjective: Option<usize>,
    definite: bool,
    plural: bool,
}

impl NounPhrase {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        Self {
            noun: rng.random_range(0..NOUNS.len()),
            adjective: rng
                .random_bool(0.5)
                .then(|| rng.random_range(0..ADJECTIVES.len())),
            definite: rng.random_bool(0.5),
            plural: rng.random_bool(0.3),
        }
    }

    fn english(&self) -> String {
        let (singular, plural, _) = NOUNS[self.noun];
        let det = match (self.definite, self.plural) {
            (true, _) => "the",
            (false, true) => "some",
            (false, false) => "a",
        };
        let noun = if self.plural { plural } else { singular };
        match self.adjective {
            Some(a) => format!("{det} {} {noun}", ADJECTIVES[a].0),
            None => format!("{det} {noun}"),
        }
    }

    fn zelan(&self) -> String {
        let mut words = vec![format!(
            "{}{}",
            NOUNS[self.noun].2,
            if self.plural { "i" } else { "" }
        )];
        if let Some(a) = self.adjective {
            words.push(ADJECTIVES[a].1.to_string());
        }
        if self.definite {
            words.push("ta".into());
        }
        words.join(" ")
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The sentence pair for `seed` (deterministic).
pub fn sentence_pair(seed: u64) -> SentencePair {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A17_C0DE);
    let subject = NounPhrase::random(&mut rng);
    let object = NounPhrase::random(&mut rng);
    let place = rng.random_bool(0.4).then(|| {
        (
            *PLACES.choose(&mut rng).unwrap_or(&PLACES[0]),
            NounPhrase::random(&mut rng),
        )
    });
    let verb = VERBS[rng.random_range(0..VERBS.len())];
    let past = rng.random_bool(0.5);

    let english_verb = match (past, subject.plural) {
        (true, _) => verb.2,
        (false, false) => verb.1,
        (false, true) => verb.0,
    };
    let mut english = format!("{} {english_verb} {}", subject.english(), object.english());
    let mut zelan = format!("{} ga {} o", subject.zelan(), object.zelan());
    if let Some(((preposition, postposition), np)) = &place {
        english.push_str(&format!(" {preposition} {}", np.english()));
        zelan.push_str(&format!(" {} {postposition}", np.zelan()));
    }
    zelan.push_str(&format!(" {}{}", verb.3, if past { "ne" } else { "" }));
    SentencePair {
        english: format!("{}.", capitalize(&english)),
        zelan: format!("{}.", capitalize(&zelan)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_deterministic_and_varied() {
        assert_eq!(sentence_pair(3), sentence_pair(3));
        let distinct: std::collections::BTreeSet<String> =
            (0..200).map(|s| sentence_pair(s).english).collect();
        assert!(distinct.len() > 190, "{}", distinct.len());
    }

    #[test]
    fn grammar_is_sov_with_particles_and_suffixes() {
        for seed in 0..100 {
            let p = sentence_pair(seed);
            let words: Vec<&str> = p.zelan.trim_end_matches('.').split(' ').collect();
            let ga = words.iter().position(|w| *w == "ga").unwrap();
            let o = words.iter().position(|w| *w == "o").unwrap();
            assert!(ga < o && o < words.len() - 1, "{}", p.zelan);
            let verb = words.last().unwrap();
            assert!(VERBS.iter().any(|v| verb.starts_with(v.3)), "{}", p.zelan);
            let past = VERBS
                .iter()
                .any(|v| p.english.contains(&format!(" {} ", v.2)));
            assert_eq!(verb.ends_with("ne"), past, "{} / {}", p.english, p.zelan);
            assert!(p.english.ends_with('.') && p.zelan.ends_with('.'));
        }
    }
}
