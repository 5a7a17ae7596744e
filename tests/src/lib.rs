//! Integration tests of the whole MEAL V2 pipeline live in `tests/tests/`; this library
//! is empty and exists so the test crate is a workspace member.
