//! The knobs of the simulated world.
//!
//! Defaults give a realistic, moderately hard world: about 1% fraud, legit
//! behaviour that often looks suspicious on its own, and fraud whose strongest
//! signal sits several hops away in the graph. The difficulty knobs are listed
//! in `docs/SIMULATOR.md` with what each one does to the signal.

use serde::{Deserialize, Serialize};

/// Start of the default simulated period: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// Everything that shapes one simulated stream. Same config, same bytes.
///
/// In a config file, any field may be left out (its default applies) and an
/// unknown field is an error, so a misspelt knob is never silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Transactions to generate, legitimate and fraudulent together.
    pub transactions: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// First instant of the simulated period, Unix epoch milliseconds.
    pub start_ms: i64,
    /// Length of the simulated period in days.
    pub days: u32,
    /// Average transactions per account per day; sets the population size.
    pub txns_per_account_day: f64,
    /// Fraction of transactions that are fraud.
    pub fraud_rate: f64,
    /// Share of the fraud budget per typology.
    pub typology_mix: TypologyMix,
    /// How hard the fraud is to tell from legitimate behaviour.
    pub difficulty: Difficulty,
    /// Median days from a fraud transaction to its chargeback label.
    pub label_delay_median_days: f64,
}

/// Relative weights of the fraud typologies in the fraud budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypologyMix {
    /// Organised rings sharing devices and IPs.
    pub ring: f64,
    /// Money mules with fan-in and fan-out.
    pub mule: f64,
    /// Account takeovers.
    pub account_takeover: f64,
    /// Card-testing bursts.
    pub card_testing: f64,
    /// Bust-outs after a long good history.
    pub bust_out: f64,
}

/// The knobs that make fraud harder or easier to detect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Difficulty {
    /// Probability that a ring or mule fraud transaction uses the member's own
    /// device, IP and time-zone instead of the ring's shared pool. Higher hides
    /// the shared-entity signal. 0 to 1.
    pub camouflage: f64,
    /// Smallest ring, in member accounts.
    pub ring_size_min: u32,
    /// Largest ring, in member accounts.
    pub ring_size_max: u32,
    /// Ring members per shared ring device. Near household sizes (2 to 4)
    /// makes one device's degree look like a family tablet's, so only the
    /// wider structure gives the ring away.
    pub ring_accounts_per_device: f64,
    /// Ring members per shared ring IP.
    pub ring_accounts_per_ip: f64,
    /// Fraud amounts as a multiple of the typical amount at the merchant.
    /// 1 makes amounts uninformative.
    pub ring_amount_factor: f64,
    /// Fewest victims paying into one mule network.
    pub mule_victims_min: u32,
    /// Most victims paying into one mule network.
    pub mule_victims_max: u32,
    /// Legit: share of multi-person households that share a device.
    pub household_device_share: f64,
    /// Legit: share of accounts that also pay from a workplace IP shared with
    /// colleagues.
    pub workplace_ip_share: f64,
    /// Legit: share of accounts that travel abroad once in the period.
    pub travel_rate: f64,
    /// Legit: share of accounts that replace their phone during the period.
    pub device_upgrade_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            transactions: 100_000,
            seed: 1,
            start_ms: DEFAULT_START_MS,
            days: 90,
            txns_per_account_day: 0.5,
            fraud_rate: 0.01,
            typology_mix: TypologyMix::default(),
            difficulty: Difficulty::default(),
            label_delay_median_days: 12.0,
        }
    }
}

impl TypologyMix {
    /// The weights in proto `Typology` order (ring, mule, takeover, card
    /// testing, bust-out).
    pub fn weights(&self) -> [f64; 5] {
        [
            self.ring,
            self.mule,
            self.account_takeover,
            self.card_testing,
            self.bust_out,
        ]
    }
}

impl Default for TypologyMix {
    fn default() -> Self {
        TypologyMix {
            ring: 0.35,
            mule: 0.2,
            account_takeover: 0.2,
            card_testing: 0.15,
            bust_out: 0.1,
        }
    }
}

impl Default for Difficulty {
    fn default() -> Self {
        Difficulty {
            camouflage: 0.3,
            ring_size_min: 4,
            ring_size_max: 12,
            ring_accounts_per_device: 3.0,
            ring_accounts_per_ip: 3.0,
            ring_amount_factor: 1.3,
            mule_victims_min: 5,
            mule_victims_max: 20,
            household_device_share: 0.35,
            workplace_ip_share: 0.4,
            travel_rate: 0.08,
            device_upgrade_rate: 0.25,
        }
    }
}

/// A config value out of range; names the knob.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{knob}: {message}")]
pub struct ConfigError {
    /// The knob's name, as in the config file and `docs/SIMULATOR.md`.
    pub knob: &'static str,
    /// What is wrong.
    pub message: String,
}

fn check(
    ok: bool,
    knob: &'static str,
    message: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            knob,
            message: message(),
        })
    }
}

fn probability(value: f64, knob: &'static str) -> Result<(), ConfigError> {
    check((0.0..=1.0).contains(&value), knob, || {
        format!("must be between 0 and 1, got {value}")
    })
}

impl SimConfig {
    /// Checks every knob; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.transactions >= 1, "transactions", || {
            "must be at least 1".into()
        })?;
        check(self.transactions <= 1 << 32, "transactions", || {
            format!("must be at most {}", 1u64 << 32)
        })?;
        check(
            self.start_ms > fraudgraph_proto::validate::MIN_EVENT_TIME_MS,
            "start_ms",
            || "must be after 2000-01-01".into(),
        )?;
        check((1..=3650).contains(&self.days), "days", || {
            format!("must be 1 to 3650, got {}", self.days)
        })?;
        check(
            self.txns_per_account_day > 0.0 && self.txns_per_account_day.is_finite(),
            "txns_per_account_day",
            || format!("must be positive, got {}", self.txns_per_account_day),
        )?;
        check((0.0..0.5).contains(&self.fraud_rate), "fraud_rate", || {
            format!("must be at least 0 and below 0.5, got {}", self.fraud_rate)
        })?;
        let weights = self.typology_mix.weights();
        check(
            weights.iter().all(|w| *w >= 0.0 && w.is_finite()) && weights.iter().sum::<f64>() > 0.0,
            "typology_mix",
            || "weights must be non-negative and not all zero".into(),
        )?;
        let d = &self.difficulty;
        probability(d.camouflage, "difficulty.camouflage")?;
        probability(
            d.household_device_share,
            "difficulty.household_device_share",
        )?;
        probability(d.workplace_ip_share, "difficulty.workplace_ip_share")?;
        probability(d.travel_rate, "difficulty.travel_rate")?;
        probability(d.device_upgrade_rate, "difficulty.device_upgrade_rate")?;
        check(
            d.ring_size_min >= 2 && d.ring_size_min <= d.ring_size_max && d.ring_size_max <= 200,
            "difficulty.ring_size_min",
            || "ring sizes must satisfy 2 <= ring_size_min <= ring_size_max <= 200".into(),
        )?;
        check(
            d.ring_accounts_per_device >= 1.0,
            "difficulty.ring_accounts_per_device",
            || "must be at least 1".into(),
        )?;
        check(
            d.ring_accounts_per_ip >= 1.0,
            "difficulty.ring_accounts_per_ip",
            || "must be at least 1".into(),
        )?;
        check(
            d.ring_amount_factor > 0.0 && d.ring_amount_factor.is_finite(),
            "difficulty.ring_amount_factor",
            || "must be positive".into(),
        )?;
        check(
            d.mule_victims_min >= 1 && d.mule_victims_min <= d.mule_victims_max,
            "difficulty.mule_victims_min",
            || "must satisfy 1 <= mule_victims_min <= mule_victims_max".into(),
        )?;
        check(
            self.label_delay_median_days > 0.0 && self.label_delay_median_days <= 120.0,
            "label_delay_median_days",
            || "must be above 0 and at most 120".into(),
        )?;
        Ok(())
    }
}
