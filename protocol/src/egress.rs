//! Which outbound connections an environment's sandboxes may open.
//!
//! A sandbox has no network by default. An environment may give it the
//! host's network ([`Network::Unrestricted`]) or a list of hosts
//! ([`Network::Allowlist`]). Each allowlist entry is one of:
//! - `host` or `host:port`, a DNS name matched case-insensitively;
//! - `*.domain` or `*.domain:port`, any name under `domain` (not `domain`
//!   itself: list both when both are meant);
//! - an IPv4 address or a bracketed IPv6 address, with an optional port
//!   (`10.0.0.7`, `[2001:db8::1]:443`);
//! - any of these after `http://` or `https://` (as the Managed Agents API
//!   writes them), which without a port means port 80 or 443 only.
//!
//! Without a port an entry allows every port. This module only parses and
//! matches; the sandbox drivers enforce it (see `actors::sandbox::egress`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::limits;

/// The network a sandbox gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Network {
    /// No network at all: only the sandbox's own loopback.
    #[default]
    None,
    /// The host's network, unfiltered.
    Unrestricted,
    /// Only connections to these hosts (entries as described in the module
    /// docs), made through the sandbox's egress proxy.
    Allowlist(Vec<String>),
}

impl Network {
    /// Checks every allowlist entry and the number of entries.
    pub fn validate(&self) -> Result<(), String> {
        let Network::Allowlist(entries) = self else { return Ok(()) };
        if entries.is_empty() {
            return Err("an allowlist names at least one host (use no network to allow none)".to_owned());
        }
        Allowlist::parse(entries).map(|_| ())
    }

    pub fn is_unrestricted(&self) -> bool {
        matches!(self, Network::Unrestricted)
    }

    /// A short description for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            Network::None => "none".to_owned(),
            Network::Unrestricted => "unrestricted".to_owned(),
            Network::Allowlist(entries) => format!("allow {}", entries.join(",")),
        }
    }
}

/// A parsed allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    patterns: Vec<HostPattern>,
}

impl Allowlist {
    /// Parses every entry; the first bad one is the error, quoted.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, String> {
        if entries.len() > limits::ALLOWED_HOSTS_MAX {
            return Err(format!("an allowlist has at most {} entries", limits::ALLOWED_HOSTS_MAX));
        }
        let patterns = entries
            .iter()
            .map(|entry| HostPattern::parse(entry.as_ref()).map_err(|reason| format!("{:?}: {reason}", entry.as_ref())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist { patterns })
    }

    /// Whether a connection to `host` (a name, or an address literal, as a
    /// client wrote it) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let Some(host) = Host::parse(host) else { return false };
        self.patterns.iter().any(|pattern| pattern.matches(&host, port))
    }

    /// Whether `address` itself is listed (as an address literal). Names that
    /// resolve to loopback or link-local addresses are refused unless the
    /// address is listed like this.
    pub fn lists_address(&self, address: IpAddr) -> bool {
        self.patterns.iter().any(|pattern| pattern.host == HostMatch::Address(address))
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    host: HostMatch,
    /// `None`: every port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// This name, lowercase.
    Name(String),
    /// Any name ending in `.` + this suffix, lowercase.
    Under(String),
    Address(IpAddr),
}

/// A host as a client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Address(IpAddr),
}

impl Host {
    fn parse(text: &str) -> Option<Host> {
        let bare = text.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(text);
        if let Ok(address) = bare.parse::<IpAddr>() {
            return Some(Host::Address(address));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        is_dns_name(&name).then_some(Host::Name(name))
    }
}

impl HostPattern {
    fn parse(entry: &str) -> Result<HostPattern, String> {
        let entry = entry.trim();
        let (rest, scheme_port) = if let Some(rest) = entry.strip_prefix("https://") {
            (rest, Some(443))
        } else if let Some(rest) = entry.strip_prefix("http://") {
            (rest, Some(80))
        } else if entry.contains("://") {
            return Err("only http:// and https:// may prefix a host".to_owned());
        } else {
            (entry, None)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err("an entry names a host, not a path".to_owned());
        }
        let (host, port) = split_port(authority)?;
        let port = port.or(scheme_port);
        if host.is_empty() {
            return Err("the host is empty".to_owned());
        }
        let host = if let Some(domain) = host.strip_prefix("*.") {
            match Host::parse(domain) {
                Some(Host::Name(domain)) => HostMatch::Under(domain),
                _ => return Err(format!("{domain:?} after `*.` is not a DNS name")),
            }
        } else {
            match Host::parse(host) {
                Some(Host::Name(name)) => HostMatch::Name(name),
                Some(Host::Address(address)) => HostMatch::Address(address),
                None => return Err(format!("{host:?} is neither a DNS name nor an IP address")),
            }
        };
        Ok(HostPattern { host, port })
    }

    fn matches(&self, host: &Host, port: u16) -> bool {
        if self.port.is_some_and(|allowed| allowed != port) {
            return false;
        }
        match (&self.host, host) {
            (HostMatch::Name(allowed), Host::Name(name)) => allowed == name,
            (HostMatch::Under(domain), Host::Name(name)) => {
                name.strip_suffix(domain.as_str()).is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
            }
            (HostMatch::Address(allowed), Host::Address(address)) => allowed == address,
            _ => false,
        }
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("an IPv6 address lacks its closing `]`")?;
        (inside, after.strip_prefix(':'))
    } else if authority.matches(':').count() > 1 {
        // An unbracketed IPv6 address: no port.
        (authority, None)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(format!("port {text:?} is not 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 bytes, at
/// most 253 bytes in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist(entries: &[&str]) -> Allowlist {
        Allowlist::parse(entries).unwrap()
    }

    #[test]
    fn names_match_exactly_and_without_case() {
        let list = allowlist(&["api.example.com"]);
        assert!(list.allows("api.example.com", 443));
        assert!(list.allows("API.Example.COM.", 80));
        assert!(!list.allows("example.com", 443));
        assert!(!list.allows("evil-api.example.com", 443));
        assert!(!list.allows("api.example.com.evil.net", 443));
    }

    #[test]
    fn wildcards_match_names_below_the_domain_only() {
        let list = allowlist(&["*.example.com"]);
        assert!(list.allows("a.example.com", 443));
        assert!(list.allows("a.b.example.com", 443));
        assert!(!list.allows("example.com", 443));
        assert!(!list.allows("badexample.com", 443));
    }

    #[test]
    fn ports_and_schemes_narrow_an_entry() {
        let list = allowlist(&["git.example.com:22", "https://api.example.com", "http://plain.example.com/"]);
        assert!(list.allows("git.example.com", 22));
        assert!(!list.allows("git.example.com", 443));
        assert!(list.allows("api.example.com", 443));
        assert!(!list.allows("api.example.com", 80));
        assert!(list.allows("plain.example.com", 80));
        assert!(!list.allows("plain.example.com", 443));
    }

    #[test]
    fn addresses_match_only_as_addresses() {
        let list = allowlist(&["127.0.0.1:8080", "[::1]:9", "10.0.0.7"]);
        assert!(list.allows("127.0.0.1", 8080));
        assert!(!list.allows("127.0.0.1", 8081));
        assert!(!list.allows("localhost", 8080));
        assert!(list.allows("[::1]", 9));
        assert!(list.allows("::1", 9));
        assert!(list.allows("10.0.0.7", 5432));
        assert!(list.lists_address("127.0.0.1".parse().unwrap()));
        assert!(!list.lists_address("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (entry, reason) in [
            ("", "empty"),
            ("ftp://example.com", "only http"),
            ("example.com/path", "not a path"),
            ("example.com:0", "port"),
            ("example.com:99999", "port"),
            ("exa mple.com", "neither"),
            ("*.", "after `*.`"),
            ("[::1", "closing"),
        ] {
            let error = Allowlist::parse(&[entry]).expect_err(entry);
            assert!(error.contains(reason), "{entry}: {error}");
        }
        assert!(Network::Allowlist(vec![]).validate().is_err());
        let too_many = vec!["example.com".to_owned(); limits::ALLOWED_HOSTS_MAX + 1];
        assert!(Network::Allowlist(too_many).validate().is_err());
        assert!(Network::None.validate().is_ok());
    }
}
