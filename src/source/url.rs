//! `--nats.url` without its secrets. A URL may carry credentials
//! (`nats://user:password@host`, `nats://token@host`, as the NATS clients
//! accept); the NATS client logs the URLs it dials, so they are taken out
//! here and handed to it as options. The URLs kept hold none, and whatever
//! prints them (logs, errors, `simulate`) prints no secret.

/// Credentials as a URL's user part gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword(String, String),
    /// A user part without a password: a token, as NATS reads it.
    Token(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Servers {
    /// The URLs without credentials.
    pub urls: Vec<String>,
    /// What they carried: the same in every URL that has any.
    pub credentials: Option<Credentials>,
}

impl Servers {
    /// A comma-separated list. Errors never quote a URL's credentials.
    pub fn parse(list: &str) -> Result<Servers, String> {
        let mut urls = Vec::new();
        let mut credentials = None;
        for url in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (bare, found) = split(url);
            if bare.contains('@') {
                // A `/`, `?` or `#` in the password ended the host part
                // early: the URL would keep the password.
                return Err("a URL's credentials hold `/`, `?`, `#` or `@`: percent-encode them (%2F, %3F, %23, %40)".into());
            }
            if let Some(found) = found {
                if credentials.as_ref().is_some_and(|c| *c != found) {
                    return Err(
                        "the URLs carry different credentials; NATS uses one set for every server"
                            .into(),
                    );
                }
                credentials = Some(found);
            }
            urls.push(bare);
        }
        if urls.is_empty() {
            return Err("no server URL given".into());
        }
        Ok(Servers { urls, credentials })
    }
}

/// The URL without its user part, and what that part held.
fn split(url: &str) -> (String, Option<Credentials>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let bare = match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Credentials::UserPassword(decode(user), decode(password)),
        None => Credentials::Token(decode(userinfo)),
    };
    (bare, Some(credentials))
}

/// Percent-decoding of a URL's user part (a password may hold `@` or `:`
/// written as %40, %3A).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls() {
        let s = Servers::parse("nats://u:p%40ss@a:4222, nats://u:p%40ss@b:4222/x").unwrap();
        assert_eq!(s.urls, ["nats://a:4222", "nats://b:4222/x"]);
        assert_eq!(
            s.credentials,
            Some(Credentials::UserPassword("u".into(), "p@ss".into()))
        );
        let t = Servers::parse("tok@127.0.0.1:4222").unwrap();
        assert_eq!(t.urls, ["127.0.0.1:4222"]);
        assert_eq!(t.credentials, Some(Credentials::Token("tok".into())));
        let plain = Servers::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((plain.urls.len(), plain.credentials), (1, None));
        let e = Servers::parse("nats://u:pw1@a,nats://u:pw2@b").unwrap_err();
        assert!(!e.contains("pw1") && !e.contains("pw2"), "{e}");
        assert!(Servers::parse(" , ").is_err());
        let slash = Servers::parse("nats://u:pa/ss@h:4222").unwrap_err();
        assert!(
            slash.contains("percent-encode") && !slash.contains("pa/ss"),
            "{slash}"
        );
    }
}
