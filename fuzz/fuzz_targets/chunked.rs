//! The chunked decoder that finds where an upstream's chunked body ends
//! (`wire::Chunked::advance`), driven as the fast path's body loop drives
//! it: each read appended to what the last step left, the decoder given
//! all of it, what it took passed on and dropped, reading stopped once it
//! is done. The oracle: the body fed whole, cut where the input says, cut
//! where a cut matters (around each CR and LF, at each line's length
//! limit) and, when short, a byte at a time, all come to the same end.
//!
//! The input can insert a long run of one byte, of any length or of one
//! near the line-length limit, so that lines at the limit are in reach of
//! a short input.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokengate::fast::wire::{Chunked, MAX_CHUNK_LINE};

#[derive(Debug, Arbitrary)]
enum Run {
    /// `len` (modulo 9000) copies of `byte` at `at` (modulo).
    Any { at: u16, len: u16, byte: u8 },
    /// Within 32 bytes either side of the limit.
    NearLimit { at: u16, off: u8, byte: u8 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Where reads end, as offsets into the body (modulo its length).
    cuts: Vec<u16>,
    run: Option<Run>,
    body: Vec<u8>,
}

/// Refused, or how many bytes were passed on and whether the body ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Bad,
    Passed { len: usize, done: bool },
}

fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut chunks = Chunked::Size;
    let mut buf: Vec<u8> = Vec::new();
    let mut len = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        let Ok(n) = chunks.advance(&buf) else {
            return Outcome::Bad;
        };
        assert!(n <= buf.len());
        buf.drain(..n);
        len += n;
        if chunks == Chunked::Done {
            break;
        }
    }
    Outcome::Passed {
        len,
        done: chunks == Chunked::Done,
    }
}

/// `body` cut at `cuts` (offsets within it, in any order).
fn split(body: &[u8], mut cuts: Vec<usize>) -> Outcome {
    cuts.push(body.len());
    cuts.sort_unstable();
    let mut at = 0;
    feed(cuts.into_iter().map(|cut| {
        let piece = &body[at..cut];
        at = cut;
        piece
    }))
}

fuzz_target!(|input: Input| {
    let mut body = input.body;
    let (at, len, byte) = match input.run {
        None => (0, 0, 0),
        Some(Run::Any { at, len, byte }) => (at, usize::from(len) % 9000, byte),
        Some(Run::NearLimit { at, off, byte }) => {
            (at, MAX_CHUNK_LINE - 32 + usize::from(off % 64), byte)
        }
    };
    let at = usize::from(at) % (body.len() + 1);
    body.splice(at..at, std::iter::repeat_n(byte, len));

    let whole = feed([&body[..]]);
    let cuts = input
        .cuts
        .iter()
        .map(|c| usize::from(*c) % (body.len() + 1))
        .collect();
    assert_eq!(whole, split(&body, cuts), "cut at {:?}", input.cuts);
    let mut telling = vec![MAX_CHUNK_LINE, MAX_CHUNK_LINE + 1];
    for (i, b) in body.iter().enumerate() {
        if *b == b'\r' || *b == b'\n' {
            telling.extend([i, i + 1]);
        }
        if *b == b'\n' {
            telling.extend([i + 1 + MAX_CHUNK_LINE, i + 2 + MAX_CHUNK_LINE]);
        }
    }
    telling.retain(|c| *c <= body.len());
    assert_eq!(whole, split(&body, telling), "cut around line ends");
    if body.len() <= 512 {
        assert_eq!(whole, feed(body.chunks(1)), "a byte at a time");
    }
    // A body that ended is exactly the bytes passed on: fed alone, they end
    // it at their last byte.
    if let Outcome::Passed { len, done: true } = whole {
        assert_eq!(feed([&body[..len]]), whole);
    }
});
