//! `utf8`: differential check of `switchboard_proto::Utf8Validator` against
//! `std::str::from_utf8`.
//!
//! The input is split into fuzzer-chosen pieces that are fed in order. Checks:
//! - the validator's verdict (every `feed` ok and `finish` ok) equals
//!   `std::str::from_utf8` on the whole input;
//! - fail-fast is exact: `feed` errors on precisely the first piece after
//!   which the bytes so far can no longer start valid UTF-8 (what RFC 6455
//!   §8.1 asks for), and never earlier;
//! - `reset` forgets a pending partial code point.
//!
//! Input layout:
//!
//! ```text
//! byte 0      n = number of piece sizes (taken mod 17)
//! n bytes     piece sizes, used cyclically (0 feeds an empty piece)
//! rest        the bytes to validate
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::Utf8Validator;

/// `true` when `b` is invalid UTF-8 whatever bytes follow it.
fn definitely_invalid(b: &[u8]) -> bool {
    matches!(std::str::from_utf8(b), Err(e) if e.error_len().is_some())
}

fuzz_target!(|input: &[u8]| {
    let [n, rest @ ..] = input else {
        return;
    };
    let n = usize::from(*n % 17).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let expected = std::str::from_utf8(data).is_ok();

    let mut v = Utf8Validator::new();
    let mut end = 0usize;
    let mut failed = false;
    // A 255-byte piece after each round of sizes guarantees progress even
    // when every size is 0.
    for &s in sizes.iter().chain(std::iter::once(&u8::MAX)).cycle() {
        let next = (end + usize::from(s)).min(data.len());
        let result = v.feed(&data[end..next]);
        end = next;
        assert_eq!(
            result.is_err(),
            definitely_invalid(&data[..end]),
            "feed verdict wrong after {end} bytes of {data:x?} (pieces {sizes:?})"
        );
        if result.is_err() {
            failed = true;
            break;
        }
        if end == data.len() {
            break;
        }
    }
    let ok = !failed && v.finish().is_ok();
    assert_eq!(
        ok, expected,
        "verdict differs for {data:x?} (pieces {sizes:?})"
    );

    // After reset, a pending partial code point is forgotten.
    if !failed {
        v.reset();
        v.feed(b"ok \xe2\x82\xac").expect("valid after reset");
        v.finish().expect("complete after reset");
    }
});
