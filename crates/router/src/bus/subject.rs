//! Bus subjects: `<prefix>.user.<id>`, `<prefix>.room.<id>` and `<prefix>.all`.
//!
//! A NATS subject token may not hold `.`, `*`, `>` or whitespace, and user and room IDs
//! may hold anything. IDs are therefore escaped: the bytes `A-Z a-z 0-9 - _` stand for
//! themselves and every other byte of the ID's UTF-8 becomes `%` and two upper-case hex
//! digits. The mapping is one-to-one (`%` itself is escaped), so no two IDs share a
//! subject, and a backend can compute it in one line of any language (it is URL
//! percent-encoding with `.`, `~` and `%` escaped too).

use std::fmt::Write as _;

/// What a subject addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Every connection of one user.
    User,
    /// Every member of one room.
    Room,
}

impl Kind {
    /// The subject token naming the kind.
    pub fn token(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Room => "room",
        }
    }

    fn from_token(t: &str) -> Option<Kind> {
        match t {
            "user" => Some(Kind::User),
            "room" => Some(Kind::Room),
            _ => None,
        }
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Escapes an ID into one subject token.
pub fn encode_id(id: &str, out: &mut String) {
    for &b in id.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The ID a token stands for; `None` unless the token is exactly what [`encode_id`]
/// makes of some ID (so every ID has one spelling).
pub fn decode_id(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            // Lower-case hex, and escapes of bytes that stand for themselves, are
            // other spellings of an ID: refused, so decoding stays one-to-one.
            if is_plain(v) || hex.iter().any(u8::is_ascii_lowercase) {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The subjects of one deployment, under its prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (one or more dot-separated tokens, e.g. `pushgate` or
    /// `acme.push`).
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if ok {
            Ok(Subjects {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "bus prefix {prefix:?} is not a NATS subject without wildcards"
            ))
        }
    }

    /// `<prefix>.user.<id>` or `<prefix>.room.<id>`.
    pub fn subject(&self, kind: Kind, id: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 6 + id.len() * 3);
        s.push_str(&self.prefix);
        s.push('.');
        s.push_str(kind.token());
        s.push('.');
        encode_id(id, &mut s);
        s
    }

    /// `<prefix>.h.user.<id>` or `<prefix>.h.room.<id>`: the history stream's subject.
    pub fn history(&self, kind: Kind, id: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 8 + id.len() * 3);
        s.push_str(&self.prefix);
        s.push_str(".h.");
        s.push_str(kind.token());
        s.push('.');
        encode_id(id, &mut s);
        s
    }

    /// `<prefix>.h.ack.<user>.<device>`: where a device's last ack is stored.
    pub fn ack(&self, uid: &str, device: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 8 + (uid.len() + device.len()) * 3);
        s.push_str(&self.prefix);
        s.push_str(".h.ack.");
        encode_id(uid, &mut s);
        s.push('.');
        encode_id(device, &mut s);
        s
    }

    /// `<prefix>.all`, the broadcast subject.
    pub fn broadcast(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// What a subject under this prefix addresses: `Some(None)` for broadcast,
    /// `Some(Some((kind, id)))` for a user or room, `None` for anything else.
    pub fn parse(&self, subject: &str) -> Option<Option<(Kind, String)>> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        if rest == "all" {
            return Some(None);
        }
        parse_target(rest).map(Some)
    }
}

/// Parses `user.<id>` or `room.<id>`, the form targets take in the `Pushgate-Targets`
/// header.
pub fn parse_target(target: &str) -> Option<(Kind, String)> {
    let (kind, token) = target.split_once('.')?;
    Some((Kind::from_token(kind)?, decode_id(token)?))
}

/// Writes `user.<id>` or `room.<id>`.
pub fn write_target(kind: Kind, id: &str, out: &mut String) {
    out.push_str(kind.token());
    out.push('.');
    encode_id(id, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(id: &str) -> String {
        let mut s = String::new();
        encode_id(id, &mut s);
        s
    }

    #[test]
    fn escapes_what_nats_cannot_carry() {
        assert_eq!(enc("alice-01_x"), "alice-01_x");
        assert_eq!(enc("a.b"), "a%2Eb");
        assert_eq!(enc("*"), "%2A");
        assert_eq!(enc(">"), "%3E");
        assert_eq!(enc("a b\tc"), "a%20b%09c");
        assert_eq!(enc("100%"), "100%25");
        assert_eq!(enc("é"), "%C3%A9");
        assert_eq!(enc("用户"), "%E7%94%A8%E6%88%B7");
    }

    #[test]
    fn refuses_other_spellings() {
        for bad in [
            "", "%41", "%c3%a9", "a.b", "a b", "%", "%2", "%ZZ", "%FF", "a*", "%C3",
        ] {
            assert_eq!(decode_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subjects_and_parsing() {
        let s = Subjects::new("acme.push").unwrap();
        assert_eq!(s.subject(Kind::User, "u.1"), "acme.push.user.u%2E1");
        assert_eq!(s.subject(Kind::Room, "r"), "acme.push.room.r");
        assert_eq!(s.broadcast(), "acme.push.all");
        assert_eq!(
            s.parse("acme.push.user.u%2E1"),
            Some(Some((Kind::User, "u.1".to_owned())))
        );
        assert_eq!(s.parse("acme.push.all"), Some(None));
        assert_eq!(s.parse("acme.push.node.x"), None);
        assert_eq!(s.parse("acme.pushx.all"), None);
        assert_eq!(s.parse("other.user.x"), None);
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_stays_one_token(id in "\\PC{1,40}|[ .*>%\t]{1,8}") {
            let e = enc(&id);
            prop_assert!(e.bytes().all(|b| b.is_ascii_graphic() && !b".*>".contains(&b)));
            prop_assert_eq!(decode_id(&e), Some(id));
        }

        #[test]
        fn distinct_ids_distinct_subjects(a in "\\PC{1,12}", b in "\\PC{1,12}") {
            prop_assume!(a != b);
            prop_assert_ne!(enc(&a), enc(&b));
        }

        #[test]
        fn decode_never_panics_and_inverts(token in "[%A-Za-z0-9._ -]{0,16}") {
            if let Some(id) = decode_id(&token) {
                prop_assert_eq!(enc(&id), token);
            }
        }
    }
}
