//! English-only filter (CCNet keeps pages whose language-id score is at least 0.5; LLaMA keeps
//! English CommonCrawl). whatlang decides, behind a cheap stopword test that accepts clearly
//! English text without running its trigram model.

use super::Stage;
use crate::document::Document;

/// Function words frequent in English and rare as words in the other languages of the web that
/// use the Latin script (so no "is" (Dutch), "for" (Danish), "to" (Polish), "was" (German),
/// "a", "in", "an", "on", "die"...).
const STOPWORDS: [&str; 28] = [
    "the", "and", "of", "that", "with", "this", "are", "be", "have", "you", "not", "but", "they",
    "his", "from", "by", "which", "their", "were", "has", "had", "been", "would", "there", "what",
    "when", "it", "or",
];

/// Words looked at by the fast path, and characters given to whatlang (it is linear in the text
/// and a few kilobytes decide the language of a page).
const FAST_PATH_WORDS: usize = 400;
const DETECT_BYTES: usize = 4096;
/// Fraction of stopwords above which the fast path accepts. English prose is at about 0.25–0.35
/// with this list; French, German, Spanish text is below 0.02.
const FAST_PATH_RATIO: f64 = 0.18;
const FAST_PATH_MIN_WORDS: usize = 30;

/// The fast path: enough words, nearly all letters ASCII, and a high share of English stopwords.
pub fn looks_english(text: &str) -> bool {
    let mut words = 0usize;
    let mut hits = 0usize;
    let mut non_ascii_letters = 0usize;
    let mut letters = 0usize;
    let mut word = [0u8; 8];
    let mut len = 0usize;
    fn flush(len: &mut usize, word: &[u8; 8], words: &mut usize, hits: &mut usize) {
        if *len > 0 {
            *words += 1;
            if *len <= 5 && STOPWORDS.iter().any(|s| s.as_bytes() == &word[..*len]) {
                *hits += 1;
            }
            *len = 0;
        }
    }
    for c in text.chars() {
        if words >= FAST_PATH_WORDS {
            break;
        }
        if c.is_alphabetic() {
            letters += 1;
            if c.is_ascii() {
                if len < word.len() {
                    word[len] = c.to_ascii_lowercase() as u8;
                }
                len += 1;
            } else {
                non_ascii_letters += 1;
                // A non-ASCII letter makes the word a non-stopword.
                len = len.max(word.len() + 1);
            }
        } else if c != '\'' {
            flush(&mut len, &word, &mut words, &mut hits);
        }
    }
    flush(&mut len, &word, &mut words, &mut hits);
    words >= FAST_PATH_MIN_WORDS
        && non_ascii_letters * 20 <= letters
        && hits as f64 >= FAST_PATH_RATIO * words as f64
}

/// The language of `text` by whatlang and its confidence, looking at the first few kilobytes.
pub fn detect(text: &str) -> Option<(whatlang::Lang, f64)> {
    let mut end = text.len().min(DETECT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    whatlang::detect(&text[..end]).map(|info| (info.lang(), info.confidence()))
}

pub struct EnglishFilter {
    min_confidence: f64,
    fast_path: bool,
}

impl EnglishFilter {
    pub fn new(min_confidence: f64, fast_path: bool) -> Self {
        Self {
            min_confidence,
            fast_path,
        }
    }

    pub fn is_english(&self, text: &str) -> bool {
        if self.fast_path && looks_english(text) {
            return true;
        }
        matches!(detect(text), Some((whatlang::Lang::Eng, c)) if c >= self.min_confidence)
    }
}

impl Stage for EnglishFilter {
    fn name(&self) -> &'static str {
        "english"
    }

    fn apply(&mut self, doc: Document) -> Option<Document> {
        self.is_english(&doc.text).then_some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &str = "The history of the town is closely tied to the river. In the early years, \
        settlers built their houses along the banks, and trade with the neighbouring villages was \
        carried by boat. When the railway arrived, much of that traffic moved to the land, but \
        the old warehouses are still standing and have been turned into shops and museums that \
        attract visitors from all over the region.";
    const FR: &str = "L'histoire de la ville est étroitement liée à la rivière. Dans les premières \
        années, les colons ont construit leurs maisons le long des berges, et le commerce avec les \
        villages voisins se faisait en bateau. Quand le chemin de fer est arrivé, une grande \
        partie de ce trafic est passée sur terre, mais les vieux entrepôts sont toujours debout.";
    const DE: &str = "Die Geschichte der Stadt ist eng mit dem Fluss verbunden. In den ersten \
        Jahren bauten die Siedler ihre Häuser am Ufer, und der Handel mit den Nachbardörfern \
        wurde mit Booten abgewickelt. Als die Eisenbahn kam, verlagerte sich ein großer Teil \
        dieses Verkehrs auf das Land, aber die alten Lagerhäuser stehen noch heute.";
    const ZH: &str = "这个城镇的历史与河流密切相关。早年，定居者沿着河岸建造房屋，与邻近村庄的贸易\
        通过船只进行。铁路到来后，大部分交通转移到了陆地上，但旧仓库仍然矗立着，并被改造成商店和博物馆。";

    #[test]
    fn fast_path_accepts_english_and_nothing_else() {
        assert!(looks_english(EN));
        for (name, t) in [("fr", FR), ("de", DE), ("zh", ZH)] {
            assert!(!looks_english(t), "{name} must not take the fast path");
        }
        // Too short to decide cheaply.
        assert!(!looks_english("The cat and the dog."));
    }

    #[test]
    fn whatlang_decides_when_the_fast_path_does_not() {
        let filter = EnglishFilter::new(0.5, false);
        assert!(filter.is_english(EN));
        for t in [FR, DE, ZH] {
            assert!(!filter.is_english(t));
        }
    }

    #[test]
    fn stage_keeps_english_only() {
        let mut s = EnglishFilter::new(0.5, true);
        assert!(s.apply(Document::new("en", EN)).is_some());
        for t in [FR, DE, ZH, "", "12345 67890 !!!"] {
            assert!(s.apply(Document::new("x", t)).is_none(), "{t:?}");
        }
        // Short English without the fast path still passes through whatlang.
        let short = "Where is the nearest train station, please?";
        assert!(s.apply(Document::new("s", short)).is_some());
    }
}
