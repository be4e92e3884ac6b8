//! Credential redaction: every message leaving the engine passes through here.

/// Replaces the `user:password@` part of any connection string inside `text` with
/// `<redacted>@`. Works on whole messages, since driver errors may quote the URI.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_at) = rest.find("mongodb") {
        let after_scheme = &rest[scheme_at..];
        let Some(sep) = after_scheme.find("://") else {
            break;
        };
        // Only "mongodb://" and "mongodb+srv://" are schemes; anything else is prose.
        let scheme = &after_scheme[..sep];
        if scheme != "mongodb" && scheme != "mongodb+srv" {
            out.push_str(&rest[..scheme_at + sep + 3]);
            rest = &after_scheme[sep + 3..];
            continue;
        }
        let authority_start = scheme_at + sep + 3;
        out.push_str(&rest[..authority_start]);
        let authority = &rest[authority_start..];
        let end = authority
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(authority.len());
        let host_part = &authority[..end];
        match host_part.rfind('@') {
            Some(at) => {
                out.push_str("<redacted>@");
                out.push_str(&host_part[at + 1..]);
            }
            None => out.push_str(host_part),
        }
        rest = &authority[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_user_and_password() {
        assert_eq!(
            redact("failed: mongodb://alice:s3cret@db1:27017,db2/x?authSource=admin"),
            "failed: mongodb://<redacted>@db1:27017,db2/x?authSource=admin"
        );
        assert_eq!(
            redact("mongodb+srv://bob:p%40ss@cluster0.example.net"),
            "mongodb+srv://<redacted>@cluster0.example.net"
        );
    }

    #[test]
    fn leaves_other_text_alone() {
        assert_eq!(
            redact("mongodb://127.0.0.1:1/?directConnection=true"),
            "mongodb://127.0.0.1:1/?directConnection=true"
        );
        assert_eq!(redact("no uri here"), "no uri here");
        assert_eq!(redact("mongodbx://a:b@c"), "mongodbx://a:b@c");
    }
}
