//! Conversions: `util.convert_units` and `util.color_convert`.

use serde_json::Value;
use sopm_core::{Error, Result};

use super::unexpected;
use crate::schema::{float, Args};

/// Every unit `util.convert_units` knows.
pub(super) const UNITS: &[&str] = &[
    "mm", "cm", "m", "km", "in", "ft", "yd", "mi", "mg", "g", "kg", "oz", "lb", "c", "f", "k",
];

/// Largest colour text, in bytes.
pub(super) const MAX_COLOR_BYTES: usize = 64;

/// A unit. Lengths and masses carry their size in a small base unit (micrometres,
/// nanograms) in which every factor is an exact integer, so a conversion is one
/// multiplication and one division of exact values (1 ft is exactly 12 in).
#[derive(Debug, Clone, Copy)]
enum Unit {
    Length(f64),
    Mass(f64),
    Temperature(Scale),
}

#[derive(Debug, Clone, Copy)]
enum Scale {
    Celsius,
    Fahrenheit,
    Kelvin,
}

impl Unit {
    /// The unit `name` given in `field`.
    fn named(field: &str, name: &str) -> Result<Unit> {
        use Unit::{Length, Mass, Temperature};
        Ok(match name {
            "mm" => Length(1e3),
            "cm" => Length(1e4),
            "m" => Length(1e6),
            "km" => Length(1e9),
            "in" => Length(25_400.0),
            "ft" => Length(304_800.0),
            "yd" => Length(914_400.0),
            "mi" => Length(1_609_344_000.0),
            "mg" => Mass(1e6),
            "g" => Mass(1e9),
            "kg" => Mass(1e12),
            "oz" => Mass(28_349_523_125.0),
            "lb" => Mass(453_592_370_000.0),
            "c" => Temperature(Scale::Celsius),
            "f" => Temperature(Scale::Fahrenheit),
            "k" => Temperature(Scale::Kelvin),
            other => return Err(unexpected(field, other)),
        })
    }

    fn kind(self) -> &'static str {
        match self {
            Unit::Length(_) => "length",
            Unit::Mass(_) => "mass",
            Unit::Temperature(_) => "temperature",
        }
    }
}

impl Scale {
    /// A temperature on this scale in Celsius.
    fn to_celsius(self, v: f64) -> f64 {
        match self {
            Scale::Celsius => v,
            Scale::Fahrenheit => (v - 32.0) * 5.0 / 9.0,
            Scale::Kelvin => v - 273.15,
        }
    }

    /// A Celsius temperature on this scale.
    fn of_celsius(self, c: f64) -> f64 {
        match self {
            Scale::Celsius => c,
            Scale::Fahrenheit => c * 9.0 / 5.0 + 32.0,
            Scale::Kelvin => c + 273.15,
        }
    }
}

pub(super) fn convert_units(args: &Args<'_>) -> Result<Value> {
    let value = args.f64("value")?;
    let (from_name, to_name) = (args.str("from")?, args.str("to")?);
    if from_name == to_name {
        return float(value);
    }
    let out = match (Unit::named("from", from_name)?, Unit::named("to", to_name)?) {
        (Unit::Length(from), Unit::Length(to)) | (Unit::Mass(from), Unit::Mass(to)) => {
            // Multiplying first keeps exact results exact; only if that overflows
            // (|value| near 1e300) go through the ratio instead.
            let exact = value * from / to;
            if exact.is_finite() {
                exact
            } else {
                value * (from / to)
            }
        }
        (Unit::Temperature(from), Unit::Temperature(to)) => to.of_celsius(from.to_celsius(value)),
        (from, to) => {
            return Err(Error::invalid(format!(
                "field 'to': cannot convert {} ({from_name}) to {} ({to_name})",
                from.kind(),
                to.kind()
            )))
        }
    };
    float(out)
}

/// An sRGB colour, 8 bits a channel.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rgb(u8, u8, u8);

pub(super) fn color_convert(args: &Args<'_>) -> Result<Value> {
    let color = parse_color(args.str("color")?)?;
    let Rgb(r, g, b) = color;
    let text = match args.str("to")? {
        "hex" => format!("#{r:02x}{g:02x}{b:02x}"),
        "rgb" => format!("rgb({r}, {g}, {b})"),
        "hsl" => to_hsl(color),
        other => return Err(unexpected("to", other)),
    };
    Ok(Value::String(text))
}

/// Reads `#rrggbb` (or the short `#rgb`), `rgb(r, g, b)` with channels 0-255, or
/// `hsl(h, s%, l%)` with any hue in degrees and s, l in 0-100. Case and spaces are
/// free.
fn parse_color(text: &str) -> Result<Rgb> {
    let bad = |why: &str| Error::invalid(format!("field 'color': {why}"));
    let lower = text.trim().to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix('#') {
        let full: String = match hex.len() {
            3 => hex.chars().flat_map(|c| [c, c]).collect(),
            _ => hex.to_string(),
        };
        return match hex::decode(&full).as_deref() {
            Ok(&[r, g, b]) => Ok(Rgb(r, g, b)),
            _ => Err(bad("expected #rrggbb with six hex digits")),
        };
    }
    if let Some(inner) = call_arguments(&lower, "rgb") {
        let channel = |s: &str| s.trim().parse::<u8>().ok();
        return match inner[..] {
            [r, g, b] => match (channel(r), channel(g), channel(b)) {
                (Some(r), Some(g), Some(b)) => Ok(Rgb(r, g, b)),
                _ => Err(bad("rgb channels must be integers from 0 to 255")),
            },
            _ => Err(bad("rgb() takes three channels")),
        };
    }
    if let Some(inner) = call_arguments(&lower, "hsl") {
        let number = |s: &str| s.trim().parse::<f64>().ok().filter(|x| x.is_finite());
        let percent = |s: &str| {
            s.trim()
                .strip_suffix('%')
                .and_then(number)
                .filter(|x| (0.0..=100.0).contains(x))
        };
        return match inner[..] {
            [h, s, l] => match (number(h), percent(s), percent(l)) {
                (Some(h), Some(s), Some(l)) => Ok(from_hsl(h, s / 100.0, l / 100.0)),
                _ => Err(bad("expected hsl(h, s%, l%) with s and l from 0% to 100%")),
            },
            _ => Err(bad("hsl() takes three values")),
        };
    }
    Err(bad(
        "expected \"#rrggbb\", \"rgb(r, g, b)\" or \"hsl(h, s%, l%)\"",
    ))
}

/// The comma-separated arguments of `name(...)`, if `text` has that form.
fn call_arguments<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let inner = text
        .strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    Some(inner.split(',').collect())
}

/// HSL (hue in degrees, s and l in 0..=1) to RGB, the CSS Color 4 formula.
fn from_hsl(h: f64, s: f64, l: f64) -> Rgb {
    let chroma = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let sector = h.rem_euclid(360.0) / 60.0;
    let x = chroma * (1.0 - (sector % 2.0 - 1.0).abs());
    let (r, g, b) = match sector {
        s if s < 1.0 => (chroma, x, 0.0),
        s if s < 2.0 => (x, chroma, 0.0),
        s if s < 3.0 => (0.0, chroma, x),
        s if s < 4.0 => (0.0, x, chroma),
        s if s < 5.0 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let m = l - chroma / 2.0;
    // In 0..=255 by construction; the clamp guards against rounding.
    let channel = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    Rgb(channel(r), channel(g), channel(b))
}

/// RGB to HSL text, each value to one decimal (a trailing ".0" dropped): hue in
/// degrees 0..360, saturation and lightness in percent. One decimal is enough for
/// every 8-bit colour to come back unchanged through [`from_hsl`].
fn to_hsl(Rgb(r, g, b): Rgb) -> String {
    let (r, g, b) = (
        f64::from(r) / 255.0,
        f64::from(g) / 255.0,
        f64::from(b) / 255.0,
    );
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let l = (max + min) / 2.0;
    let (h, s) = if delta == 0.0 {
        (0.0, 0.0)
    } else {
        let s = delta / (1.0 - (2.0 * l - 1.0).abs());
        let h = if max == r {
            ((g - b) / delta).rem_euclid(6.0)
        } else if max == g {
            (b - r) / delta + 2.0
        } else {
            (r - g) / delta + 4.0
        };
        (h * 60.0, s)
    };
    // With 8-bit channels the hue is at most 360 - 60/255, so it never rounds to 360.
    let tenths = |v: f64| (v * 10.0).round() / 10.0;
    format!(
        "hsl({}, {}%, {}%)",
        tenths(h),
        tenths(s * 100.0),
        tenths(l * 100.0)
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_color, to_hsl, Rgb};
    use crate::testing::{call, code};
    use serde_json::{json, Value};

    async fn convert(value: Value, from: &str, to: &str) -> Value {
        call(
            "util.convert_units",
            json!({"value": value, "from": from, "to": to}),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn lengths_and_masses() {
        assert_eq!(convert(json!(1), "ft", "in").await, json!(12.0));
        assert_eq!(convert(json!(1), "mi", "ft").await, json!(5280.0));
        assert_eq!(convert(json!(1), "yd", "ft").await, json!(3.0));
        assert_eq!(convert(json!(1), "in", "cm").await, json!(2.54));
        assert_eq!(convert(json!(1), "km", "m").await, json!(1000.0));
        assert_eq!(convert(json!(2.5), "m", "mm").await, json!(2500.0));
        assert_eq!(
            convert(json!(1), "km", "mi").await,
            json!(0.621371192237334)
        );
        assert_eq!(convert(json!(1), "lb", "oz").await, json!(16.0));
        assert_eq!(convert(json!(1), "lb", "kg").await, json!(0.45359237));
        assert_eq!(convert(json!(1), "kg", "g").await, json!(1000.0));
        assert_eq!(convert(json!(1), "g", "mg").await, json!(1000.0));
        assert_eq!(convert(json!(-3), "m", "cm").await, json!(-300.0));
        assert_eq!(convert(json!(0), "mi", "mm").await, json!(0.0));
        // Same unit: unchanged.
        assert_eq!(convert(json!(7), "oz", "oz").await, json!(7.0));
        // Huge values go through the ratio rather than overflowing.
        assert_eq!(convert(json!(1e300), "mm", "km").await, json!(1e294));
        assert_eq!(convert(json!(1e305), "km", "m").await, json!(1e308));
        assert_eq!(
            code(
                "util.convert_units",
                json!({"value": 1e305, "from": "mi", "to": "mm"})
            )
            .await,
            "domain_error"
        );
    }

    #[tokio::test]
    async fn temperatures() {
        assert_eq!(convert(json!(100), "c", "f").await, json!(212.0));
        assert_eq!(convert(json!(-40), "c", "f").await, json!(-40.0));
        assert_eq!(convert(json!(32), "f", "c").await, json!(0.0));
        assert_eq!(convert(json!(0), "c", "k").await, json!(273.15));
        assert_eq!(convert(json!(0), "k", "c").await, json!(-273.15));
        assert_eq!(convert(json!(32), "f", "k").await, json!(273.15));
        assert_eq!(
            convert(json!(0), "k", "f").await,
            json!(-459.66999999999996)
        );
    }

    #[tokio::test]
    async fn units_of_different_kinds_are_refused() {
        for (from, to) in [
            ("m", "kg"),
            ("c", "m"),
            ("lb", "f"),
            ("M", "m"),
            ("m", "meter"),
        ] {
            assert_eq!(
                code(
                    "util.convert_units",
                    json!({"value": 1, "from": from, "to": to})
                )
                .await,
                "invalid_input",
                "{from} -> {to}"
            );
        }
        assert_eq!(
            code(
                "util.convert_units",
                json!({"value": "1", "from": "m", "to": "cm"})
            )
            .await,
            "invalid_input"
        );
    }

    async fn color(color: &str, to: &str) -> String {
        let out = call("util.color_convert", json!({"color": color, "to": to}))
            .await
            .unwrap();
        out.as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn colors_between_notations() {
        assert_eq!(color("#FF0000", "rgb").await, "rgb(255, 0, 0)");
        assert_eq!(color("#ff0000", "hsl").await, "hsl(0, 100%, 50%)");
        assert_eq!(color("#0f0", "hex").await, "#00ff00");
        assert_eq!(color("rgb(0, 0, 255)", "hsl").await, "hsl(240, 100%, 50%)");
        assert_eq!(color(" RGB( 18,52 ,86 ) ", "hex").await, "#123456");
        assert_eq!(color("rgb(255,255,255)", "hsl").await, "hsl(0, 0%, 100%)");
        assert_eq!(color("#000000", "hsl").await, "hsl(0, 0%, 0%)");
        assert_eq!(color("#808080", "hsl").await, "hsl(0, 0%, 50.2%)");
        assert_eq!(color("hsl(120, 100%, 25%)", "hex").await, "#008000");
        assert_eq!(
            color("hsl(210, 50%, 40%)", "rgb").await,
            "rgb(51, 102, 153)"
        );
        assert_eq!(
            color("HSL(-150, 50%, 40%)", "rgb").await,
            "rgb(51, 102, 153)"
        );
        assert_eq!(
            color("hsl(570.0, 50.0%, 40%)", "rgb").await,
            "rgb(51, 102, 153)"
        );
        assert_eq!(color("hsl(0, 0%, 100%)", "hex").await, "#ffffff");
        assert_eq!(color("#336699", "hsl").await, "hsl(210, 50%, 40%)");
        assert_eq!(color("#ff00ff", "hsl").await, "hsl(300, 100%, 50%)");
        assert_eq!(color("#ff0001", "hsl").await, "hsl(359.8, 100%, 50%)");
        assert_eq!(color("#ff8000", "hsl").await, "hsl(30.1, 100%, 50%)");
        assert_eq!(color("#1c0000", "hsl").await, "hsl(0, 100%, 5.5%)");
        assert_eq!(color("hsl(0, 100%, 5.5%)", "hex").await, "#1c0000");
    }

    #[test]
    fn colors_round_trip_through_hsl() {
        for r in (0..=255u8).step_by(3) {
            for g in (0..=255u8).step_by(5) {
                for b in (0..=255u8).step_by(7) {
                    let c = Rgb(r, g, b);
                    let hsl = to_hsl(c);
                    assert_eq!(parse_color(&hsl).unwrap(), c, "{hsl}");
                }
            }
        }
    }

    #[tokio::test]
    async fn bad_colors_are_refused() {
        for bad in [
            "",
            "red",
            "#ff000",
            "#ff00000",
            "#gg0000",
            "#ffé000",
            "ff0000",
            "rgb(256, 0, 0)",
            "rgb(-1, 0, 0)",
            "rgb(1.5, 0, 0)",
            "rgb(1, 2)",
            "rgb(1, 2, 3, 4)",
            "rgb 1, 2, 3",
            "hsl(0, 100, 50%)",
            "hsl(0, 101%, 50%)",
            "hsl(nan, 50%, 50%)",
            "hsl(inf, 50%, 50%)",
            "hsl(0, 50%)",
        ] {
            assert_eq!(
                code("util.color_convert", json!({"color": bad, "to": "hex"})).await,
                "invalid_input",
                "{bad}"
            );
        }
        assert_eq!(
            code("util.color_convert", json!({"color": "#fff", "to": "cmyk"})).await,
            "invalid_input"
        );
    }
}
