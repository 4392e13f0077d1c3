//! Masking secrets in build logs: every line a build writes has its
//! secrets' values replaced by `****` before it is stored — the value as
//! it is, URL-encoded (as a query string or `user:token@` would carry it),
//! and base64-encoded (standard and URL-safe alphabets, at each of the
//! three alignments it can have inside a longer encoded text, such as a
//! Basic `Authorization` header of `user:token`).

use base64::Engine as _;

/// Values shorter than this are not masked (a two-letter "secret" would
/// mask half the log and protect nothing).
const MIN_LEN: usize = 4;
/// Base64 fragments shorter than this are not masked (they would match by
/// chance).
const MIN_FRAGMENT: usize = 6;

pub const MASK: &str = "****";

#[derive(Debug, Clone, Default)]
pub struct Mask {
    /// What to replace, longest first (so a longer form is replaced before
    /// a shorter one inside it).
    needles: Vec<String>,
}

impl Mask {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Mask {
        let mut needles = Vec::new();
        for v in values {
            // A value's lines too: a log line never holds a newline.
            let text = String::from_utf8_lossy(v).into_owned();
            let trimmed = text.trim_end_matches(['\r', '\n']).to_owned();
            let mut forms = vec![trimmed.clone()];
            forms.extend(
                trimmed
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= MIN_LEN * 2)
                    .map(str::to_owned),
            );
            for form in forms {
                if form.len() < MIN_LEN {
                    continue;
                }
                let encoded: String = percent_encoding::utf8_percent_encode(
                    &form,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string();
                needles.push(encoded.clone());
                needles.push(encoded.to_ascii_lowercase());
                needles.push(form.replace(' ', "+"));
                needles.extend(base64_fragments(form.as_bytes()));
                needles.push(form);
            }
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        needles.dedup();
        Mask { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every form of every secret replaced by `****`.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }
}

/// The parts of `value`'s base64 encoding that do not depend on what comes
/// before or after it, at each alignment (0, 1 or 2 bytes before it), in
/// both alphabets.
fn base64_fragments(value: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(value);
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let enc = engine.encode(&buf);
            let chars: Vec<char> = enc.chars().collect();
            // Character i covers bits 6i..6i+6 of the input; it depends
            // only on the value when those bits lie within it.
            let first = (8 * offset).div_ceil(6);
            let end = (8 * (offset + value.len())) / 6;
            if end > first && end - first >= MIN_FRAGMENT {
                out.push(chars[first..end].iter().collect());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_masked() {
        let secret = "s3cr3t/T0ken+with spaces";
        let m = Mask::new([secret.as_bytes()]);
        let std = base64::engine::general_purpose::STANDARD;
        let lines = [
            format!("token={secret}"),
            format!(
                "GET /x?t={}",
                percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            ),
            format!("b64: {}", std.encode(secret)),
            format!(
                "Authorization: Basic {}",
                std.encode(format!("user:{secret}"))
            ),
            format!("Basic {}", std.encode(format!("u:{secret}"))),
            format!("Basic {}", std.encode(format!("ab:{secret}"))),
            format!(
                "url-safe {}",
                base64::engine::general_purpose::URL_SAFE.encode(format!("xy{secret}"))
            ),
        ];
        for l in &lines {
            let masked = m.apply(l);
            assert!(masked.contains(MASK), "{l} → {masked}");
            assert!(!masked.contains(secret), "{masked}");
            // No long piece of any encoding survives.
            for frag in base64_fragments(secret.as_bytes()) {
                assert!(!masked.contains(&frag), "{l} → {masked}");
            }
        }
        assert_eq!(m.apply("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn tiny_values_are_not_masked_and_lines_of_long_ones_are() {
        let m = Mask::new([b"ab".as_slice()]);
        assert!(m.is_empty());
        let key =
            "-----BEGIN KEY-----\nMIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9\n-----END KEY-----\n";
        let m = Mask::new([key.as_bytes()]);
        assert_eq!(
            m.apply("leaked MIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9 here"),
            "leaked **** here"
        );
    }
}
