//! Norwegian legal-style documents with the length spread a backfill meets:
//! empty and whitespace-only texts, mostly a few hundred to a few thousand
//! words, and a few far over the 8,191-token input limit.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub title: String,
    pub content: String,
}

const SUBJECTS: &[&str] = &[
    "kommuner og fylkeskommuner",
    "arv og dødsboskifte",
    "barnehager",
    "folketrygd",
    "plan- og byggesaksbehandling",
    "arbeidsmiljø, arbeidstid og stillingsvern",
    "behandlingsmåten i forvaltningssaker",
    "offentlige anskaffelser",
    "merverdiavgift",
    "vegtrafikk",
    "helsepersonell",
    "personopplysninger",
    "havner og farvann",
    "jordskifte",
    "statens ansatte",
    "eiendomsskatt",
    "vern av naturens mangfold",
    "tvisteløsning",
    "grunnskolen og den videregående opplæringa",
];
const SHORT: &[&str] = &[
    "kommuneloven",
    "arveloven",
    "barnehageloven",
    "folketrygdloven",
    "plan- og bygningsloven",
    "arbeidsmiljøloven",
    "forvaltningsloven",
    "anskaffelsesloven",
    "merverdiavgiftsloven",
    "vegtrafikkloven",
    "helsepersonelloven",
    "personopplysningsloven",
    "havne- og farvannsloven",
    "jordskifteloven",
    "statsansatteloven",
    "eigedomsskattelova",
    "naturmangfoldloven",
    "tvisteloven",
    "opplæringslova",
];
const OPENINGS: &[&str] = &[
    "Denne loven gjelder",
    "Departementet kan gi forskrift om",
    "Kommunen skal",
    "Vedtak etter denne paragrafen",
    "Den som forsettlig eller uaktsomt overtrer",
    "Klage over vedtak",
    "Myndigheten skal sørge for at",
    "Fylkesmannen kan",
    "Søknad om tillatelse",
    "Enhver har rett til",
    "Saken skal avgjøres",
    "Styret plikter å",
];
const MIDDLES: &[&str] = &[
    "innen rimelig tid",
    "etter første ledd",
    "jf. § 3-2",
    "når særlige grunner foreligger",
    "i samsvar med forvaltningsloven",
    "for den enkelte",
    "uten ugrunnet opphold",
    "med hjemmel i denne lov",
    "så langt det er nødvendig",
    "etter reglene i kapittel 5",
    "som nevnt i annet ledd",
    "for hele landet",
    "i kommunestyret",
    "ved skriftlig melding",
    "overfor departementet",
];
const ENDINGS: &[&str] = &[
    "ilegges gebyr.",
    "kan påklages til departementet.",
    "gjelder tilsvarende.",
    "skal begrunnes skriftlig.",
    "tas opp til ny behandling.",
    "skal kunngjøres på hensiktsmessig måte.",
    "straffes med bøter.",
    "kan kreves erstattet.",
    "skal være offentlig tilgjengelig.",
    "trer i kraft straks.",
];

fn sentence(rng: &mut StdRng) -> String {
    let mut s = String::new();
    s.push_str(OPENINGS[rng.random_range(0..OPENINGS.len())]);
    for _ in 0..rng.random_range(1..4) {
        s.push(' ');
        s.push_str(MIDDLES[rng.random_range(0..MIDDLES.len())]);
    }
    s.push(' ');
    s.push_str(ENDINGS[rng.random_range(0..ENDINGS.len())]);
    s
}

/// About `words` words of sections, each headed `§ n`.
fn body(rng: &mut StdRng, words: usize) -> String {
    let mut out = String::with_capacity(words * 8);
    let mut count = 0;
    let mut section = 1;
    let mut chapter = 1;
    while count < words {
        if section % 7 == 1 {
            out.push_str(&format!("Kapittel {chapter}. Alminnelige bestemmelser\n\n"));
            chapter += 1;
        }
        out.push_str(&format!("§ {}-{section}. ", chapter.max(2) - 1));
        for _ in 0..rng.random_range(2..6) {
            let s = sentence(rng);
            count += s.split_whitespace().count();
            out.push_str(&s);
            out.push(' ');
        }
        out.push_str("\n\n");
        section += 1;
    }
    out
}

/// `count` documents, the same ones for the same seed.
pub fn generate(seed: u64, count: usize) -> Vec<Doc> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let i = rng.random_range(0..SUBJECTS.len());
            let title = format!("Lov om {} ({})", SUBJECTS[i], SHORT[i]);
            let roll: f64 = rng.random();
            let content = if roll < 0.02 {
                String::new()
            } else if roll < 0.03 {
                "  \n\t ".to_string()
            } else if roll < 0.04 {
                let words = rng.random_range(12_000..20_000);
                body(&mut rng, words)
            } else {
                // Skewed towards shorter texts: about 500 words (1,100 tokens) on average.
                let u: f64 = rng.random();
                let words = 40 + (u * u * 1_350.0) as usize;
                format!("{title}\n\n{}", body(&mut rng, words))
            };
            Doc { title, content }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_edge_cases_and_is_deterministic() {
        let docs = generate(7, 2000);
        assert_eq!(docs, generate(7, 2000));
        assert!(docs.iter().any(|d| d.content.is_empty()));
        assert!(docs
            .iter()
            .any(|d| !d.content.is_empty() && d.content.trim().is_empty()));
        let tok = bpe_openai::cl100k_base();
        let long = docs
            .iter()
            .filter(|d| d.content.len() > 60_000)
            .collect::<Vec<_>>();
        assert!(!long.is_empty());
        assert!(long.iter().all(|d| tok.count(d.content.as_str()) > 8_191));
        let words: usize = docs
            .iter()
            .map(|d| d.content.split_whitespace().count())
            .sum();
        let mean = words / docs.len();
        assert!((400..900).contains(&mean), "mean words {mean}");
        assert!(docs
            .iter()
            .any(|d| d.content.contains('§') && d.content.contains('ø')));
    }
}
