//! rustbk formats crate.
