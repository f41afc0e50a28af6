//! `pushgate token`: mints an HS256 client token for development, tests and the example,
//! with the claims the gateway reads (docs/PROTOCOL.md, "Identity and auth"): `sub`, `exp`
//! and optionally `rooms` and `subs`. Production tokens come from the application's own backend.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use session::auth::{MAX_ID_LEN, MAX_SUBS};

/// Prints an HS256 token for a pushgate node started with the same `--jwt-secret`.
#[derive(Debug, Parser)]
#[command(
    name = "pushgate token",
    bin_name = "pushgate token",
    about = "Print an HS256 client token (for development and tests)"
)]
pub struct TokenArgs {
    /// The node's --jwt-secret.
    #[arg(long, env = "PUSHGATE_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user ID (claim `sub`), 1 to 256 bytes.
    #[arg(long)]
    pub sub: String,
    /// Comma-separated rooms the token may join (claim `rooms`; a trailing `*` is a
    /// prefix) [default: no claim, any room].
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// Comma-separated rooms the connection joins when it opens (claim `subs`; at most
    /// 256, exact names) [default: no claim].
    #[arg(long, value_delimiter = ',')]
    pub subs: Option<Vec<String>>,
    /// Seconds the token stays valid (claim `exp`).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    subs: &'a [String],
}

/// Why no token was minted.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// `sub` empty or over [`MAX_ID_LEN`] bytes: the gateway would refuse the token.
    BadSub,
    /// A room in `--rooms` empty (`--rooms ''`, `a,,b`) or over [`MAX_ID_LEN`] bytes: it
    /// would grant no room a client can name.
    BadRoom,
    /// A room in `--subs` empty or over [`MAX_ID_LEN`] bytes, or more than
    /// [`MAX_SUBS`] of them: the gateway would refuse the token.
    BadSubs,
    /// An empty secret would let anyone mint tokens.
    EmptySecret,
    /// A zero TTL makes a token that is expired when minted.
    ZeroTtl,
    /// Encoding failed (not expected with HS256).
    Encode(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::BadSub => write!(f, "--sub must be 1 to {MAX_ID_LEN} bytes"),
            TokenError::BadRoom => write!(
                f,
                "each room in --rooms must be 1 to {MAX_ID_LEN} bytes (omit --rooms for any room)"
            ),
            TokenError::BadSubs => write!(
                f,
                "--subs must name at most {MAX_SUBS} rooms of 1 to {MAX_ID_LEN} bytes each"
            ),
            TokenError::EmptySecret => f.write_str("--secret must not be empty"),
            TokenError::ZeroTtl => f.write_str("--ttl must be at least 1 second"),
            TokenError::Encode(e) => write!(f, "cannot encode the token: {e}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// An HS256 token for `sub`, valid `ttl` from `now`.
pub fn mint(
    secret: &[u8],
    sub: &str,
    rooms: Option<&[String]>,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, TokenError> {
    mint_with_subs(secret, sub, rooms, &[], ttl, now)
}

/// [`mint`] with a `subs` claim (left out when empty): rooms joined at connect.
pub fn mint_with_subs(
    secret: &[u8],
    sub: &str,
    rooms: Option<&[String]>,
    subs: &[String],
    ttl: Duration,
    now: SystemTime,
) -> Result<String, TokenError> {
    if subs.len() > MAX_SUBS || subs.iter().any(|r| r.is_empty() || r.len() > MAX_ID_LEN) {
        return Err(TokenError::BadSubs);
    }
    if sub.is_empty() || sub.len() > MAX_ID_LEN {
        return Err(TokenError::BadSub);
    }
    let bad_room = |r: &String| r.is_empty() || r.len() > MAX_ID_LEN;
    if rooms.is_some_and(|rooms| rooms.iter().any(bad_room)) {
        return Err(TokenError::BadRoom);
    }
    if secret.is_empty() {
        return Err(TokenError::EmptySecret);
    }
    if ttl.is_zero() {
        return Err(TokenError::ZeroTtl);
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub,
        exp: now.saturating_add(ttl.as_secs()),
        rooms,
        subs,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| TokenError::Encode(e.to_string()))
}

/// Runs `pushgate token ARGS`; `args` starts with the subcommand's name.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = TokenArgs::parse_from(args);
    let rooms = args.rooms.as_deref().map(trimmed);
    let subs = args.subs.as_deref().map(trimmed).unwrap_or_default();
    match mint_with_subs(
        args.secret.as_bytes(),
        &args.sub,
        rooms.as_deref(),
        &subs,
        Duration::from_secs(args.ttl),
        SystemTime::now(),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pushgate token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--rooms 'lobby, team-*'` means `lobby` and `team-*`: a room name never starts or ends
/// with the space a list is typed with.
fn trimmed(rooms: &[String]) -> Vec<String> {
    rooms.iter().map(|r| r.trim().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[derive(Debug, serde::Deserialize)]
    struct Read {
        sub: String,
        exp: u64,
        rooms: Option<Vec<String>>,
        #[serde(default)]
        subs: Option<Vec<String>>,
    }

    fn read(token: &str, secret: &[u8]) -> Result<Read, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        decode::<Read>(token, &DecodingKey::from_secret(secret), &v).map(|d| d.claims)
    }

    #[test]
    fn claims_and_signature() {
        let now = SystemTime::now();
        let rooms = ["lobby".to_owned(), "team-*".to_owned()];
        let t = mint(
            b"s3cret",
            "alice",
            Some(&rooms),
            Duration::from_secs(60),
            now,
        )
        .unwrap();
        let c = read(&t, b"s3cret").unwrap();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!((c.sub.as_str(), c.exp), ("alice", secs + 60));
        assert_eq!(c.rooms.as_deref(), Some(&rooms[..]));
        assert!(read(&t, b"other").is_err(), "signed with the secret");
        let t = mint(b"s", "bob", None, Duration::from_secs(1), now).unwrap();
        assert_eq!(read(&t, b"s").unwrap().rooms, None, "no claim: any room");
        assert_eq!(read(&t, b"s").unwrap().subs, None, "no subs: no claim");
        let subs = ["news".to_owned(), "team-1".to_owned()];
        let t = mint_with_subs(b"s", "bob", None, &subs, Duration::from_secs(1), now).unwrap();
        assert_eq!(read(&t, b"s").unwrap().subs.as_deref(), Some(&subs[..]));
    }

    #[test]
    fn refuses_subs_the_gateway_would_refuse() {
        let now = SystemTime::now();
        let ttl = Duration::from_secs(1);
        let too_many: Vec<String> = (0..=MAX_SUBS).map(|i| format!("r{i}")).collect();
        for subs in [
            vec![String::new()],
            vec!["r".repeat(MAX_ID_LEN + 1)],
            too_many,
        ] {
            assert_eq!(
                mint_with_subs(b"s", "a", None, &subs, ttl, now),
                Err(TokenError::BadSubs)
            );
        }
        let a =
            TokenArgs::try_parse_from(["token", "--secret", "k", "--sub", "u", "--subs", "a, b"])
                .unwrap();
        assert_eq!(trimmed(&a.subs.unwrap()), ["a", "b"]);
    }

    #[test]
    fn refuses_what_the_gateway_would_refuse() {
        let now = SystemTime::now();
        let ttl = Duration::from_secs(1);
        assert_eq!(mint(b"s", "", None, ttl, now), Err(TokenError::BadSub));
        let long = "u".repeat(MAX_ID_LEN + 1);
        assert_eq!(mint(b"s", &long, None, ttl, now), Err(TokenError::BadSub));
        assert_eq!(mint(b"", "a", None, ttl, now), Err(TokenError::EmptySecret));
        assert_eq!(
            mint(b"s", "a", None, Duration::ZERO, now),
            Err(TokenError::ZeroTtl)
        );
        for rooms in [vec![String::new()], vec!["a".into(), String::new()]] {
            let rooms = Some(&rooms[..]);
            assert_eq!(mint(b"s", "a", rooms, ttl, now), Err(TokenError::BadRoom));
        }
        let long = ["r".repeat(MAX_ID_LEN + 1)];
        assert_eq!(
            mint(b"s", "a", Some(&long), ttl, now),
            Err(TokenError::BadRoom)
        );
    }

    #[test]
    fn a_room_list_typed_with_spaces_names_the_rooms_without_them() {
        let a = TokenArgs::try_parse_from([
            "token",
            "--secret",
            "k",
            "--sub",
            "u",
            "--rooms",
            "lobby, team-*",
        ])
        .unwrap();
        assert_eq!(trimmed(&a.rooms.unwrap()), ["lobby", "team-*"]);
    }

    #[test]
    fn parses_the_flags() {
        let a = TokenArgs::try_parse_from([
            "token", "--secret", "k", "--sub", "u1", "--rooms", "a,b*", "--ttl", "5",
        ])
        .unwrap();
        assert_eq!(
            (a.sub.as_str(), a.rooms.unwrap(), a.ttl),
            ("u1", vec!["a".to_owned(), "b*".to_owned()], 5)
        );
    }
}
