//! Where the state lives: a SQLite file (one machine) or a PostgreSQL URL
//! (several daemons). The URL may carry a password: it is printed with the
//! password replaced by `***`, in `Display` and `Debug` alike.

use std::fmt;

/// A `postgres://` URL whose password never reaches a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks that `url` is a PostgreSQL URL (`postgres://` or `postgresql://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("not a URL like postgres://user@host/db".into());
        };
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(format!(
                "{scheme}:// is not supported: only postgres:// (leave it out for the SQLite state file)"
            ));
        }
        if rest.is_empty() || url.chars().any(char::is_whitespace) {
            return Err("the URL has no host, or has blanks in it".into());
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL itself, password included — for connecting, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password in the URL (user info or `password=` parameter), if any.
    pub fn password(&self) -> Option<&str> {
        let (_, rest) = self.0.split_once("://")?;
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            return Some(password);
        }
        let (_, query) = rest.split_once('?')?;
        query.split('&').find_map(|kv| kv.strip_prefix("password="))
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self.password() {
            Some(p) if !p.is_empty() => self.0.replace(p, "***"),
            _ => self.0.clone(),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_printed() {
        for (url, shown) in [
            (
                "postgres://sk:s3cr3t-pw@db.internal:5432/spotkeeper",
                "postgres://sk:***@db.internal:5432/spotkeeper",
            ),
            (
                "postgresql://sk@db/sk?password=s3cr3t-pw&sslmode=require",
                "postgresql://sk@db/sk?password=***&sslmode=require",
            ),
            ("postgres://sk@db/sk", "postgres://sk@db/sk"),
        ] {
            let u = DatabaseUrl::parse(url).expect("parses");
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("s3cr3t"));
            assert_eq!(u.expose(), url);
        }
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        for (url, says) in [
            ("mysql://db/x", "mysql:// is not supported"),
            ("db.internal/x", "not a URL"),
            ("postgres://", "no host"),
        ] {
            let e = DatabaseUrl::parse(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
