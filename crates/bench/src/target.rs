//! What a measurement talks to.

use std::str::FromStr;

use rrkv_client::Address;

/// An rrkv storage: `rrkv://host:port/storage` or `rrkv+unix:///path/to.sock#storage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RrkvTarget {
    pub address: Address,
    pub storage: String,
}

impl FromStr for RrkvTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid target {s:?}: expected rrkv://host:port/storage or rrkv+unix:///path.sock#storage")
        };
        if let Some(rest) = s.strip_prefix("rrkv://") {
            let (hostport, storage) = rest.split_once('/').ok_or_else(bad)?;
            let address = format!("tcp://{hostport}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            if storage.is_empty() {
                return Err(bad());
            }
            Ok(RrkvTarget {
                address,
                storage: storage.to_string(),
            })
        } else if let Some(rest) = s.strip_prefix("rrkv+unix://") {
            let (path, storage) = rest.split_once('#').ok_or_else(bad)?;
            if path.is_empty() || storage.is_empty() {
                return Err(bad());
            }
            Ok(RrkvTarget {
                address: Address::Unix(path.into()),
                storage: storage.to_string(),
            })
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: RrkvTarget = "rrkv://127.0.0.1:6001/default".parse().unwrap();
        assert_eq!(t.address, Address::Tcp("127.0.0.1:6001".into()));
        assert_eq!(t.storage, "default");
        let t: RrkvTarget = "rrkv+unix:///tmp/rr.sock#cache".parse().unwrap();
        assert_eq!(t.address, Address::Unix("/tmp/rr.sock".into()));
        assert!("rrkv://127.0.0.1:6001".parse::<RrkvTarget>().is_err());
        assert!("redis://127.0.0.1:6379".parse::<RrkvTarget>().is_err());
    }
}
