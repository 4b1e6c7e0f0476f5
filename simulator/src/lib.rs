//! The simulated payment world behind `fraudgraph simulate`.
//!
//! No public fraud dataset has devices and IPs, so fraudgraph makes its own.
//! [`Simulation::generate`] builds a seeded population (`world`) with
//! legitimate habits that often look suspicious on their own (`legit`),
//! plants five fraud typologies (`fraud`), orders everything in time, and
//! schedules each fraud's chargeback label days later. [`Simulation::records`]
//! then renders the stream as contract messages ([`StreamRecord`]s),
//! transactions and late labels interleaved in time order.
//!
//! The same [`SimConfig`] always gives the same records, byte for byte.

pub mod config;
mod event;
mod fraud;
mod ids;
mod legit;
mod world;

use std::collections::BTreeMap;

use fraudgraph_proto::v1::{Label, StreamRecord, Transaction, Typology, stream_record::Record};
use rand::distr::Distribution;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::LogNormal;
use serde::Serialize;

pub use config::{ConfigError, Difficulty, SimConfig, TypologyMix};
use event::Event;
use ids::{IdFactory, Kind};
use world::{COUNTRIES, DAY_MS, NONE, World};

/// Independent random streams, so changing one phase leaves the others alone.
const STREAM_WORLD: u64 = 1;
const STREAM_LEGIT: u64 = 2;
const STREAM_FRAUD: u64 = 3;
const STREAM_LABELS: u64 = 4;

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A generated stream, held compactly; render it with [`Simulation::records`].
pub struct Simulation {
    world: World,
    ids: IdFactory,
    /// All transactions, in time order.
    events: Vec<Event>,
    /// (reported_at_ms, index into `events`) of every label, in time order.
    labels: Vec<(i64, u32)>,
    summary: Summary,
}

/// What a simulation produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Transactions generated.
    pub transactions: u64,
    /// Of which fraud.
    pub fraud: u64,
    /// Fraud transactions per typology (proto names).
    pub fraud_by_typology: BTreeMap<String, u64>,
    /// Labels generated (one per fraud transaction).
    pub labels: u64,
    /// Distinct accounts that appear in transactions (payers or receivers).
    pub accounts: u64,
    /// Distinct devices used.
    pub devices: u64,
    /// Distinct IPs used.
    pub ips: u64,
    /// Distinct merchants used.
    pub merchants: u64,
    /// Distinct cards used.
    pub cards: u64,
    /// Earliest transaction time, Unix ms.
    pub first_event_ms: i64,
    /// Latest transaction time, Unix ms.
    pub last_event_ms: i64,
    /// Latest label time, Unix ms (labels trail the transactions).
    pub last_label_ms: i64,
}

/// Splits `total` across `weights` exactly, largest remainders first.
fn apportion(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let short = total - out.iter().sum::<u64>();
    for &i in order.iter().take(short as usize) {
        out[i] += 1;
    }
    out
}

fn count_distinct(values: impl Iterator<Item = u32>, universe: u32) -> u64 {
    let mut seen = vec![false; universe as usize];
    let mut n = 0;
    for v in values.filter(|v| *v != NONE) {
        if !std::mem::replace(&mut seen[v as usize], true) {
            n += 1;
        }
    }
    n
}

impl Simulation {
    /// Generates the whole stream for `config` (validated first).
    ///
    /// Memory is about 80 bytes per transaction; rendering is lazy.
    pub fn generate(config: &SimConfig) -> Result<Simulation, ConfigError> {
        config.validate()?;
        let n = config.transactions;
        let n_fraud = (n as f64 * config.fraud_rate).round() as u64;
        let weights = config.typology_mix.weights();
        let budget: [u64; fraud::TYPOLOGIES] = apportion(n_fraud, &weights)
            .try_into()
            .expect("one budget per typology");

        let mut world = World::build(config, n - n_fraud, &mut rng_for(config.seed, STREAM_WORLD));
        let mut rng = rng_for(config.seed, STREAM_LEGIT);
        let mut events: Vec<Event> = Vec::with_capacity(n as usize);
        for _ in 0..n - n_fraud {
            events.push(legit::transaction(&world, &mut rng, config.days));
        }
        let fraud_events = fraud::plant(
            &mut world,
            &config.difficulty,
            &mut rng_for(config.seed, STREAM_FRAUD),
            budget,
        );
        events.extend(fraud_events);
        // Time order; ties keep generation order, which is itself seeded.
        events.sort_by_key(|e| e.time_ms);

        let mut rng = rng_for(config.seed, STREAM_LABELS);
        let delay = LogNormal::new((config.label_delay_median_days * DAY_MS as f64).ln(), 0.6)
            .expect("valid parameters");
        let mut labels: Vec<(i64, u32)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.typology != 0)
            .map(|(i, e)| {
                let d = (delay.sample(&mut rng) as i64).clamp(DAY_MS, 120 * DAY_MS);
                // Jitter within the second so labels of a burst do not tie.
                (e.time_ms + d + rng.random_range(0..1000), i as u32)
            })
            .collect();
        labels.sort();

        let summary = Self::summarize(&world, &events, &labels);
        Ok(Simulation {
            world,
            ids: IdFactory::new(config.seed),
            events,
            labels,
            summary,
        })
    }

    fn summarize(world: &World, events: &[Event], labels: &[(i64, u32)]) -> Summary {
        let mut by_typology = BTreeMap::new();
        for t in 1..=fraud::TYPOLOGIES as i32 {
            let name = Typology::try_from(t).expect("known typology").as_str_name();
            by_typology.insert(name.to_owned(), 0);
        }
        for e in events.iter().filter(|e| e.typology != 0) {
            let name = Typology::try_from(i32::from(e.typology))
                .expect("known typology")
                .as_str_name();
            *by_typology.get_mut(name).expect("inserted above") += 1;
        }
        let a = &world.alloc;
        Summary {
            transactions: events.len() as u64,
            fraud: labels.len() as u64,
            fraud_by_typology: by_typology,
            labels: labels.len() as u64,
            accounts: count_distinct(
                events.iter().flat_map(|e| [e.account, e.counterparty]),
                a.accounts,
            ),
            devices: count_distinct(events.iter().map(|e| e.device), a.devices),
            ips: count_distinct(events.iter().map(|e| e.ip), a.ips),
            merchants: count_distinct(
                events.iter().map(|e| e.merchant),
                world.merchants.len() as u32,
            ),
            cards: count_distinct(events.iter().map(|e| e.card), a.cards),
            first_event_ms: events.first().map_or(0, |e| e.time_ms),
            last_event_ms: events.last().map_or(0, |e| e.time_ms),
            last_label_ms: labels.last().map_or(0, |l| l.0),
        }
    }

    /// Records in the stream: transactions plus labels.
    pub fn len(&self) -> u64 {
        (self.events.len() + self.labels.len()) as u64
    }

    /// True when there are no records (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was generated.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The stream in time order: each label comes after its transaction, at
    /// its `reported_at_ms`. Transactions carry no trace of their label.
    pub fn records(&self) -> impl Iterator<Item = StreamRecord> + '_ {
        let mut next_event = 0usize;
        let mut next_label = 0usize;
        std::iter::from_fn(move || {
            let event_time = self.events.get(next_event).map(|e| e.time_ms);
            let label = self.labels.get(next_label);
            let record = match (event_time, label) {
                (Some(t), Some(&(at, _))) if t <= at => {
                    next_event += 1;
                    Record::Transaction(self.transaction(next_event - 1))
                }
                (None, None) => return None,
                (Some(_), None) => {
                    next_event += 1;
                    Record::Transaction(self.transaction(next_event - 1))
                }
                (_, Some(&(at, index))) => {
                    next_label += 1;
                    Record::Label(self.label(at, index as usize))
                }
            };
            Some(StreamRecord {
                record: Some(record),
            })
        })
    }

    /// The transactions alone, in time order (what a replay applies).
    pub fn transactions(&self) -> impl Iterator<Item = Transaction> + '_ {
        (0..self.events.len()).map(|i| self.transaction(i))
    }

    fn transaction(&self, index: usize) -> Transaction {
        let e = &self.events[index];
        let ids = &self.ids;
        let merchant = &self.world.merchants[e.merchant as usize];
        let country = &COUNTRIES[merchant.country as usize];
        let opt = |kind, v: u32| (v != NONE).then(|| ids.id(kind, v));
        Transaction {
            txn_id: ids.id(Kind::Txn, index as u32),
            event_time_ms: e.time_ms,
            account_id: ids.id(Kind::Account, e.account),
            device_id: opt(Kind::Device, e.device),
            ip: opt(Kind::Ip, e.ip),
            merchant_id: ids.id(Kind::Merchant, e.merchant),
            card_id: opt(Kind::Card, e.card),
            amount_minor: e.amount_minor,
            currency: country.currency.to_owned(),
            mcc: world::CATEGORIES[merchant.category as usize].mcc,
            channel: i32::from(e.channel),
            country: country.code.to_owned(),
            counterparty_account_id: opt(Kind::Account, e.counterparty),
            client_utc_offset_minutes: (e.utc_offset_min != i16::MIN)
                .then_some(i32::from(e.utc_offset_min)),
        }
    }

    fn label(&self, reported_at_ms: i64, index: usize) -> Label {
        Label {
            txn_id: self.ids.id(Kind::Txn, index as u32),
            is_fraud: true,
            typology: i32::from(self.events[index].typology),
            reported_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact() {
        assert_eq!(
            apportion(10, &[0.35, 0.2, 0.2, 0.15, 0.1]),
            vec![4, 2, 2, 1, 1]
        );
        assert_eq!(apportion(0, &[1.0, 1.0]), vec![0, 0]);
        assert_eq!(apportion(7, &[1.0, 0.0, 1.0]).iter().sum::<u64>(), 7);
    }
}
