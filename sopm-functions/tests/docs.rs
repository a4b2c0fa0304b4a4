//! `docs/functions.md` is generated from the catalog, so it cannot drift from the
//! code. After changing a function, regenerate it with
//! `SOPM_BLESS=1 cargo test -p sopm-functions --test docs`.

use std::fmt::Write;

use serde_json::Value;
use sopm_functions::{catalog, schema::Ty};

fn ty(t: &Ty) -> String {
    match t {
        Ty::Any => "any".into(),
        Ty::Bool => "bool".into(),
        Ty::Number {
            min: None,
            max: None,
        } => "number".into(),
        Ty::Number { min, max } => format!(
            "number {}..={}",
            min.map(|m| m.to_string()).unwrap_or_default(),
            max.map(|m| m.to_string()).unwrap_or_default()
        ),
        Ty::Integer { min, max } if *min == i64::MIN && *max == i64::MAX => "integer".into(),
        Ty::Integer { min, max } => format!("integer {min}..={max}"),
        Ty::String {
            max_bytes,
            min_chars,
        } => {
            let size = if *max_bytes >= 1 << 20 {
                format!("{} MiB", max_bytes >> 20)
            } else {
                format!("{max_bytes} B")
            };
            if *min_chars > 0 {
                format!("non-empty string <= {size}")
            } else {
                format!("string <= {size}")
            }
        }
        Ty::Enum(o) => o.join(" \\| "),
        Ty::IntEnum(o) => o
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" \\| "),
        Ty::Array {
            items,
            min_items,
            max_items,
        } => {
            let min = if *min_items > 0 {
                format!("{min_items}..=")
            } else {
                "<= ".into()
            };
            format!("[{}] ({min}{max_items})", ty(items))
        }
        Ty::Object => "object".into(),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    let s = if s.chars().count() > 90 {
        format!("{}…", s.chars().take(90).collect::<String>())
    } else {
        s
    };
    s.replace('|', "\\|")
}

fn render() -> String {
    let mut o = String::from(
        "# Built-in functions\n\n\
         Generated from the code by `sopm-functions/tests/docs.rs`; `GET /api/functions` serves\n\
         the same catalog with full JSON Schemas. Every input is a JSON object with exactly\n\
         these fields (`?` marks optional ones); anything else is `invalid_input`, naming the\n\
         field. Examples are checked by the test suite.\n",
    );
    let all = catalog();
    for cat in ["math", "text", "data", "util"] {
        let items: Vec<_> = all.iter().filter(|b| b.category() == cat).collect();
        let _ = write!(
            o,
            "\n## {cat} ({})\n\n| name | input | description | example |\n|---|---|---|---|\n",
            items.len()
        );
        for b in items {
            let input = b
                .params
                .0
                .iter()
                .map(|p| {
                    format!(
                        "`{}{}`: {}",
                        p.name,
                        if p.required { "" } else { "?" },
                        ty(&p.ty)
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>");
            let nd = if b.deterministic {
                ""
            } else {
                " (not deterministic)"
            };
            let _ = writeln!(
                o,
                "| `{}` | {} | {}{} | `{}` → `{}` |",
                b.name,
                if input.is_empty() {
                    "(none)".to_string()
                } else {
                    input
                },
                b.description.replace('|', "\\|"),
                nd,
                short(&b.example_input),
                short(&b.example_output)
            );
        }
    }
    o
}

#[test]
fn docs_functions_md_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/functions.md");
    let want = render();
    if std::env::var_os("SOPM_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/functions.md is out of date: run SOPM_BLESS=1 cargo test -p sopm-functions --test docs"
    );
}
