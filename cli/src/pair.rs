//! A `MIN,MAX` pair of numbers as a flag (`--scale 0.08,1`) or a config file
//! (`scale = [0.08, 1.0]`) gives it.

use serde::Deserialize;

/// A `MIN,MAX` pair (`--scale 0.08,1`; in TOML `scale = [0.08, 1.0]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair(pub [f64; 2]);

impl<'de> Deserialize<'de> for Pair {
    /// Exactly two numbers: serde's array impl let TOML's `[0.1, 0.5, 1.0]` through as
    /// `[0.1, 0.5]`, dropping the third silently.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Vec::<f64>::deserialize(d)?;
        match v.as_slice() {
            [a, b] => Ok(Pair([*a, *b])),
            _ => Err(serde::de::Error::invalid_length(
                v.len(),
                &"two numbers [MIN, MAX]",
            )),
        }
    }
}

impl std::str::FromStr for Pair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<&str> = s.split(',').collect();
        let num = |x: &str| {
            x.trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?}: expected MIN,MAX (two numbers)"))
        };
        match v.as_slice() {
            [a, b] => Ok(Pair([num(a)?, num(b)?])),
            _ => Err(format!("{s:?}: expected MIN,MAX (two numbers)")),
        }
    }
}
