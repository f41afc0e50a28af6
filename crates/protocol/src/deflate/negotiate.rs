//! Choosing permessage-deflate parameters from a client's offers (RFC 7692 §5, §7.1).

/// What the server is willing to agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Accept permessage-deflate offers at all.
    pub enabled: bool,
    /// Compress every message from an empty window. On by default: see the module docs.
    pub server_no_context_takeover: bool,
    /// Ask clients to compress every message from an empty window. On by default.
    pub client_no_context_takeover: bool,
    /// Largest window the server compresses with (9..=15).
    pub server_max_window_bits: u8,
    /// Window the server asks clients to stay within, when they allow it (9..=15).
    pub client_max_window_bits: u8,
    /// zlib compression level (0..=9); 1 favours throughput, which a push gateway needs
    /// more than the last few percent of ratio.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
        }
    }
}

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// The server's compression window.
    pub server_max_window_bits: u8,
    /// The largest window the client may use (what the server must inflate with).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value that states these parameters in a response.
    /// `client_max_window_bits` is named only when the client offered it (§7.1.2.2).
    fn response(&self, client_offered_window: bool) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if client_offered_window && self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// Picks the first acceptable permessage-deflate offer among the values of the request's
/// `Sec-WebSocket-Extensions` headers, in order. Returns the agreed parameters and the
/// response header value, or `None` to answer without the extension. Offers with unknown
/// or repeated parameters, or values out of range, are declined as RFC 7692 §7.1 requires;
/// so are requests for a server window below 9 bits, which zlib cannot produce in raw mode.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a [u8]>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    if !config.enabled {
        return None;
    }
    for value in header_values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for offer in value.split(',') {
            if let Some(agreed) = accept_offer(offer, config) {
                return Some(agreed);
            }
        }
    }
    None
}

fn accept_offer(offer: &str, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_nct = config.server_no_context_takeover;
    let mut server_bits = config.server_max_window_bits.clamp(9, 15);
    let mut client_bits = 15u8;
    let mut client_offered_window = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            0 | 1 if value.is_some() => return None,
            0 => server_nct = true,
            // The client says it will not take over context; nothing for us to keep.
            1 => {}
            2 => server_bits = server_bits.min(window_bits(value?)?),
            _ => {
                client_offered_window = true;
                if let Some(v) = value {
                    client_bits = window_bits(v)?;
                }
                client_bits = client_bits.min(config.client_max_window_bits.clamp(9, 15));
            }
        }
    }
    if server_bits < 9 {
        return None;
    }
    let params = DeflateParams {
        server_no_context_takeover: server_nct,
        client_no_context_takeover: config.client_no_context_takeover || seen[1],
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    };
    let response = params.response(client_offered_window);
    Some((params, response))
}

/// A window-bits value: 8..=15, no leading zeros or signs (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(offers: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate(
            offers.iter().map(|s| s.as_bytes()),
            &DeflateConfig::default(),
        )
    }

    #[test]
    fn browser_offer_gets_no_context_takeover_both_ways() {
        let (p, resp) = run(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 15);
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn window_bits_are_honoured_and_bounded() {
        let (p, resp) =
            run(&["permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\""])
                .unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 12)
        );
        assert!(
            resp.contains("server_max_window_bits=10")
                && resp.contains("client_max_window_bits=12")
        );
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(run(&[bad]), None, "{bad}");
            assert!(
                run(&[bad, "permessage-deflate"]).is_some(),
                "{bad} then a good offer"
            );
        }
        assert!(run(&["x-foo, permessage-deflate"]).is_some());
    }

    #[test]
    fn disabled_declines_everything() {
        let cfg = DeflateConfig {
            enabled: false,
            ..DeflateConfig::default()
        };
        assert_eq!(negotiate([b"permessage-deflate".as_slice()], &cfg), None);
    }
}
