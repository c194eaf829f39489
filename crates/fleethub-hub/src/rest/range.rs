//! The `Range` and `If-Range` request headers of a firmware download (RFC 9110 §13.1.5, §14), reduced to
//! what the hub serves: the whole image, one byte range, or "unsatisfiable" (416). Outside input: every
//! malformed header has a defined outcome, and nothing here panics.
//!
//! Rules: no `Range`, or a unit other than `bytes` (or none: no `=`), is the whole image; so are several
//! ranges (a comma: the hub does not send `multipart/byteranges`); a `bytes=` range that does not parse,
//! has its last position before its first, starts at or past the end, or is a zero-length suffix, is
//! unsatisfiable; a last position past the end is cut to the end. `If-Range` with anything other than the
//! image's current strong ETag turns the request into a whole-image request.

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    /// Bytes `start..=end` (both within the image).
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Reads `Range` (and `If-Range`) for an image of `size` bytes whose ETag is `etag` (with its quotes).
pub fn parse_range(
    range: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    size: u64,
) -> RangeRequest {
    let Some(range) = range else {
        return RangeRequest::Full;
    };
    // A strong comparison (§13.1.5): a weak tag or a date never matches, so the whole image is sent.
    if let Some(condition) = if_range
        && condition.trim() != etag
    {
        return RangeRequest::Full;
    }
    let range = range.trim();
    let Some((unit, set)) = range.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    if set.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    match (position(first), position(last)) {
        // `-n`: the last n bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: size - suffix.min(size),
                    end: size - 1,
                }
            }
        }
        // `a-`: from a to the end.
        (Some(start), None) if last.is_empty() => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: size - 1,
                }
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => RangeRequest::Unsatisfiable,
    }
}

/// A byte position: one or more ASCII digits; a number too large for u64 reads as u64::MAX (past any end).
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::{Full, Partial, Unsatisfiable};

    const ETAG: &str = "\"abc\"";

    #[test]
    fn ranges_table() {
        let cases: &[(&str, RangeRequest)] = &[
            ("bytes=0-99", Partial { start: 0, end: 99 }),
            ("bytes=10-19", Partial { start: 10, end: 19 }),
            (
                "bytes=999-999",
                Partial {
                    start: 999,
                    end: 999,
                },
            ),
            (
                "bytes=10-",
                Partial {
                    start: 10,
                    end: 999,
                },
            ),
            ("bytes=0-", Partial { start: 0, end: 999 }),
            (
                "bytes=-100",
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            ("bytes=-5000", Partial { start: 0, end: 999 }),
            (
                "bytes=500-5000",
                Partial {
                    start: 500,
                    end: 999,
                },
            ),
            (
                "bytes=0-18446744073709551616",
                Partial { start: 0, end: 999 },
            ),
            (" bytes = 1 - 2 ", Partial { start: 1, end: 2 }),
            ("BYTES=1-2", Partial { start: 1, end: 2 }),
            // Several ranges: the whole image.
            ("bytes=0-1,5-6", Full),
            ("bytes=0-1, garbage", Full),
            // Other units are ignored.
            ("items=0-1", Full),
            ("pages=x", Full),
            // Unsatisfiable or malformed byte ranges.
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-2000", Unsatisfiable),
            ("bytes=18446744073709551616-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-3", Unsatisfiable),
            ("bytes=", Unsatisfiable),
            ("bytes=-", Unsatisfiable),
            ("bytes=abc", Unsatisfiable),
            ("bytes=a-b", Unsatisfiable),
            ("bytes=1-2-3", Unsatisfiable),
            ("bytes=+1-2", Unsatisfiable),
            ("bytes=-1-2", Unsatisfiable),
            ("bytes=1.5-2", Unsatisfiable),
            ("bytes=٣-4", Unsatisfiable),
            // Not a `unit=set` at all, or an empty unit: not a byte range, so ignored.
            ("bytes", Full),
            ("", Full),
            ("=", Full),
        ];
        for (header, expected) in cases {
            assert_eq!(
                parse_range(Some(header), None, ETAG, 1000),
                *expected,
                "{header:?}"
            );
        }
    }

    #[test]
    fn no_range_is_the_whole_image_and_an_empty_image_satisfies_no_range() {
        assert_eq!(parse_range(None, None, ETAG, 1000), Full);
        assert_eq!(parse_range(None, Some("\"other\""), ETAG, 1000), Full);
        for header in ["bytes=0-", "bytes=-1", "bytes=0-0"] {
            assert_eq!(parse_range(Some(header), None, ETAG, 0), Unsatisfiable);
        }
    }

    #[test]
    fn if_range_must_match_the_strong_etag() {
        let range = Some("bytes=10-19");
        let partial = Partial { start: 10, end: 19 };
        assert_eq!(parse_range(range, Some(ETAG), ETAG, 1000), partial);
        assert_eq!(parse_range(range, Some(" \"abc\" "), ETAG, 1000), partial);
        for condition in [
            "\"abd\"",
            "W/\"abc\"",
            "abc",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "",
        ] {
            assert_eq!(
                parse_range(range, Some(condition), ETAG, 1000),
                Full,
                "{condition:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the header, the answer is within the image.
        #[test]
        fn any_header_gives_a_range_within_the_image(header in "\\PC{0,40}", size in 0u64..5000) {
            match parse_range(Some(&header), None, ETAG, size) {
                Partial { start, end } => {
                    proptest::prop_assert!(start <= end && end < size);
                }
                Full | Unsatisfiable => {}
            }
        }

        /// Well-formed single ranges agree with a direct computation.
        #[test]
        fn well_formed_ranges_match_the_rule(first in 0u64..3000, length in 0u64..3000, size in 1u64..2000) {
            let last = first + length;
            let expected = if first >= size {
                Unsatisfiable
            } else {
                Partial { start: first, end: last.min(size - 1) }
            };
            proptest::prop_assert_eq!(
                parse_range(Some(&format!("bytes={first}-{last}")), None, ETAG, size),
                expected
            );
        }
    }
}
