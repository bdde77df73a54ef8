//! `XenbusState` values as xenstore holds them.

/// The state of one end of a xenbus device (`xen/include/public/io/xenbus.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XenbusState {
    /// 0: missing or unparsable.
    Unknown,
    /// 1.
    Initialising,
    /// 2: the backend published its features.
    InitWait,
    /// 3: the frontend published its ring.
    Initialised,
    /// 4.
    Connected,
    /// 5.
    Closing,
    /// 6.
    Closed,
    /// 7.
    Reconfiguring,
    /// 8.
    Reconfigured,
}

impl XenbusState {
    /// Parses a node value; anything unexpected is `Unknown`.
    pub fn parse(value: Option<&str>) -> XenbusState {
        match value.map(str::trim).and_then(|v| v.parse::<u8>().ok()) {
            Some(1) => XenbusState::Initialising,
            Some(2) => XenbusState::InitWait,
            Some(3) => XenbusState::Initialised,
            Some(4) => XenbusState::Connected,
            Some(5) => XenbusState::Closing,
            Some(6) => XenbusState::Closed,
            Some(7) => XenbusState::Reconfiguring,
            Some(8) => XenbusState::Reconfigured,
            _ => XenbusState::Unknown,
        }
    }

    /// The number written to xenstore.
    pub fn number(self) -> u8 {
        match self {
            XenbusState::Unknown => 0,
            XenbusState::Initialising => 1,
            XenbusState::InitWait => 2,
            XenbusState::Initialised => 3,
            XenbusState::Connected => 4,
            XenbusState::Closing => 5,
            XenbusState::Closed => 6,
            XenbusState::Reconfiguring => 7,
            XenbusState::Reconfigured => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::XenbusState;

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        for n in 0..=8u8 {
            assert_eq!(XenbusState::parse(Some(&n.to_string())).number(), n);
        }
        assert_eq!(XenbusState::parse(Some("banana")), XenbusState::Unknown);
        assert_eq!(XenbusState::parse(Some("300")), XenbusState::Unknown);
        assert_eq!(XenbusState::parse(None), XenbusState::Unknown);
    }
}
