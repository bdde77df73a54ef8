//! Integration tests for rustbk live in tests/tests/.
