//! Incremental UTF-8 validation for text messages that arrive in pieces (fragments, or one
//! frame over several reads). RFC 6455 §8.1: an endpoint that finds invalid UTF-8 must fail
//! the connection, and the Autobahn suite checks that it does so at the first bad byte, not
//! at the end of the message. A piece is checked with simdutf8 as soon as it arrives; only an
//! incomplete code point at its end (at most 3 bytes) is carried over to the next piece.

/// The data is not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

/// Validator state between pieces: the bytes of an unfinished code point.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Checks the next piece. Fails as soon as a byte makes the data invalid, even if the
    /// code point it belongs to is not complete yet.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = usize::from(self.pending_len);
            let need = sequence_len(self.pending[0]).saturating_sub(have);
            let take = need.min(input.len());
            self.pending[have..have + take].copy_from_slice(&input[..take]);
            let len = have + take;
            match std::str::from_utf8(&self.pending[..len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still incomplete: `input` is used up (else `take == need` would have
                    // completed or broken the code point).
                    self.pending_len = len as u8;
                    return Ok(());
                }
            }
            input = &input[take..];
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message has ended: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        *self = Self::new();
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Validates a whole message at once (the fast path for a text message in one frame).
pub fn validate(data: &[u8]) -> Result<(), InvalidUtf8> {
    simdutf8::basic::from_utf8(data)
        .map(drop)
        .map_err(|_| InvalidUtf8)
}

/// Length of the sequence a leading byte starts; 1 for bytes that cannot lead one (the
/// caller then sees the error from the standard validator).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        for p in pieces {
            v.feed(p)?;
        }
        v.finish()
    }

    #[test]
    fn code_point_split_at_every_byte() {
        let s = "a€b𝄞c".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(feed_all(&[&s[..i], &s[i..j], &s[j..]]), Ok(()), "{i} {j}");
            }
        }
    }

    #[test]
    fn truncated_message_fails_at_finish() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xE2, 0x82]), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        // Autobahn 6.4.x: F4 90 can never start a valid code point (above U+10FFFF); the
        // validator must say so before the rest of the sequence arrives.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xce\xba\xe1\xbd\xb9"), Ok(()));
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn surrogates_and_overlongs_are_rejected() {
        assert!(feed_all(&[&[0xED], &[0xA0, 0x80]]).is_err());
        assert!(feed_all(&[&[0xC0, 0xAF]]).is_err());
        assert!(feed_all(&[&[0xE0], &[0x80]]).is_err());
    }
}
