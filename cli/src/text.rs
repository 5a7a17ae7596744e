//! Text flags whose values may hold a path (`--teacher ARCH=WEIGHTS`): clap's own
//! `String` parser refuses a value that is not UTF-8 with "invalid UTF-8 was detected in
//! one or more arguments", naming no flag; this one names the flag and the value.

use std::ffi::OsStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// A `String` value parser that names its flag when the value is not UTF-8
/// (`#[arg(value_parser = meal_cli::Utf8Text)]`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Text;

impl TypedValueParser for Utf8Text {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        match value.to_str() {
            Some(s) => Ok(s.to_string()),
            None => {
                let flag = arg
                    .and_then(|a| a.get_long())
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| "a value".to_string());
                let msg = format!(
                    "{flag} {:?} is not UTF-8 text (\u{fffd} marks the bytes that are not): \
                     this flag takes text: give a path in it by a UTF-8 name (rename the \
                     file, or link to it from one)\n",
                    value.to_string_lossy()
                );
                Err(clap::Error::raw(ErrorKind::InvalidUtf8, msg).with_cmd(cmd))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::unix::ffi::OsStringExt;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long, value_parser = Utf8Text)]
        teacher: Vec<String>,
    }

    #[test]
    fn a_value_that_is_not_utf8_is_refused_naming_its_flag() {
        let bad = std::ffi::OsString::from_vec(b"resnet50=/w/\xff.safetensors".to_vec());
        let e = Cli::try_parse_from([std::ffi::OsString::from("x"), "--teacher".into(), bad])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUtf8);
        let e = e.to_string();
        assert!(
            e.contains("--teacher \"resnet50=/w/\u{fffd}.safetensors\" is not UTF-8"),
            "{e}"
        );
        let ok = Cli::try_parse_from(["x", "--teacher", "a=b", "--teacher", "c=d"]).unwrap();
        assert_eq!(ok.teacher, ["a=b", "c=d"]);
    }
}
