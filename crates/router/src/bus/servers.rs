//! The NATS servers a node may connect to: those named in `--nats` (comma-separated
//! `nats://` or `tls://` URLs, with an optional `token@` or `user:pass@`) and those the
//! servers announce in `INFO connect_urls` (the other members of their cluster), tried
//! in turn.

use std::fmt;

/// The default NATS client port.
const DEFAULT_PORT: u16 = 4222;
/// Servers remembered at most (a server announcing thousands of URLs cannot grow it).
const MAX_SERVERS: usize = 64;

/// Credentials sent in `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Auth {
    Token(String),
    UserPass(String, String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never in logs.
        match self {
            Auth::Token(_) => f.write_str("Token(..)"),
            Auth::UserPass(u, _) => write!(f, "UserPass({u:?}, ..)"),
        }
    }
}

/// One server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub(super) host: String,
    pub(super) port: u16,
    /// `tls://`: TLS whatever the server's INFO says.
    pub(super) tls: bool,
    pub(super) auth: Option<Auth>,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses one URL: `[nats://|tls://][token@|user:pass@]host[:port]`.
pub(super) fn parse_url(url: &str) -> Result<Server, String> {
    let url = url.trim();
    let (tls, rest) = if let Some(r) = url.strip_prefix("tls://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("nats://") {
        (false, r)
    } else if url.contains("://") {
        return Err(format!(
            "NATS URL {url:?}: the scheme must be nats:// or tls://"
        ));
    } else {
        (false, url)
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let auth = match userinfo.split_once(':') {
                Some((u, p)) => Auth::UserPass(percent_decode(u)?, percent_decode(p)?),
                None => Auth::Token(percent_decode(userinfo)?),
            };
            (Some(auth), hp)
        }
        None => (None, rest),
    };
    let (host, port) = split_host_port(hostport)
        .ok_or_else(|| format!("NATS URL {url:?}: expected host[:port]"))?;
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(format!("NATS URL {url:?}: bad host"));
    }
    Ok(Server {
        host: host.to_string(),
        port,
        tls,
        auth,
    })
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, p.parse().ok()?)),
            None if after.is_empty() => Some((host, DEFAULT_PORT)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((s, DEFAULT_PORT)),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("NATS URL: bad percent escape in the credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "NATS URL: credentials not UTF-8".to_string())
}

/// The servers, and which to try next.
#[derive(Debug)]
pub(super) struct Pool {
    servers: Vec<Server>,
    next: usize,
}

impl Pool {
    /// The servers of a comma-separated list.
    pub(super) fn parse(urls: &str) -> Result<Pool, String> {
        let servers = urls
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(parse_url)
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err("no NATS server URL given".into());
        }
        Ok(Pool { servers, next: 0 })
    }

    /// The server to try next (each in turn).
    pub(super) fn next(&mut self) -> Server {
        let s = self.servers[self.next % self.servers.len()].clone();
        self.next = (self.next + 1) % self.servers.len();
        s
    }

    /// How many servers are known.
    pub(super) fn len(&self) -> usize {
        self.servers.len()
    }

    /// Adds the `host:port` addresses a server announced, with the scheme and credentials
    /// of the first configured server (one cluster, one set of credentials); returns how
    /// many were new.
    pub(super) fn discovered(&mut self, urls: &[String]) -> usize {
        let template = self.servers[0].clone();
        let mut added = 0;
        for u in urls {
            if self.servers.len() >= MAX_SERVERS {
                break;
            }
            let Some((host, port)) = split_host_port(u.trim()) else {
                continue;
            };
            if host.is_empty()
                || self
                    .servers
                    .iter()
                    .any(|s| s.host == host && s.port == port)
            {
                continue;
            }
            self.servers.push(Server {
                host: host.to_string(),
                port,
                ..template.clone()
            });
            added += 1;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_and_schemes() {
        let s = parse_url("nats://127.0.0.1:4333").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls, s.auth),
            ("127.0.0.1", 4333, false, None)
        );
        let s = parse_url("tls://secret@nats.example").unwrap();
        assert_eq!(s.port, 4222);
        assert!(s.tls);
        assert_eq!(s.auth, Some(Auth::Token("secret".into())));
        let s = parse_url("nats://bob:p%40ss@[::1]:5000/").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 5000));
        assert_eq!(s.auth, Some(Auth::UserPass("bob".into(), "p@ss".into())));
        assert_eq!(s.to_string(), "nats://[::1]:5000");
        assert!(!format!("{:?}", s.auth).contains("p@ss"));
        assert_eq!(parse_url("localhost").unwrap().port, 4222);
        for bad in [
            "http://x",
            "nats://x:y",
            "nats://:4222",
            "nats://a b:1",
            "nats://u:%zz@h",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pool_rotates_and_learns_bounded() {
        let mut p = Pool::parse("nats://t@a:1, b:2").unwrap();
        assert!(Pool::parse(" , ").is_err());
        assert_eq!(p.next().host, "a");
        assert_eq!(p.next().host, "b");
        assert_eq!(p.next().host, "a");
        assert_eq!(
            p.discovered(&["a:1".into(), "c:3".into(), "junk:x".into()]),
            1
        );
        assert_eq!(p.len(), 3);
        let c = (0..3).map(|_| p.next()).find(|s| s.host == "c").unwrap();
        assert_eq!(c.auth, Some(Auth::Token("t".into())));
        let many: Vec<String> = (0..1000).map(|i| format!("h{i}:1")).collect();
        p.discovered(&many);
        assert_eq!(p.len(), MAX_SERVERS);
    }
}
