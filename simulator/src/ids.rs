//! Opaque identifiers for simulated entities.
//!
//! Ids are a keyed bijection of (kind, index), so they are unique, stable for
//! a seed, and say nothing about the entity's role: a ring member's account id
//! looks like anyone else's.

use std::fmt::Write;

/// A bijective 64-bit mixer (the splitmix64 finaliser).
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The entity kinds that get ids.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Txn = 1,
    Account = 2,
    Device = 3,
    Merchant = 4,
    Card = 5,
    Ip = 6,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Txn => "txn_",
            Kind::Account => "acc_",
            Kind::Device => "dev_",
            Kind::Merchant => "mch_",
            Kind::Card => "crd_",
            Kind::Ip => "",
        }
    }
}

/// Renders ids for one seed.
#[derive(Clone, Copy)]
pub(crate) struct IdFactory {
    key: u64,
}

/// First octets used for simulated IPv4 addresses: public unicast space,
/// leaving out private, loopback, link-local, shared and documentation ranges.
fn first_octets() -> impl Iterator<Item = u8> {
    (1u8..=223).filter(|o| !matches!(o, 10 | 100 | 127 | 169 | 172 | 192 | 198 | 203))
}

impl IdFactory {
    pub(crate) fn new(seed: u64) -> Self {
        IdFactory {
            key: mix64(seed ^ 0x6672_6175_6467_7261),
        }
    }

    /// Writes the id of entity `index` of `kind` into `out` (cleared first).
    pub(crate) fn write(&self, kind: Kind, index: u32, out: &mut String) {
        out.clear();
        if let Kind::Ip = kind {
            self.write_ip(index, out);
            return;
        }
        // Distinct (kind, index) give distinct inputs, and mix64 is a bijection.
        let input = ((kind as u64) << 40 | u64::from(index)) ^ self.key;
        out.push_str(kind.prefix());
        write!(out, "{:016x}", mix64(input)).expect("writing to a String cannot fail");
    }

    /// The id of entity `index` of `kind`.
    pub(crate) fn id(&self, kind: Kind, index: u32) -> String {
        let mut s = String::with_capacity(20);
        self.write(kind, index, &mut s);
        s
    }

    fn write_ip(&self, index: u32, out: &mut String) {
        static OCTETS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let octets = OCTETS.get_or_init(|| first_octets().collect());
        let n = octets.len() as u32;
        let first = octets[(index % n) as usize];
        // A bijection on 24 bits: multiply by an odd constant, xor a key.
        let low = ((index / n).wrapping_mul(0x9e_3779) ^ (self.key as u32)) & 0x00ff_ffff;
        write!(
            out,
            "{first}.{}.{}.{}",
            low >> 16,
            (low >> 8) & 0xff,
            low & 0xff
        )
        .expect("writing to a String cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_per_kind_and_valid() {
        let f = IdFactory::new(7);
        for kind in [Kind::Account, Kind::Device, Kind::Ip, Kind::Txn] {
            let ids: HashSet<String> = (0..100_000).map(|i| f.id(kind, i)).collect();
            assert_eq!(ids.len(), 100_000);
        }
        let ip = f.id(Kind::Ip, 12345);
        let parsed: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(!parsed.is_private() && !parsed.is_loopback(), "{ip}");
        assert_ne!(
            IdFactory::new(8).id(Kind::Account, 1),
            f.id(Kind::Account, 1)
        );
    }
}
