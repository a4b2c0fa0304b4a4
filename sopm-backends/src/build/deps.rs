//! Checks of dependency manifests before anything is installed: a build may fetch
//! packages from the configured index only, so every specifier must name a package
//! and a version range, never a URL, a path, a VCS repository or an option that
//! changes where pip or npm look.

use serde_json::Value;
use sopm_core::types::truncate_for_message;
use sopm_core::{Error, Result};

/// File names that pip or npm would take for a local archive instead of an index name.
const ARCHIVE_SUFFIXES: &[&str] = &[
    ".whl",
    ".zip",
    ".tar",
    ".tgz",
    ".tar.gz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
];

fn looks_like_archive(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ARCHIVE_SUFFIXES
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// Checks `requirements.txt` and returns how many requirements it lists. Allowed per
/// line: `name`, `name[extra]`, version specifiers (`==1.0`, `>=1,<2`, `~=1.4`),
/// an environment marker after `;`, and `--hash=algo:hex` options; comments and
/// blank lines. Refused (`invalid_input`): options (`-r`, `-e`, `-i`,
/// `--index-url`, ...), URLs, paths, VCS links, `name @ url`, archives, `${VAR}`.
pub(crate) fn check_requirements(text: &str) -> Result<usize> {
    let mut count = 0;
    let mut logical = String::new();
    let mut first_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            first_line = i + 1;
        }
        if let Some(cont) = raw.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        count += check_requirement_line(&logical, first_line)?;
        logical.clear();
    }
    if !logical.is_empty() {
        count += check_requirement_line(&logical, first_line)?;
    }
    Ok(count)
}

fn refuse_requirement(line_no: usize, line: &str, why: &str) -> Error {
    Error::invalid(format!(
        "requirements.txt line {line_no}: {why} (got '{}'); only 'name' or 'name==version' \
         style requirements from the package index are allowed",
        truncate_for_message(line.trim())
    ))
}

/// Checks one logical line; 1 if it is a requirement, 0 if blank or a comment.
fn check_requirement_line(line: &str, line_no: usize) -> Result<usize> {
    // A comment starts at '#' at the line start or after whitespace.
    let mut text = line;
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            text = &line[..i];
            break;
        }
    }
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let refuse = |why: &str| refuse_requirement(line_no, line, why);
    if text.starts_with('-') {
        return Err(refuse("options are not allowed"));
    }
    if text.contains('$') {
        return Err(refuse("environment variables are not allowed"));
    }
    // Per-requirement options: only hashes, which can only narrow what is installed.
    let (spec, options) = match text.find(" --").or_else(|| text.find("\t--")) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    for opt in options.split_whitespace() {
        let ok = opt.strip_prefix("--hash=").is_some_and(|h| {
            h.split_once(':').is_some_and(|(algo, hex)| {
                !algo.is_empty()
                    && algo.bytes().all(|b| b.is_ascii_alphanumeric())
                    && !hex.is_empty()
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            })
        });
        if !ok {
            return Err(refuse(
                "the only option allowed after a requirement is --hash=algo:hex",
            ));
        }
    }
    let (requirement, marker) = match spec.split_once(';') {
        Some((r, m)) => (r.trim(), Some(m.trim())),
        None => (spec.trim(), None),
    };
    if let Some(m) = marker {
        let ok = !m.is_empty()
            && m.chars()
                .all(|c| c.is_ascii_alphanumeric() || " _.'\"()<>=!~,-".contains(c));
        if !ok {
            return Err(refuse(
                "the environment marker has characters a marker does not need",
            ));
        }
    }
    check_requirement(requirement).map_err(refuse)?;
    Ok(1)
}

/// Checks `name[extras] specifiers`.
fn check_requirement(req: &str) -> std::result::Result<(), &'static str> {
    let name_end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(req.len());
    let name = &req[..name_end];
    if name.is_empty() || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("a requirement must start with a package name");
    }
    if looks_like_archive(name) {
        return Err("archive files are not allowed");
    }
    let mut rest = req[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']').ok_or("unclosed '[' of extras")?;
        let extras = &after[..close];
        if !extras
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ',' | ' '))
        {
            return Err("extras must be package extra names");
        }
        rest = after[close + 1..].trim_start();
    }
    if rest.starts_with('@') {
        return Err("direct references (name @ url) are not allowed");
    }
    if rest.is_empty() {
        return Ok(());
    }
    for clause in rest.split(',') {
        let clause = clause.trim();
        let version = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"]
            .iter()
            .find_map(|op| clause.strip_prefix(op))
            .ok_or("expected version specifiers such as ==1.2 or >=1.0,<2")?
            .trim();
        let ok = !version.is_empty()
            && version.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-')
            });
        if !ok {
            return Err("a version may hold letters, digits and . * + ! _ - only");
        }
    }
    Ok(())
}

/// The dependency sections of `package.json` whose specs npm resolves.
const NPM_DEPENDENCY_SECTIONS: &[&str] = &[
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
];

/// Whether `spec` is a plain semver range or dist-tag (`^1.2.0`, `1.x`, `>=1 <2`,
/// `latest`, `""`): nothing that names a URL, path, git repository, alias or tarball.
fn is_plain_npm_spec(spec: &str) -> bool {
    spec.len() <= 256
        && spec.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    ' ' | '.' | '*' | '^' | '~' | '<' | '>' | '=' | '|' | '-' | '+'
                )
        })
        && !looks_like_archive(spec.trim())
}

fn is_npm_name(name: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 214
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~'))
    };
    match name.strip_prefix('@') {
        Some(scoped) => {
            matches!(scoped.split_once('/'), Some((scope, pkg)) if plain(scope) && plain(pkg))
        }
        None => plain(name),
    }
}

fn refuse_npm(what: &str, detail: &str) -> Error {
    Error::invalid(format!(
        "package.json: {what} (got '{}'); only registry packages with semver ranges are allowed",
        truncate_for_message(detail)
    ))
}

/// Checks `package.json` and returns how many dependencies npm would install
/// (`dependencies` and `optionalDependencies`; dev dependencies are omitted).
/// Refused (`invalid_input`): malformed JSON, specs that are not plain ranges
/// (`file:`, `link:`, `git+`, `http(s):`, `github:user/repo`, `npm:` aliases,
/// tarballs), such specs in `overrides`, and `workspaces`.
pub(crate) fn check_package_json(bytes: &[u8]) -> Result<usize> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("package.json is not valid JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| Error::invalid("package.json must be a JSON object"))?;
    if obj.contains_key("workspaces") {
        return Err(Error::invalid(
            "package.json: workspaces are not allowed (they install local paths)",
        ));
    }
    let mut installed = 0;
    for section in NPM_DEPENDENCY_SECTIONS {
        let Some(deps) = obj.get(*section) else {
            continue;
        };
        let deps = deps
            .as_object()
            .ok_or_else(|| Error::invalid(format!("package.json: {section} must be an object")))?;
        for (name, spec) in deps {
            if !is_npm_name(name) {
                return Err(refuse_npm(
                    &format!("{section} has an invalid package name"),
                    name,
                ));
            }
            let spec = spec.as_str().ok_or_else(|| {
                Error::invalid(format!("package.json: {section}.{name} must be a string"))
            })?;
            if !is_plain_npm_spec(spec) {
                return Err(refuse_npm(
                    &format!("{section}.{name} is not a version range"),
                    spec,
                ));
            }
        }
        if matches!(*section, "dependencies" | "optionalDependencies") {
            installed += deps.len();
        }
    }
    if let Some(overrides) = obj.get("overrides") {
        check_overrides(overrides)?;
    }
    Ok(installed)
}

fn check_overrides(v: &Value) -> Result<()> {
    match v {
        Value::String(s) => {
            // `$name` refers to the version of a direct dependency.
            let ok = match s.strip_prefix('$') {
                Some(name) => is_npm_name(name),
                None => is_plain_npm_spec(s),
            };
            if ok {
                Ok(())
            } else {
                Err(refuse_npm(
                    "overrides has a spec that is not a version range",
                    s,
                ))
            }
        }
        Value::Object(map) => map.values().try_for_each(check_overrides),
        _ => Err(Error::invalid(
            "package.json: overrides must hold objects and strings only",
        )),
    }
}

/// Checks an uploaded `package-lock.json` or `npm-shrinkwrap.json`: npm fetches what
/// a lockfile says, so every `resolved` must be on `registry` (which ends with `/`),
/// no entry may be a link, and no `version` may be a URL or path.
pub(crate) fn check_lockfile(file: &str, bytes: &[u8], registry: &str) -> Result<()> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{file} is not valid JSON: {e}")))?;
    check_lock_value(file, &doc, registry)
}

fn check_lock_value(file: &str, v: &Value, registry: &str) -> Result<()> {
    let refuse = |what: &str, got: &str| {
        Error::invalid(format!(
            "{file}: {what} (got '{}'); a lockfile may only resolve packages from {}",
            truncate_for_message(got),
            super::config::redact_url(registry)
        ))
    };
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("resolved", Value::String(url)) if !url.starts_with(registry) => {
                        return Err(refuse("a package is resolved outside the registry", url));
                    }
                    ("link", Value::Bool(true)) => {
                        return Err(refuse(
                            "linked local packages are not allowed",
                            "link: true",
                        ));
                    }
                    ("version", Value::String(version))
                        if version.contains(':') || version.contains('/') =>
                    {
                        return Err(refuse("a version is a URL or a path", version));
                    }
                    _ => check_lock_value(file, value, registry)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_lock_value(file, item, registry)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requirements_pass() {
        let text = "\
# pinned
six==1.16.0
requests[socks, security] >= 2.31, <3  # a comment
attrs
python-dateutil~=2.8 ; python_version >= \"3.8\"
urllib3==2.0.7 \\
    --hash=sha256:c97dfde1f7bd43a71c8d2a58e369e9b2bf692d1334ea9f9cae55add7d0dd0f84
Foo.Bar_baz-1===1.0+local.1

";
        assert_eq!(check_requirements(text).unwrap(), 6);
    }

    #[test]
    fn requirements_that_leave_the_index_are_refused() {
        for bad in [
            "-e .",
            "-e git+https://github.com/x/y#egg=y",
            "--index-url https://evil.example/simple",
            "-i https://evil.example/simple",
            "--extra-index-url https://evil.example/simple",
            "-r other.txt",
            "-c constraints.txt",
            "-f https://evil.example/links",
            "git+https://github.com/x/y",
            "https://evil.example/pkg.whl",
            "http://evil.example/pkg.tar.gz",
            "file:///etc/passwd",
            "./local/pkg",
            "../pkg",
            "/abs/pkg",
            "pkg.whl",
            "six-1.16.0-py2.py3-none-any.whl",
            "pkg @ https://evil.example/pkg.zip",
            "pkg@https://evil.example/pkg.zip",
            "six==1.16.0 --index-url https://evil.example/",
            "six==1.16.0 --global-option=x",
            "six==${VERSION}",
            "six (>=1.0)",
            "six==1.0; os_name == 'x' @ y",
        ] {
            let e = check_requirements(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{bad}");
            assert!(e.to_string().contains("line 1"), "{e}");
        }
        let e = check_requirements("six\n\n-e .\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn plain_package_json_passes() {
        let pj = br#"{"name":"f","version":"1.0.0",
            "dependencies":{"is-number":"7.0.0","@scope/pkg":"^1.2.3","lodash":">=4 <5 || 3.x","x":"latest","y":"","z":"*"},
            "devDependencies":{"jest":"~29"},
            "overrides":{"foo":{"bar":"1.0.0"},"is-number":"$is-number"},
            "scripts":{"postinstall":"curl evil"}}"#;
        assert_eq!(check_package_json(pj).unwrap(), 6);
        assert_eq!(check_package_json(br#"{"name":"f"}"#).unwrap(), 0);
    }

    #[test]
    fn package_json_specs_that_leave_the_registry_are_refused() {
        for spec in [
            "file:../x",
            "link:../x",
            "git+https://github.com/x/y.git",
            "git://github.com/x/y",
            "github:x/y",
            "x/y",
            "https://evil.example/x.tgz",
            "http://evil.example/x",
            "npm:other@1.0.0",
            "./x",
            "~/x",
            "x.tgz",
            "1.0.0.tar.gz",
        ] {
            for section in [
                "dependencies",
                "devDependencies",
                "optionalDependencies",
                "peerDependencies",
            ] {
                let pj = format!(r#"{{"{section}":{{"a":{}}}}}"#, serde_json::json!(spec));
                let e = check_package_json(pj.as_bytes()).unwrap_err();
                assert_eq!(e.code(), "invalid_input", "{section} {spec}");
            }
            let pj = format!(
                r#"{{"overrides":{{"a":{{"b":{}}}}}}}"#,
                serde_json::json!(spec)
            );
            assert!(
                check_package_json(pj.as_bytes()).is_err(),
                "overrides {spec}"
            );
        }
        for bad in [
            &br#"{"workspaces":["packages/*"]}"#[..],
            br#"{"dependencies":{"../x":"1.0.0"}}"#,
            br#"{"dependencies":["x"]}"#,
            br#"{"dependencies":{"x":1}}"#,
            b"not json",
            b"[]",
        ] {
            assert_eq!(check_package_json(bad).unwrap_err().code(), "invalid_input");
        }
    }

    #[test]
    fn lockfiles_must_stay_on_the_registry() {
        let reg = "https://registry.npmjs.org/";
        let good = br#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"is-number":"7.0.0"}},
            "node_modules/is-number":{"version":"7.0.0","resolved":"https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz","integrity":"sha512-x"}}}"#;
        assert!(check_lockfile("package-lock.json", good, reg).is_ok());
        for bad in [
            &br#"{"packages":{"node_modules/x":{"resolved":"https://evil.example/x.tgz"}}}"#[..],
            br#"{"packages":{"node_modules/x":{"resolved":"git+ssh://git@github.com/x/y.git#abc"}}}"#,
            br#"{"packages":{"node_modules/x":{"resolved":"../x","link":true}}}"#,
            br#"{"dependencies":{"x":{"version":"file:../x"}}}"#,
            br#"{"dependencies":{"x":{"version":"github:x/y"}}}"#,
        ] {
            let e = check_lockfile("package-lock.json", bad, reg).unwrap_err();
            assert_eq!(e.code(), "invalid_input");
        }
    }
}
