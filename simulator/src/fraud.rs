//! The planted fraud typologies.
//!
//! Each campaign writes compact [`Event`]s labelled with its typology. The
//! ring and mule campaigns put their signal in the graph (devices and IPs
//! shared several hops apart, money fanning in and out) rather than in one
//! transaction's columns: their amounts, merchants and hours look ordinary.

use rand::Rng;
use rand::distr::Distribution;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::Difficulty;
use crate::event::Event;
use crate::legit::{local_time, wrap};
use crate::world::{
    CATEGORIES, COUNTRIES, CRYPTO, DAY_MS, DIGITAL_GOODS, ECOMMERCE, ELECTRONICS, JEWELRY,
    MOBILE_APP, ONLINE_RETAIL, P2P, TRANSFER, World,
};

/// The typologies, in proto `Typology` numbering (index + 1).
pub(crate) const TYPOLOGIES: usize = 5;
const RING: u8 = 1;
const MULE: u8 = 2;
const ACCOUNT_TAKEOVER: u8 = 3;
const CARD_TESTING: u8 = 4;
const BUST_OUT: u8 = 5;

const HOUR_MS: i64 = 3_600_000;
const RESELLABLE: [usize; 4] = [ELECTRONICS, DIGITAL_GOODS, JEWELRY, ONLINE_RETAIL];

/// Plants fraud until each typology's budget of transactions is met exactly.
pub(crate) fn plant(
    world: &mut World,
    d: &Difficulty,
    rng: &mut ChaCha8Rng,
    budget: [u64; TYPOLOGIES],
) -> Vec<Event> {
    let mut out = Vec::with_capacity(budget.iter().sum::<u64>() as usize);
    let mut mules: Vec<u32> = Vec::new();
    // Mules first, so takeovers can cash out to them.
    for typology in [MULE, RING, ACCOUNT_TAKEOVER, CARD_TESTING, BUST_OUT] {
        let want = budget[usize::from(typology - 1)] as usize;
        let mut produced = 0;
        while produced < want {
            let mut campaign = Vec::new();
            match typology {
                RING => ring(world, d, rng, &mut campaign),
                MULE => mule(world, d, rng, &mut campaign, &mut mules),
                ACCOUNT_TAKEOVER => takeover(world, rng, &mut campaign, &mules),
                CARD_TESTING => card_testing(world, rng, &mut campaign),
                _ => bust_out(world, rng, &mut campaign),
            }
            campaign.truncate(want - produced);
            for e in &mut campaign {
                e.typology = typology;
            }
            produced += campaign.len();
            out.extend(campaign);
        }
    }
    out
}

/// A uniformly random instant in [from, to).
fn between(rng: &mut ChaCha8Rng, from: i64, to: i64) -> i64 {
    rng.random_range(from..to.max(from + 1))
}

/// The start of a campaign window of `len_ms`, no earlier than `after` of the
/// period (so the graph has history before it).
fn window(world: &World, rng: &mut ChaCha8Rng, after: f64, len_ms: i64) -> i64 {
    let span = world.end_ms - world.start_ms;
    let from = world.start_ms + (span as f64 * after) as i64;
    between(rng, from, world.end_ms - len_ms)
}

/// Distinct population accounts, uniformly.
fn accounts(world: &World, rng: &mut ChaCha8Rng, n: usize, exclude: &[u32]) -> Vec<u32> {
    let n = n.min(world.accounts.len().saturating_sub(exclude.len()));
    let mut chosen: Vec<u32> = Vec::with_capacity(n);
    while chosen.len() < n {
        let a = rng.random_range(0..world.accounts.len()) as u32;
        if !chosen.contains(&a) && !exclude.contains(&a) {
            chosen.push(a);
        }
    }
    chosen
}

fn resellable_merchant(world: &World, rng: &mut ChaCha8Rng, country: usize) -> u32 {
    let cat = *RESELLABLE.choose(rng).expect("non-empty");
    world.pick_merchant(rng, cat, country)
}

fn other_offset(rng: &mut ChaCha8Rng, not: i16) -> i16 {
    loop {
        let o = COUNTRIES[rng.random_range(0..COUNTRIES.len())].utc_offset_min;
        if o != not {
            return o;
        }
    }
}

/// (a) A ring: member accounts that also live ordinary lives share a pool of
/// devices and IPs and hit the same few merchants.
fn ring(world: &mut World, d: &Difficulty, rng: &mut ChaCha8Rng, out: &mut Vec<Event>) {
    let k = rng.random_range(d.ring_size_min..=d.ring_size_max) as usize;
    let members = accounts(world, rng, k, &[]);
    let k = members.len();
    let n_dev = (k as f64 / d.ring_accounts_per_device).ceil().max(1.0) as usize;
    let n_ip = (k as f64 / d.ring_accounts_per_ip).ceil().max(1.0) as usize;
    let devices: Vec<u32> = (0..n_dev).map(|_| world.alloc.device()).collect();
    let ips: Vec<u32> = (0..n_ip).map(|_| world.alloc.ip()).collect();
    let country = world.accounts[members[0] as usize].country as usize;
    let ring_offset = COUNTRIES[rng.random_range(0..COUNTRIES.len())].utc_offset_min;
    let targets: Vec<u32> = (0..rng.random_range(2..=4))
        .map(|_| resellable_merchant(world, rng, country))
        .collect();
    let len = rng.random_range(7..=21) * DAY_MS;
    let begin = window(world, rng, 0.1, len);
    let n = k * rng.random_range(3..=8);
    for _ in 0..n {
        let slot = rng.random_range(0..k);
        let m = members[slot];
        let camouflaged = rng.random_bool(d.camouflage);
        let home = &world.accounts[m as usize];
        let merchant = if rng.random_bool(0.8) {
            *targets.choose(rng).expect("non-empty")
        } else {
            resellable_merchant(world, rng, country)
        };
        let time = if camouflaged {
            // Inside the window, at the member's usual hour.
            let t = local_time(world, rng, m, 1) - world.start_ms;
            begin + (t % DAY_MS) + rng.random_range(0..len / DAY_MS) * DAY_MS
        } else {
            between(rng, begin, begin + len)
        };
        let channel = if rng.random_bool(0.7) {
            ECOMMERCE
        } else {
            MOBILE_APP
        };
        let mut e = Event::new(wrap(world, time), m, merchant, channel);
        let scale = f64::from(home.spend_scale) * d.ring_amount_factor;
        e.amount_minor = world.amount(rng, merchant, scale);
        e.card = home.cards[0];
        if camouflaged {
            e.device = world.phone(m, time);
            e.ip = world.home_ip(m);
            e.utc_offset_min = COUNTRIES[home.country as usize].utc_offset_min;
        } else {
            // Each member has its own slice of the pool, overlapping its neighbours'.
            e.device = devices[(slot + rng.random_range(0..2)) % n_dev];
            e.ip = ips[(slot * 7 + rng.random_range(0..2)) % n_ip];
            e.utc_offset_min = ring_offset;
        }
        out.push(e);
    }
}

/// (b) Mules: scammed victims pay into accounts a herder has recruited. Each mule is an
/// ordinary account with its own history and contacts. The herder takes it over before the
/// victims pay (a small first payment from one of the herder's devices and IPs), and each
/// mule receives from only one to three victims, a fan-in its own contacts could give it.
/// So a victim's payment looks unremarkable one hop out; two and three hops out the
/// receiver's devices lead to the herder's, shared by every mule of the network. The mules
/// then pass money on to each other and cash out at crypto merchants (fan-out).
fn mule(
    world: &mut World,
    d: &Difficulty,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
    all_mules: &mut Vec<u32>,
) {
    let n_victims = rng.random_range(d.mule_victims_min..=d.mule_victims_max) as usize;
    // About two victims per mule.
    let n_mules = (n_victims / 2).clamp(2, 8);
    let mules = accounts(world, rng, n_mules, &[]);
    let herder_devices: Vec<u32> = (0..rng.random_range(1..=2))
        .map(|_| world.alloc.device())
        .collect();
    let herder_ips: Vec<u32> = (0..rng.random_range(1..=2))
        .map(|_| world.alloc.ip())
        .collect();
    let victims = accounts(world, rng, n_victims, &mules);
    let len = rng.random_range(3..=10) * DAY_MS;
    let begin = window(world, rng, 0.1, len);
    let mut received = vec![0u32; mules.len()];

    // The takeover: each mule's first payment from the herder's side, in the day before.
    for &m in &mules {
        let a = &world.accounts[m as usize];
        let country = a.country as usize;
        let time = between(rng, begin - DAY_MS, begin);
        let merchant = world.pick_merchant(rng, DIGITAL_GOODS, country);
        let mut e = Event::new(time, m, merchant, ECOMMERCE);
        e.amount_minor = world.amount(rng, merchant, 0.5 * f64::from(a.spend_scale));
        e.card = a.cards[0];
        e.device = *herder_devices.choose(rng).expect("non-empty");
        e.ip = *herder_ips.choose(rng).expect("non-empty");
        e.utc_offset_min = COUNTRIES[country].utc_offset_min;
        out.push(e);
    }
    for (k, &v) in victims.iter().enumerate() {
        // Spread evenly, so no mule collects a conspicuous fan-in.
        let to = k % mules.len();
        received[to] += 1;
        let a = &world.accounts[v as usize];
        let country = a.country as usize;
        let time = between(rng, begin, begin + len * 2 / 3);
        let merchant = world.pick_merchant(rng, P2P, country);
        let mut e = Event::new(time, v, merchant, TRANSFER);
        e.amount_minor = world.amount(rng, merchant, 2.0 * f64::from(a.spend_scale));
        e.device = world.phone(v, time);
        e.ip = world.home_ip(v);
        e.utc_offset_min = COUNTRIES[country].utc_offset_min;
        e.counterparty = mules[to];
        out.push(e);
    }
    for (i, &m) in mules.iter().enumerate() {
        let outgoing = (received[i] / 3).max(1) + rng.random_range(0..=1);
        let a = &world.accounts[m as usize];
        let country = a.country as usize;
        for _ in 0..outgoing {
            let time = between(rng, begin + len / 3, begin + len);
            let camouflaged = rng.random_bool(d.camouflage);
            let onward = mules.len() > 1 && rng.random_bool(0.4);
            let mut e = if onward {
                let to = mules[(i + 1) % mules.len()];
                let merchant = world.pick_merchant(rng, P2P, country);
                let mut e = Event::new(time, m, merchant, TRANSFER);
                e.counterparty = to;
                e
            } else {
                let merchant = world.pick_merchant(rng, CRYPTO, country);
                let mut e = Event::new(time, m, merchant, ECOMMERCE);
                e.card = a.cards[0];
                e
            };
            e.amount_minor = world.amount(rng, e.merchant, 2.0 * f64::from(a.spend_scale));
            if camouflaged {
                e.device = world.phone(m, time);
                e.ip = world.home_ip(m);
            } else {
                e.device = *herder_devices.choose(rng).expect("non-empty");
                e.ip = *herder_ips.choose(rng).expect("non-empty");
            }
            e.utc_offset_min = COUNTRIES[country].utc_offset_min;
            out.push(e);
        }
    }
    all_mules.extend(mules);
}

/// (c) Account takeover: one actor's devices and IPs take over a few old,
/// active accounts, paying at night in the owners' time zones.
fn takeover(world: &mut World, rng: &mut ChaCha8Rng, out: &mut Vec<Event>, mules: &[u32]) {
    let devices: Vec<u32> = (0..rng.random_range(1..=2))
        .map(|_| world.alloc.device())
        .collect();
    let ips: Vec<u32> = (0..rng.random_range(1..=3))
        .map(|_| world.alloc.ip())
        .collect();
    let actor_offset = COUNTRIES[rng.random_range(0..COUNTRIES.len())].utc_offset_min;
    for _ in 0..rng.random_range(1..=4) {
        // Active accounts have the longest histories.
        let victim = world.activity.sample(rng) as u32;
        let a = &world.accounts[victim as usize];
        let home_offset = COUNTRIES[a.country as usize].utc_offset_min;
        let offset = if actor_offset == home_offset {
            other_offset(rng, home_offset)
        } else {
            actor_offset
        };
        let span = world.end_ms - world.start_ms;
        let day_start = window(world, rng, 0.3, DAY_MS);
        let day_start = day_start - (day_start - world.start_ms) % DAY_MS;
        // Between midnight and 5am at the victim's home.
        let t0 = day_start + rng.random_range(0..5 * HOUR_MS) - i64::from(home_offset) * 60_000;
        let t0 = world.start_ms + (t0 - world.start_ms).clamp(0, span - 6 * HOUR_MS);
        let country = a.country as usize;
        for _ in 0..rng.random_range(1..=6) {
            let time = t0 + rng.random_range(0..6 * HOUR_MS);
            let mut e = if !mules.is_empty() && rng.random_bool(0.3) {
                let merchant = world.pick_merchant(rng, P2P, country);
                let mut e = Event::new(time, victim, merchant, TRANSFER);
                e.counterparty = *mules.choose(rng).expect("non-empty");
                if e.counterparty == victim {
                    e.counterparty = (victim + 1) % world.accounts.len() as u32;
                }
                e
            } else {
                let merchant = resellable_merchant(world, rng, country);
                let mut e = Event::new(time, victim, merchant, ECOMMERCE);
                e.card = a.cards[0];
                e
            };
            let scale = f64::from(a.spend_scale) * rng.random_range(2.0..5.0);
            e.amount_minor = world.amount(rng, e.merchant, scale);
            e.device = *devices.choose(rng).expect("non-empty");
            e.ip = *ips.choose(rng).expect("non-empty");
            e.utc_offset_min = offset;
            out.push(e);
        }
    }
}

/// (d) Card testing: a burst of tiny payments at one small online merchant,
/// each with a different stolen card, from throwaway accounts on one or two
/// devices.
fn card_testing(world: &mut World, rng: &mut ChaCha8Rng, out: &mut Vec<Event>) {
    let country = rng.random_range(0..COUNTRIES.len());
    let cat = if rng.random_bool(0.5) {
        ONLINE_RETAIL
    } else {
        DIGITAL_GOODS
    };
    let (ids, _) = &world.merchant_index[cat][country];
    let merchant = ids[rng.random_range(0..ids.len())];
    let devices: Vec<u32> = (0..rng.random_range(1..=2))
        .map(|_| world.alloc.device())
        .collect();
    let ips: Vec<u32> = (0..rng.random_range(1..=2))
        .map(|_| world.alloc.ip())
        .collect();
    let throwaway: Vec<u32> = (0..rng.random_range(1..=4))
        .map(|_| world.alloc.account())
        .collect();
    let offset = COUNTRIES[rng.random_range(0..COUNTRIES.len())].utc_offset_min;
    let t0 = window(world, rng, 0.05, HOUR_MS);
    let per_cent = COUNTRIES[country].per_eur_cent;
    for _ in 0..rng.random_range(10..=40) {
        let mut e = Event::new(
            t0 + rng.random_range(0..45 * 60_000),
            *throwaway.choose(rng).expect("non-empty"),
            merchant,
            ECOMMERCE,
        );
        e.amount_minor = ((rng.random_range(50.0..300.0) * per_cent).round() as i64).max(1);
        e.card = world.alloc.card();
        e.device = *devices.choose(rng).expect("non-empty");
        e.ip = *ips.choose(rng).expect("non-empty");
        e.utc_offset_min = offset;
        out.push(e);
    }
}

/// (e) Bust-out: an account with a long good history suddenly spends far
/// above its habit on resellable goods, from its own device and home.
fn bust_out(world: &mut World, rng: &mut ChaCha8Rng, out: &mut Vec<Event>) {
    let account = world.activity.sample(rng) as u32;
    let a = &world.accounts[account as usize];
    let country = a.country as usize;
    let len = rng.random_range(1..=5) * DAY_MS;
    let begin = window(world, rng, 0.6, len);
    for _ in 0..rng.random_range(4..=12) {
        let time = between(rng, begin, begin + len);
        let merchant = resellable_merchant(world, rng, country);
        let cat = &CATEGORIES[world.merchants[merchant as usize].category as usize];
        let channel = if rng.random_bool(cat.channels[0]) {
            crate::world::CARD_PRESENT
        } else {
            ECOMMERCE
        };
        let mut e = Event::new(time, account, merchant, channel);
        let scale = f64::from(a.spend_scale) * rng.random_range(4.0..10.0);
        e.amount_minor = world.amount(rng, merchant, scale);
        e.card = a.cards[0];
        if channel == ECOMMERCE {
            e.device = world.phone(account, time);
            e.ip = world.home_ip(account);
            e.utc_offset_min = COUNTRIES[country].utc_offset_min;
        }
        out.push(e);
    }
}
