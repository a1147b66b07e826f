//! Word-level tokenizer (DESIGN §4.4): lowercase, split on non-alphanumerics, a vocabulary built
//! from the training captions, `[PAD] = 0`, `[UNK] = 1`, `[CLS] = 2`, fixed-length encoding
//! `[CLS] w1 … wn [PAD] …`.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DataError, Result};

/// Id of the padding token `[PAD]`.
pub const PAD: i32 = 0;
/// Id of the unknown-word token `[UNK]`.
pub const UNK: i32 = 1;
/// Id of the leading `[CLS]` token.
pub const CLS: i32 = 2;
/// The special tokens, at ids 0, 1, 2.
pub const SPECIALS: [&str; 3] = ["[PAD]", "[UNK]", "[CLS]"];

/// Lowercase and split on every non-alphanumeric character (Unicode-aware); empty pieces dropped.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A fixed-length encoding: `ids = [CLS] w1 … wn [PAD] …` (`max_len` entries) and `len` = 1 + n
/// (number of non-pad positions, `[CLS]` included).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `[max_len]` token ids: `[CLS]`, the words, then `[PAD]`.
    pub ids: Vec<i32>,
    /// Non-pad positions, `[CLS]` included (1 + words kept).
    pub len: usize,
    /// Precomputed features of the caption (`model.text.source = "features"`), else empty.
    pub features: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct VocabFile {
    tokens: Vec<String>,
}

/// A word vocabulary. Id order: the three specials, then words by descending frequency, ties
/// alphabetical — deterministic for a given caption multiset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, i32>,
}

impl Vocab {
    /// Build from captions, keeping words seen at least `min_count` times and at most `max_size`
    /// entries in total (specials included).
    pub fn build<'a>(
        captions: impl IntoIterator<Item = &'a str>,
        min_count: usize,
        max_size: Option<usize>,
    ) -> Vocab {
        let mut freq: HashMap<String, usize> = HashMap::new();
        for c in captions {
            for w in tokenize(c) {
                *freq.entry(w).or_default() += 1;
            }
        }
        let mut words: Vec<(String, usize)> = freq
            .into_iter()
            .filter(|(w, n)| *n >= min_count.max(1) && !SPECIALS.contains(&w.as_str()))
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(words.into_iter().map(|(w, _)| w));
        if let Some(m) = max_size {
            tokens.truncate(m.max(SPECIALS.len()));
        }
        Self::from_token_list(tokens)
    }

    /// A vocabulary with exactly these tokens in this order (ids = positions), e.g. as saved
    /// in a checkpoint.
    pub fn from_token_list(tokens: Vec<String>) -> Vocab {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i32))
            .collect();
        Vocab { tokens, index }
    }

    /// A token listed twice (ids must be one-to-one with tokens), if any.
    pub fn duplicate(&self) -> Option<&str> {
        if self.index.len() == self.tokens.len() {
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        self.tokens
            .iter()
            .find(|t| !seen.insert(t.as_str()))
            .map(String::as_str)
    }

    /// Vocabulary size, specials included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    /// `true` for a vocabulary without tokens (not even the specials).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    /// Id of a (lowercase) word, `UNK` if absent.
    pub fn id(&self, word: &str) -> i32 {
        self.index.get(word).copied().unwrap_or(UNK)
    }
    /// The token of `id`, `None` if out of range.
    pub fn token(&self, id: i32) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map(String::as_str)
    }
    /// All tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Encode to exactly `max_len` ids (`max_len ≥ 1`; words beyond `max_len − 1` are truncated).
    pub fn encode(&self, text: &str, max_len: usize) -> Encoded {
        let mut ids = Vec::with_capacity(max_len);
        if max_len > 0 {
            ids.push(CLS);
        }
        for w in tokenize(text) {
            if ids.len() >= max_len {
                break;
            }
            ids.push(self.id(&w));
        }
        let len = ids.len();
        ids.resize(max_len, PAD);
        Encoded {
            ids,
            len,
            features: Vec::new(),
        }
    }

    /// Decode ids back to words (specials skipped); for debugging.
    pub fn decode(&self, ids: &[i32]) -> String {
        ids.iter()
            .filter(|&&i| i > CLS)
            .filter_map(|&i| self.token(i))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Save as JSON `{"tokens": [...]}` (id = position).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(&VocabFile {
            tokens: self.tokens.clone(),
        })
        .map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        crate::tensor::io::write_atomic(path, &json)
            .map_err(|e| DataError::contract(format!("vocabulary file: {e}")))
    }

    /// Load a vocabulary saved by [`Vocab::save`]; checks the specials and that tokens are unique.
    pub fn load(path: &Path) -> Result<Vocab> {
        let bytes = crate::util::bounded::read_file(path)
            .map_err(|e| DataError::io(path, "vocabulary file", e))?;
        let f: VocabFile = serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if f.tokens.len() < 3 || f.tokens[..3] != SPECIALS {
            return Err(DataError::invalid(
                path,
                "vocabulary must start with [PAD], [UNK], [CLS]",
            ));
        }
        let v = Self::from_token_list(f.tokens);
        if let Some(t) = v.duplicate() {
            return Err(DataError::invalid(
                path,
                format!("vocabulary has a duplicate token: {t:?} is listed twice"),
            ));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_lowercases_and_splits() {
        assert_eq!(
            tokenize("A small-red Circle, to the LEFT of 2 squares!"),
            ["a", "small", "red", "circle", "to", "the", "left", "of", "2", "squares"]
        );
        assert!(tokenize("  ,.;  ").is_empty());
    }

    #[test]
    fn vocab_order_encode_and_roundtrip() {
        let caps = ["b a c", "a b", "a d", "zz"];
        let v = Vocab::build(caps.iter().copied(), 1, None);
        // a:3, b:2, then c, d, zz (1 each) alphabetical.
        assert_eq!(
            v.tokens(),
            ["[PAD]", "[UNK]", "[CLS]", "a", "b", "c", "d", "zz"]
        );
        // Same multiset in another order → same vocabulary.
        let v2 = Vocab::build(["zz", "a d", "a b", "b a c"], 1, None);
        assert_eq!(v, v2);
        let e = v.encode("A b, unknown", 6);
        assert_eq!(e.ids, vec![CLS, 3, 4, UNK, PAD, PAD]);
        assert_eq!(e.len, 4);
        let t = v.encode("a b c d a b", 4);
        assert_eq!(t.ids, vec![CLS, 3, 4, 5]);
        assert_eq!(t.len, 4);
        assert_eq!(v.decode(&e.ids), "a b [UNK]".replace(" [UNK]", ""));
        let small = Vocab::build(caps.iter().copied(), 2, None);
        assert_eq!(small.tokens(), ["[PAD]", "[UNK]", "[CLS]", "a", "b"]);
        assert_eq!(Vocab::build(caps.iter().copied(), 1, Some(4)).len(), 4);

        let d = std::env::temp_dir().join(format!("gshn-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("vocab.json");
        v.save(&p).unwrap();
        assert_eq!(Vocab::load(&p).unwrap(), v);
        std::fs::write(&p, r#"{"tokens": ["a", "[UNK]", "[CLS]"]}"#).unwrap();
        let e = Vocab::load(&p).unwrap_err().to_string();
        assert!(e.contains("vocab.json") && e.contains("[PAD]"), "{e}");
        std::fs::write(&p, r#"{"tokens": ["[PAD]", "[UNK]", "[CLS]", "x", "x"]}"#).unwrap();
        assert!(Vocab::load(&p)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        std::fs::write(&p, "{").unwrap();
        assert!(Vocab::load(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
    }
}
