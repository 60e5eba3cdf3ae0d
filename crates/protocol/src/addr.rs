//! Listen and dial addresses in RoadRunner's DSN form: `tcp://host:port`, `unix:///path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the RPC server listens, or where a client dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port`; RoadRunner's `:port` form is stored as `0.0.0.0:port`.
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

/// Why an address string was refused; the texts say which forms are accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("invalid socket DSN {0:?}: expected tcp://host:port or unix:///path/to.sock")]
    NotDsn(String),
    #[error("unsupported scheme {scheme:?} in {dsn:?}: expected tcp://host:port or unix:///path/to.sock")]
    Scheme { scheme: String, dsn: String },
    #[error("invalid tcp address {0:?}: expected host:port, for example tcp://127.0.0.1:6001")]
    Tcp(String),
    #[error("empty unix socket path in {0:?}")]
    UnixPath(String),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(dsn: &str) -> Result<Self, Self::Err> {
        let mut parts = dsn.split("://");
        let (Some(scheme), Some(rest), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AddressError::NotDsn(dsn.to_string()));
        };
        match scheme {
            "tcp" => {
                let Some(colon) = rest.rfind(':') else {
                    return Err(AddressError::Tcp(dsn.to_string()));
                };
                let (host, port) = (&rest[..colon], &rest[colon + 1..]);
                if port.parse::<u16>().is_err() {
                    return Err(AddressError::Tcp(dsn.to_string()));
                }
                let host = if host.is_empty() { "0.0.0.0" } else { host };
                Ok(Address::Tcp(format!("{host}:{port}")))
            }
            "unix" if rest.is_empty() => Err(AddressError::UnixPath(dsn.to_string())),
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            other => Err(AddressError::Scheme {
                scheme: other.to_string(),
                dsn: dsn.to_string(),
            }),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(hostport) => write!(f, "tcp://{hostport}"),
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roadrunner_forms() {
        assert_eq!(
            "tcp://127.0.0.1:6001".parse(),
            Ok(Address::Tcp("127.0.0.1:6001".into()))
        );
        assert_eq!(
            "tcp://:6001".parse(),
            Ok(Address::Tcp("0.0.0.0:6001".into()))
        );
        assert_eq!(
            "tcp://[::1]:6001".parse(),
            Ok(Address::Tcp("[::1]:6001".into()))
        );
        assert_eq!(
            "unix:///tmp/rr.sock".parse(),
            Ok(Address::Unix("/tmp/rr.sock".into()))
        );
        assert_eq!(
            "unix://rr.sock".parse(),
            Ok(Address::Unix("rr.sock".into()))
        );
        assert!(matches!(
            "127.0.0.1:6001".parse::<Address>(),
            Err(AddressError::NotDsn(_))
        ));
        assert!(matches!(
            "http://x:1".parse::<Address>(),
            Err(AddressError::Scheme { .. })
        ));
        assert!(matches!(
            "tcp://localhost".parse::<Address>(),
            Err(AddressError::Tcp(_))
        ));
        assert!(matches!(
            "tcp://h:99999".parse::<Address>(),
            Err(AddressError::Tcp(_))
        ));
        assert_eq!(
            Address::Tcp("127.0.0.1:1".into()).to_string(),
            "tcp://127.0.0.1:1"
        );
    }
}
