//! Who is connecting: a JWT (`?token=` or `Authorization: Bearer`), or in dev mode a
//! trusted `?uid=`. Decided from the request head, before the upgrade: a failure is a 401
//! and nothing is allocated for the connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use protocol::handshake::Request;
use serde::Deserialize;

/// The longest user or device ID accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// How `/ws` identifies the user.
#[derive(Clone)]
pub enum AuthMode {
    /// `?uid=` is trusted as is. Only for development; the binary says so loudly.
    Dev,
    /// A signed JWT whose `sub` is the user ID.
    Jwt(JwtAuth),
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Dev => f.write_str("Dev"),
            AuthMode::Jwt(j) => write!(f, "Jwt({j:?})"),
        }
    }
}

/// JWT verification settings.
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    algorithm: Algorithm,
    leeway: Duration,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithm", &self.algorithm)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// The key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct KeyError(String);

impl JwtAuth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        JwtAuth {
            key: DecodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
            leeway: Duration::from_secs(30),
        }
    }

    /// RS256 with an RSA public key in PEM.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Ok(JwtAuth {
            key: DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError(e.to_string()))?,
            algorithm: Algorithm::RS256,
            leeway: Duration::from_secs(30),
        })
    }

    /// ES256 with an EC (P-256) public key in PEM.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Ok(JwtAuth {
            key: DecodingKey::from_ec_pem(pem).map_err(|e| KeyError(e.to_string()))?,
            algorithm: Algorithm::ES256,
            leeway: Duration::from_secs(30),
        })
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 30 s).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
}

/// An authenticated connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID (`sub`, or `uid` in dev mode).
    pub uid: String,
    /// Device ID from `?device=`.
    pub device: Option<String>,
    /// How long the token stays valid, from now; `None` in dev mode.
    pub expires_in: Option<Duration>,
    /// The rooms the token lets the connection join; `None` for any (dev mode, or a
    /// token without a `rooms` claim).
    pub rooms: Option<RoomGrant>,
    /// The rooms the token's `subs` claim joins the connection to when it opens (the
    /// server's choice, not limited by `rooms`); empty without the claim.
    pub subs: Vec<String>,
}

/// The JWT `rooms` claim: room names, where a trailing `*` grants every room starting
/// with what precedes it (docs/PROTOCOL.md, "Identity and auth").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant {
    patterns: Box<[Box<str>]>,
}

impl RoomGrant {
    /// A grant of these patterns.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        RoomGrant {
            patterns: patterns.iter().map(|p| Box::from(p.as_ref())).collect(),
        }
    }

    /// Whether `room` may be joined.
    pub fn allows(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => **p == *room,
        })
    }
}

/// Why a request was not authenticated (all answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token (or, in dev mode, no `uid`).
    #[error("missing credentials")]
    Missing,
    /// Bad signature, malformed, wrong algorithm, or no usable `sub`.
    #[error("invalid token")]
    Invalid,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf` (RFC 7519 §4.1.5), beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// An ID longer than [`MAX_ID_LEN`].
    #[error("ID too long")]
    TooLong,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Absent: any room. A claim that is not a list of strings makes the token invalid.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    /// Rooms joined at connect. A claim that is not a list of strings, or names a room
    /// that is empty or longer than [`MAX_ID_LEN`], makes the token invalid.
    #[serde(default)]
    subs: Vec<String>,
}

/// Most rooms a `subs` claim may name (a longer list makes the token invalid): as many
/// as one connection may be in.
pub const MAX_SUBS: usize = 256;

/// Authenticates an upgrade request.
pub fn authenticate(
    mode: &AuthMode,
    req: &Request,
    now: SystemTime,
) -> Result<Identity, AuthError> {
    let device = req
        .query_param("device")
        .map(|d| d.into_owned())
        .filter(|d| !d.is_empty());
    if device.as_ref().is_some_and(|d| d.len() > MAX_ID_LEN) {
        return Err(AuthError::TooLong);
    }
    let identity = match mode {
        AuthMode::Dev => {
            let uid = req
                .query_param("uid")
                .filter(|u| !u.is_empty())
                .ok_or(AuthError::Missing)?;
            Identity {
                uid: uid.into_owned(),
                device,
                expires_in: None,
                rooms: None,
                subs: Vec::new(),
            }
        }
        AuthMode::Jwt(jwt) => {
            let token = bearer(req).ok_or(AuthError::Missing)?;
            let mut validation = Validation::new(jwt.algorithm);
            validation.leeway = jwt.leeway.as_secs();
            validation.validate_exp = true;
            // A token issued for later is refused until then, with the same leeway for
            // clock skew as `exp`.
            validation.validate_nbf = true;
            let data =
                decode::<Claims>(&token, &jwt.key, &validation).map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::Invalid,
                })?;
            if data.claims.sub.is_empty() {
                return Err(AuthError::Invalid);
            }
            let subs = &data.claims.subs;
            if subs.len() > MAX_SUBS || subs.iter().any(|r| r.is_empty() || r.len() > MAX_ID_LEN) {
                return Err(AuthError::Invalid);
            }
            let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let valid_until = data.claims.exp.saturating_add(jwt.leeway.as_secs());
            Identity {
                uid: data.claims.sub,
                device,
                expires_in: Some(Duration::from_secs(valid_until.saturating_sub(now_secs))),
                rooms: data.claims.rooms.map(|r| RoomGrant::new(&r)),
                subs: data.claims.subs,
            }
        }
    };
    if identity.uid.len() > MAX_ID_LEN {
        return Err(AuthError::TooLong);
    }
    Ok(identity)
}

/// The token from `Authorization: Bearer`, else from `?token=`.
fn bearer(req: &Request) -> Option<String> {
    if let Some(h) = req.header("authorization") {
        let h = std::str::from_utf8(h).ok()?.trim();
        let (scheme, token) = h.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim().to_owned());
        }
    }
    req.query_param("token")
        .filter(|t| !t.is_empty())
        .map(|t| t.into_owned())
}

#[cfg(test)]
mod nbf_tests {
    use super::*;
    use bytes::Bytes;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn request(claims: serde_json::Value) -> Request {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap_or_default();
        let head = format!("GET /ws?token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
        Request::parse(Bytes::from(head), Bytes::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_token_before_its_nbf_is_refused_beyond_the_leeway() {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mode = AuthMode::Jwt(JwtAuth::hs256(b"k").with_leeway(Duration::from_secs(30)));
        let auth = |nbf: u64| {
            authenticate(
                &mode,
                &request(serde_json::json!({"sub": "a", "exp": secs + 3600, "nbf": nbf})),
                now,
            )
        };
        assert_eq!(auth(secs + 3600), Err(AuthError::NotYetValid));
        assert_eq!(auth(secs + 120), Err(AuthError::NotYetValid));
        // Within the leeway, now, or in the past: valid.
        for nbf in [secs + 10, secs, secs - 3600] {
            assert_eq!(auth(nbf).map(|i| i.uid), Ok("a".to_owned()), "nbf {nbf}");
        }
        // No nbf: valid, as before.
        let none = request(serde_json::json!({"sub": "a", "exp": secs + 3600}));
        assert!(authenticate(&mode, &none, now).is_ok());
    }
}

#[cfg(test)]
mod room_grant_tests {
    use super::RoomGrant;

    #[test]
    fn names_and_prefixes() {
        let g = RoomGrant::new(&["lobby", "team-*", "*ops"]);
        assert!(g.allows("lobby") && !g.allows("lobby2") && !g.allows("lobb"));
        assert!(g.allows("team-") && g.allows("team-42") && !g.allows("team"));
        assert!(!g.allows("devops"), "only a trailing * is a wildcard");
        assert!(g.allows("*ops"), "elsewhere it is a plain character");
        assert!(!RoomGrant::new::<&str>(&[]).allows("lobby"));
        assert!(RoomGrant::new(&["*"]).allows("anything"));
    }
}
