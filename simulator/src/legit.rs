//! Legitimate behaviour, including the kinds that look suspicious on their
//! own: household devices, carrier NAT and workplace IPs shared by many,
//! travel abroad, new phones, transfers between friends.

use rand::Rng;
use rand::distr::Distribution;
use rand_chacha::ChaCha8Rng;
use rand_distr::Normal;

use crate::event::Event;
use crate::world::{
    self, CARD_PRESENT, COUNTRIES, DAY_MS, ECOMMERCE, FUEL, GROCERY, MOBILE_APP, NONE,
    ONLINE_RETAIL, P2P, RESTAURANTS, TRANSFER, TRAVEL, World,
};

const HOUR_MS: f64 = 3_600_000.0;

/// Where a payment from home country comes from, network-wise.
#[derive(Clone, Copy)]
enum IpSource {
    Home,
    Work,
    Carrier,
    Public,
}

/// Draws one legitimate transaction.
pub(crate) fn transaction(world: &World, rng: &mut ChaCha8Rng, days: u32) -> Event {
    let account = world.activity.sample(rng) as u32;
    let a = &world.accounts[account as usize];
    let time_ms = local_time(world, rng, account, days);
    let abroad = a
        .trip
        .filter(|(_, from, to)| (*from..*to).contains(&time_ms));
    let (country, utc_offset) = match abroad {
        Some((dest, _, _)) => (dest as usize, COUNTRIES[dest as usize].utc_offset_min),
        None => (
            a.country as usize,
            COUNTRIES[a.country as usize].utc_offset_min,
        ),
    };

    let merchant = if abroad.is_some() {
        let cats = [
            (RESTAURANTS, 0.35),
            (GROCERY, 0.25),
            (FUEL, 0.1),
            (TRAVEL, 0.1),
            (ONLINE_RETAIL, 0.2),
        ];
        let cat = world::weighted(rng, &cats);
        world.pick_merchant(rng, cat, country)
    } else if rng.random_bool(0.6) {
        a.favorites[rng.random_range(0..a.favorites.len())]
    } else {
        let cats: Vec<(usize, f64)> = world::CATEGORIES
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.weight))
            .collect();
        let cat = world::weighted(rng, &cats);
        let shop_abroad = cat == ONLINE_RETAIL && rng.random_bool(0.15);
        let where_ = if shop_abroad {
            rng.random_range(0..COUNTRIES.len())
        } else {
            country
        };
        world.pick_merchant(rng, cat, where_)
    };
    let mut channel = world.channel(rng, merchant);
    let mut merchant = merchant;
    if channel == TRANSFER && a.contacts.is_empty() {
        merchant = world.pick_merchant(rng, ONLINE_RETAIL, country);
        channel = ECOMMERCE;
    }

    let mut e = Event::new(time_ms, account, merchant, channel);
    e.amount_minor = world.amount(rng, merchant, f64::from(a.spend_scale));
    let card = a.cards[usize::from(a.cards[1] != NONE && rng.random_bool(0.3))];
    if channel == CARD_PRESENT {
        e.card = card;
        return e;
    }
    e.utc_offset_min = utc_offset;
    let household = &world.households[a.household as usize];
    e.device = match channel {
        ECOMMERCE if household.shared_device != NONE && rng.random_bool(0.2) => {
            household.shared_device
        }
        ECOMMERCE if a.secondary_device != NONE && rng.random_bool(0.4) => a.secondary_device,
        _ => world.phone(account, time_ms),
    };
    e.ip = if abroad.is_some() {
        if rng.random_bool(0.7) {
            world.public_ip(rng, country)
        } else {
            world.carrier_ip(rng, account, a.country as usize)
        }
    } else {
        let options = match channel {
            ECOMMERCE => [
                (IpSource::Home, 0.65),
                (IpSource::Work, 0.15),
                (IpSource::Carrier, 0.12),
                (IpSource::Public, 0.08),
            ],
            _ => [
                (IpSource::Carrier, 0.55),
                (IpSource::Home, 0.35),
                (IpSource::Work, 0.05),
                (IpSource::Public, 0.05),
            ],
        };
        match world::weighted(rng, &options) {
            IpSource::Work if a.workplace_ip != NONE => a.workplace_ip,
            IpSource::Home | IpSource::Work => world.home_ip(account),
            IpSource::Carrier => world.carrier_ip(rng, account, country),
            IpSource::Public => world.public_ip(rng, country),
        }
    };
    if channel == TRANSFER {
        e.counterparty = a.contacts[rng.random_range(0..a.contacts.len())];
    } else {
        e.card = card;
    }
    debug_assert!(channel == ECOMMERCE || channel == MOBILE_APP || channel == TRANSFER);
    debug_assert!(
        channel != TRANSFER || world.merchants[merchant as usize].category as usize == P2P
    );
    e
}

/// A time in the period at which this account plausibly pays: mostly around
/// its usual local hour in its home time zone.
pub(crate) fn local_time(world: &World, rng: &mut ChaCha8Rng, account: u32, days: u32) -> i64 {
    let a = &world.accounts[account as usize];
    let day = i64::from(rng.random_range(0..days));
    let hour = if rng.random_bool(0.9) {
        let n = Normal::new(f64::from(a.peak_hour), 3.5).expect("valid parameters");
        n.sample(rng).rem_euclid(24.0)
    } else {
        rng.random_range(0.0..24.0)
    };
    let offset_ms = i64::from(COUNTRIES[a.country as usize].utc_offset_min) * 60_000;
    let t = world.start_ms + day * DAY_MS + (hour * HOUR_MS) as i64 - offset_ms;
    wrap(world, t)
}

/// Folds a time that fell outside the period (through a time-zone shift)
/// back into it.
pub(crate) fn wrap(world: &World, t: i64) -> i64 {
    let span = world.end_ms - world.start_ms;
    world.start_ms + (t - world.start_ms).rem_euclid(span)
}
