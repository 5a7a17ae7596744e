//! The environment's switches of this crate (`MEAL_AMX`, `MEAL_CUDA_TF32`, ...): one
//! reading of their values for all, so that `true`, `on` or `0` mean what they say and a
//! value that is none of them is warned of, not silently taken for the default.

/// The switch `name`: `1`, `true`, `on`, `yes` turn it on; `0`, `false`, `off`, `no`
/// off (any case); unset or empty leaves `default`; another value is warned of and
/// leaves `default`.
pub fn switch(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => parse(name, &v, default),
        Err(_) => default,
    }
}

fn parse(name: &str, value: &str, default: bool) -> bool {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => true,
        "0" | "false" | "off" | "no" => false,
        "" => default,
        _ => {
            tracing::warn!(
                "{name}={value}: not a switch (1 or 0, true or false, on or off); left {}",
                if default { "on" } else { "off" }
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_switch_reads_words_and_keeps_its_default_otherwise() {
        assert!(parse("X", "True", false) && parse("X", " on", false));
        assert!(!parse("X", "0", true) && !parse("X", "OFF", true));
        assert!(parse("X", "", true) && !parse("X", "maybe", false));
    }
}
