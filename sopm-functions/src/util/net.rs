//! Addresses: `util.validate_email`, `util.validate_url`, `util.parse_url`,
//! `util.ip_info`, `util.cidr_contains`.

use std::net::IpAddr;

use serde_json::{json, Map, Value};
use sopm_core::{Error, Result};
use url::Url;

use crate::schema::Args;

/// RFC 5321 limits, in bytes.
const MAX_EMAIL: usize = 254;
const MAX_LOCAL_PART: usize = 64;
const MAX_LABEL: usize = 63;

/// `{valid: true}`, or `{valid: false, reason}`.
fn verdict(problem: Option<String>) -> Value {
    match problem {
        None => json!({"valid": true}),
        Some(reason) => json!({"valid": false, "reason": reason}),
    }
}

pub(super) fn validate_email(args: &Args<'_>) -> Result<Value> {
    Ok(verdict(
        email_problem(args.str("email")?).map(str::to_string),
    ))
}

/// What is wrong with an address, if anything. Accepts the common "dot-atom" form
/// `local@domain` (RFC 5322), with non-ASCII letters allowed (RFC 6531); quoted
/// local parts, comments and `[ip]` domains are refused as rare and mostly rejected
/// by mail providers anyway.
fn email_problem(email: &str) -> Option<&'static str> {
    if email.is_empty() {
        return Some("the address is empty");
    }
    if email.len() > MAX_EMAIL {
        return Some("the address is longer than 254 bytes");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Some("the address has no '@'");
    };
    if domain.contains('@') {
        return Some("the address has more than one '@'");
    }
    if local.is_empty() {
        return Some("the local part (before '@') is empty");
    }
    if local.len() > MAX_LOCAL_PART {
        return Some("the local part (before '@') is longer than 64 bytes");
    }
    if local.split('.').any(str::is_empty) {
        return Some("the local part starts or ends with a dot, or has two dots in a row");
    }
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c);
    if !local.chars().all(atext) {
        return Some("the local part contains a character that is not allowed");
    }
    domain_problem(domain)
}

/// What is wrong with a mail domain: dot-separated labels of letters, digits and
/// inner hyphens, at least two labels, and a top-level label that is not all digits.
fn domain_problem(domain: &str) -> Option<&'static str> {
    if domain.is_empty() {
        return Some("the domain (after '@') is empty");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Some("the domain needs at least one dot (such as example.com)");
    }
    for label in &labels {
        if label.is_empty() {
            return Some("the domain starts or ends with a dot, or has two dots in a row");
        }
        if label.len() > MAX_LABEL {
            return Some("a domain label is longer than 63 bytes");
        }
        if !label.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return Some("the domain contains a character that is not allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a domain label starts or ends with a hyphen");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("the top-level domain is all digits");
    }
    None
}

pub(super) fn validate_url(args: &Args<'_>) -> Result<Value> {
    Ok(verdict(
        Url::parse(args.str("url")?).err().map(|e| e.to_string()),
    ))
}

pub(super) fn parse_url(args: &Args<'_>) -> Result<Value> {
    let url = Url::parse(args.str("url")?)
        .map_err(|e| Error::invalid(format!("field 'url': not an absolute URL ({e})")))?;
    // Collecting into a map keeps the last value of a repeated parameter.
    let params: Map<String, Value> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    Ok(json!({
        "scheme": url.scheme(),
        "host": url.host_str(),
        "port": url.port_or_known_default(),
        "path": url.path(),
        "query": url.query(),
        "fragment": url.fragment(),
        "params": params,
    }))
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr> {
    text.trim().parse().map_err(|_| {
        Error::invalid(format!(
            "field '{field}': '{}' is not an IPv4 or IPv6 address",
            sopm_core::types::truncate_for_message(text)
        ))
    })
}

/// Private (RFC 1918 for IPv4, unique local fc00::/7 for IPv6), loopback, multicast
/// and unspecified. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged by the
/// IPv4 address it carries; `version` stays 6.
pub(super) fn ip_info(args: &Args<'_>) -> Result<Value> {
    let ip = parse_ip("ip", args.str("ip")?)?;
    let version = if ip.is_ipv4() { 4 } else { 6 };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let private = match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.octets()[0] & 0xfe == 0xfc,
    };
    Ok(json!({
        "version": version,
        "loopback": ip.is_loopback(),
        "private": private,
        "multicast": ip.is_multicast(),
        "unspecified": ip.is_unspecified(),
    }))
}

/// Whether `ip` is in the block `address/prefix`. The block's host bits may be set
/// (10.1.2.3/8 is 10.0.0.0/8); an address of the other IP version is never inside.
pub(super) fn cidr_contains(args: &Args<'_>) -> Result<Value> {
    let cidr = args.str("cidr")?;
    let (network, prefix) = cidr.split_once('/').ok_or_else(|| {
        Error::invalid("field 'cidr': expected address/prefix, such as 10.0.0.0/8 or fc00::/7")
    })?;
    let network = parse_ip("cidr", network)?;
    let bits = if network.is_ipv4() { 32 } else { 128 };
    let prefix = Some(prefix.trim())
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p <= bits)
        .ok_or_else(|| {
            Error::invalid(format!(
                "field 'cidr': the prefix length must be an integer from 0 to {bits}"
            ))
        })?;
    let ip = parse_ip("ip", args.str("ip")?)?;
    let inside = match (network, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            same_prefix(u32::from(n).into(), u32::from(a).into(), bits - prefix)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(n.into(), a.into(), bits - prefix),
        _ => false,
    };
    Ok(Value::Bool(inside))
}

/// Whether `a` and `b` agree on every bit above the lowest `host_bits`.
fn same_prefix(a: u128, b: u128, host_bits: u32) -> bool {
    (a ^ b).checked_shr(host_bits).unwrap_or(0) == 0
}

#[cfg(test)]
mod tests {
    use crate::testing::{call, code};
    use serde_json::json;

    async fn email(address: &str) -> serde_json::Value {
        call("util.validate_email", json!({ "email": address }))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn valid_emails() {
        for good in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "o'neil_x-y@example-domain.com",
            "user@xn--bcher-kva.example",
            "josé@exämple.de",
            &format!("{}@example.com", "a".repeat(64)),
            &format!("x@{}.com", "d".repeat(63)),
        ] {
            assert_eq!(email(good).await, json!({"valid": true}), "{good}");
        }
    }

    #[tokio::test]
    async fn invalid_emails_say_why() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let long_label = format!("x@{}.com", "d".repeat(64));
        let too_long = format!("{}@{}.com", "a".repeat(60), "b.".repeat(100));
        for (bad, why) in [
            ("", "empty"),
            ("plainaddress", "no '@'"),
            ("a@b@c.com", "more than one '@'"),
            ("@example.com", "local part"),
            (".a@example.com", "dot"),
            ("a.@example.com", "dot"),
            ("a..b@example.com", "dot"),
            ("a b@example.com", "not allowed"),
            ("\"quoted\"@example.com", "not allowed"),
            ("a@", "domain"),
            ("a@localhost", "at least one dot"),
            ("a@example..com", "dot"),
            ("a@.example.com", "dot"),
            ("a@-example.com", "hyphen"),
            ("a@example-.com", "hyphen"),
            ("a@exa_mple.com", "not allowed"),
            ("a@[127.0.0.1]", "not allowed"),
            ("a@1.2.3.4", "digits"),
            (&long_local, "64"),
            (&long_label, "63"),
            (&too_long, "254"),
        ] {
            let out = email(bad).await;
            assert_eq!(out["valid"], json!(false), "{bad}");
            let reason = out["reason"].as_str().unwrap();
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        assert_eq!(
            code("util.validate_email", json!({"email": null})).await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn validate_url_cases() {
        for good in [
            "https://example.com",
            "http://user:pw@[::1]:8080/a/b?c=d#e",
            "mailto:someone@example.com",
            "file:///etc/hosts",
            "https://例え.jp/パス",
        ] {
            let out = call("util.validate_url", json!({ "url": good }))
                .await
                .unwrap();
            assert_eq!(out, json!({"valid": true}), "{good}");
        }
        for (bad, why) in [
            ("", "relative URL without a base"),
            ("/just/a/path", "relative URL without a base"),
            ("http://", "empty host"),
            ("https://exa mple.com", "invalid international domain name"),
            ("http://example.com:99999", "invalid port number"),
            ("http://[::1", "invalid IPv6 address"),
        ] {
            let out = call("util.validate_url", json!({ "url": bad }))
                .await
                .unwrap();
            assert_eq!(out, json!({"valid": false, "reason": why}), "{bad}");
        }
    }

    #[tokio::test]
    async fn parse_url_parts() {
        assert_eq!(
            call(
                "util.parse_url",
                json!({"url": "HTTP://Example.COM/a%20b/?x=1&y=caf%C3%A9&x=2&flag#frag"})
            )
            .await
            .unwrap(),
            json!({
                "scheme": "http",
                "host": "example.com",
                "port": 80,
                "path": "/a%20b/",
                "query": "x=1&y=caf%C3%A9&x=2&flag",
                "fragment": "frag",
                "params": {"x": "2", "y": "café", "flag": ""}
            })
        );
        assert_eq!(
            call("util.parse_url", json!({"url": "mailto:a@b.c"}))
                .await
                .unwrap(),
            json!({
                "scheme": "mailto",
                "host": null,
                "port": null,
                "path": "a@b.c",
                "query": null,
                "fragment": null,
                "params": {}
            })
        );
        let v6 = call(
            "util.parse_url",
            json!({"url": "https://[2001:db8::1]:8443"}),
        )
        .await
        .unwrap();
        assert_eq!(v6["host"], json!("[2001:db8::1]"));
        assert_eq!(v6["port"], json!(8443));
        assert_eq!(v6["path"], json!("/"));
        for bad in ["", "example.com/path", "http://exa mple.com"] {
            assert_eq!(
                code("util.parse_url", json!({ "url": bad })).await,
                "invalid_input"
            );
        }
    }

    #[tokio::test]
    async fn parse_url_at_the_largest_input() {
        // Close to the 64 KiB cap: 7,000 parameters, all kept.
        let query: Vec<String> = (0..7_000).map(|i| format!("k{i}=v")).collect();
        let url = format!("https://example.com/?{}", query.join("&"));
        assert!(url.len() <= super::super::MAX_URL_BYTES);
        let out = call("util.parse_url", json!({ "url": url })).await.unwrap();
        assert_eq!(out["params"].as_object().unwrap().len(), 7_000);
        assert_eq!(out["params"]["k6999"], json!("v"));
        let over = format!(
            "https://example.com/{}",
            "a".repeat(super::super::MAX_URL_BYTES)
        );
        for name in ["util.parse_url", "util.validate_url"] {
            assert_eq!(code(name, json!({ "url": over })).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn ip_info_flags() {
        let info = |ip: &'static str| async move {
            let out = call("util.ip_info", json!({ "ip": ip })).await.unwrap();
            let flag = |k: &str| out[k].as_bool().unwrap();
            (
                out["version"].as_i64().unwrap(),
                [
                    flag("loopback"),
                    flag("private"),
                    flag("multicast"),
                    flag("unspecified"),
                ],
            )
        };
        let no = [false; 4];
        assert_eq!(info("8.8.8.8").await, (4, no));
        assert_eq!(info("127.0.0.1").await, (4, [true, false, false, false]));
        assert_eq!(info("127.255.0.9").await, (4, [true, false, false, false]));
        for private in ["10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1"] {
            assert_eq!(
                info(private).await,
                (4, [false, true, false, false]),
                "{private}"
            );
        }
        assert_eq!(info("172.32.0.1").await, (4, no));
        assert_eq!(info("224.0.0.251").await, (4, [false, false, true, false]));
        assert_eq!(info("0.0.0.0").await, (4, [false, false, false, true]));
        assert_eq!(info("::1").await, (6, [true, false, false, false]));
        assert_eq!(info("::").await, (6, [false, false, false, true]));
        assert_eq!(info("fc00::1").await, (6, [false, true, false, false]));
        assert_eq!(info("fdff:ffff::1").await, (6, [false, true, false, false]));
        assert_eq!(info("fe80::1").await, (6, no));
        assert_eq!(info("ff02::1").await, (6, [false, false, true, false]));
        assert_eq!(info("2001:db8::1").await, (6, no));
        assert_eq!(
            info("::ffff:192.168.1.1").await,
            (6, [false, true, false, false])
        );
        assert_eq!(
            info("::ffff:127.0.0.1").await,
            (6, [true, false, false, false])
        );
        for bad in [
            "",
            "256.0.0.1",
            "1.2.3",
            "::g",
            "fe80::1%eth0",
            "localhost",
            "1.2.3.4/8",
        ] {
            assert_eq!(
                code("util.ip_info", json!({ "ip": bad })).await,
                "invalid_input",
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn cidr_contains_cases() {
        let contains = |cidr: &'static str, ip: &'static str| async move {
            call("util.cidr_contains", json!({"cidr": cidr, "ip": ip}))
                .await
                .unwrap()
                .as_bool()
                .unwrap()
        };
        assert!(contains("10.0.0.0/8", "10.255.255.255").await);
        assert!(!contains("10.0.0.0/8", "11.0.0.0").await);
        assert!(contains("192.168.1.0/24", "192.168.1.77").await);
        assert!(!contains("192.168.1.0/24", "192.168.2.1").await);
        assert!(contains("192.168.1.7/32", "192.168.1.7").await);
        assert!(!contains("192.168.1.7/32", "192.168.1.8").await);
        assert!(contains("0.0.0.0/0", "203.0.113.9").await);
        // Host bits in the block are ignored.
        assert!(contains("10.1.2.3/8", "10.200.0.1").await);
        assert!(contains("fc00::/7", "fd12:3456::1").await);
        assert!(!contains("fc00::/7", "fe80::1").await);
        assert!(contains("::/0", "2001:db8::1").await);
        assert!(contains("2001:db8::1/128", "2001:db8::1").await);
        assert!(!contains("2001:db8::1/128", "2001:db8::2").await);
        assert!(contains("2001:db8::/33", "2001:db8:7fff::1").await);
        assert!(!contains("2001:db8::/33", "2001:db8:8000::1").await);
        // Different versions never match.
        assert!(!contains("0.0.0.0/0", "::1").await);
        assert!(!contains("::/0", "127.0.0.1").await);
        for (cidr, ip) in [
            ("10.0.0.0/33", "10.0.0.1"),
            ("::/129", "::1"),
            ("10.0.0.0/-1", "10.0.0.1"),
            ("10.0.0.0/+8", "10.0.0.1"),
            ("10.0.0.0/", "10.0.0.1"),
            ("10.0.0.0", "10.0.0.1"),
            ("10.0.0/8", "10.0.0.1"),
            ("10.0.0.0/8", "10.0.0"),
        ] {
            assert_eq!(
                code("util.cidr_contains", json!({"cidr": cidr, "ip": ip})).await,
                "invalid_input",
                "{cidr} {ip}"
            );
        }
    }
}
