//! rustbk backend crate.
