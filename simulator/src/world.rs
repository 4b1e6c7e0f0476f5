//! The population: countries, merchants, households, accounts, devices, IPs
//! and cards, with the habits legitimate behaviour draws from.
//!
//! Entities are plain indices; [`crate::ids`] turns them into opaque strings
//! only when records are rendered.

use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand_chacha::ChaCha8Rng;
use rand_distr::{LogNormal, Normal};

use crate::config::SimConfig;

/// Marks an absent optional entity in compact events.
pub(crate) const NONE: u32 = u32::MAX;

/// A country accounts live in and merchants sell from.
pub(crate) struct Country {
    pub code: &'static str,
    pub utc_offset_min: i16,
    pub currency: &'static str,
    /// Minor units of `currency` per euro cent.
    pub per_eur_cent: f64,
    /// Share of the account population.
    pub weight: f64,
}

/// Two US entries: the coasts live in different time zones.
pub(crate) const COUNTRIES: &[Country] = &[
    Country {
        code: "US",
        utc_offset_min: -300,
        currency: "USD",
        per_eur_cent: 1.1,
        weight: 0.25,
    },
    Country {
        code: "US",
        utc_offset_min: -480,
        currency: "USD",
        per_eur_cent: 1.1,
        weight: 0.12,
    },
    Country {
        code: "GB",
        utc_offset_min: 0,
        currency: "GBP",
        per_eur_cent: 0.85,
        weight: 0.12,
    },
    Country {
        code: "DE",
        utc_offset_min: 60,
        currency: "EUR",
        per_eur_cent: 1.0,
        weight: 0.12,
    },
    Country {
        code: "FR",
        utc_offset_min: 60,
        currency: "EUR",
        per_eur_cent: 1.0,
        weight: 0.08,
    },
    Country {
        code: "ES",
        utc_offset_min: 60,
        currency: "EUR",
        per_eur_cent: 1.0,
        weight: 0.06,
    },
    Country {
        code: "IN",
        utc_offset_min: 330,
        currency: "INR",
        per_eur_cent: 90.0,
        weight: 0.08,
    },
    Country {
        code: "BR",
        utc_offset_min: -180,
        currency: "BRL",
        per_eur_cent: 5.5,
        weight: 0.06,
    },
    Country {
        code: "JP",
        utc_offset_min: 540,
        currency: "JPY",
        per_eur_cent: 1.6,
        weight: 0.05,
    },
    Country {
        code: "AU",
        utc_offset_min: 600,
        currency: "AUD",
        per_eur_cent: 1.65,
        weight: 0.04,
    },
    Country {
        code: "MX",
        utc_offset_min: -360,
        currency: "MXN",
        per_eur_cent: 19.0,
        weight: 0.02,
    },
];

/// What a merchant sells, and how people pay there.
pub(crate) struct Category {
    pub mcc: u32,
    /// Channel shares: card present, e-commerce, mobile app, transfer.
    pub channels: [f64; 4],
    /// Median amount in euro cents.
    pub median_eur_cents: f64,
    /// Log-normal spread of amounts.
    pub sigma: f64,
    /// Share of legitimate spending.
    pub weight: f64,
}

pub(crate) const GROCERY: usize = 0;
pub(crate) const RESTAURANTS: usize = 1;
pub(crate) const FUEL: usize = 2;
pub(crate) const ONLINE_RETAIL: usize = 3;
pub(crate) const ELECTRONICS: usize = 4;
pub(crate) const DIGITAL_GOODS: usize = 5;
pub(crate) const TRAVEL: usize = 6;
pub(crate) const JEWELRY: usize = 8;
pub(crate) const CRYPTO: usize = 9;
pub(crate) const P2P: usize = 10;

pub(crate) const CATEGORIES: &[Category] = &[
    Category {
        mcc: 5411,
        channels: [0.9, 0.05, 0.05, 0.0],
        median_eur_cents: 3500.0,
        sigma: 0.7,
        weight: 0.25,
    },
    Category {
        mcc: 5812,
        channels: [0.85, 0.0, 0.15, 0.0],
        median_eur_cents: 2500.0,
        sigma: 0.6,
        weight: 0.20,
    },
    Category {
        mcc: 5541,
        channels: [1.0, 0.0, 0.0, 0.0],
        median_eur_cents: 5000.0,
        sigma: 0.4,
        weight: 0.10,
    },
    Category {
        mcc: 5999,
        channels: [0.0, 0.7, 0.3, 0.0],
        median_eur_cents: 4500.0,
        sigma: 0.9,
        weight: 0.18,
    },
    Category {
        mcc: 5732,
        channels: [0.3, 0.7, 0.0, 0.0],
        median_eur_cents: 25000.0,
        sigma: 0.8,
        weight: 0.04,
    },
    Category {
        mcc: 5815,
        channels: [0.0, 0.5, 0.5, 0.0],
        median_eur_cents: 1500.0,
        sigma: 0.8,
        weight: 0.06,
    },
    Category {
        mcc: 4511,
        channels: [0.0, 0.9, 0.1, 0.0],
        median_eur_cents: 30000.0,
        sigma: 0.6,
        weight: 0.02,
    },
    Category {
        mcc: 4899,
        channels: [0.0, 0.5, 0.5, 0.0],
        median_eur_cents: 1200.0,
        sigma: 0.4,
        weight: 0.06,
    },
    Category {
        mcc: 5944,
        channels: [0.6, 0.4, 0.0, 0.0],
        median_eur_cents: 40000.0,
        sigma: 0.7,
        weight: 0.01,
    },
    Category {
        mcc: 6051,
        channels: [0.0, 0.6, 0.4, 0.0],
        median_eur_cents: 20000.0,
        sigma: 1.0,
        weight: 0.01,
    },
    Category {
        mcc: 4829,
        channels: [0.0, 0.0, 0.0, 1.0],
        median_eur_cents: 6000.0,
        sigma: 0.9,
        weight: 0.07,
    },
];

/// Channel indices, matching `Category::channels` and the proto enum.
pub(crate) const CARD_PRESENT: u8 = 1;
pub(crate) const ECOMMERCE: u8 = 2;
pub(crate) const MOBILE_APP: u8 = 3;
pub(crate) const TRANSFER: u8 = 4;

/// The merchants of one category in one country, with popularity weights
/// (`None` when there is only one).
pub(crate) type MerchantPool = (Vec<u32>, Option<WeightedIndex<f64>>);

pub(crate) struct Merchant {
    pub category: u8,
    pub country: u8,
}

pub(crate) struct Household {
    pub home_ip: u32,
    pub shared_device: u32,
}

pub(crate) struct Account {
    pub country: u8,
    pub household: u32,
    /// Local hour around which this account pays.
    pub peak_hour: f32,
    /// Multiplier of typical amounts.
    pub spend_scale: f32,
    pub primary_device: u32,
    pub secondary_device: u32,
    /// A new phone from `upgrade_at_ms` on, or NONE.
    pub upgraded_device: u32,
    pub upgrade_at_ms: i64,
    pub cards: [u32; 2],
    pub carrier: u8,
    pub workplace_ip: u32,
    pub favorites: Vec<u32>,
    pub contacts: Vec<u32>,
    /// A trip abroad: destination country and [start, end) in ms, or none.
    pub trip: Option<(u8, i64, i64)>,
}

/// Entity counters: every device, IP, card and account ever handed out.
#[derive(Default)]
pub(crate) struct Allocator {
    pub devices: u32,
    pub ips: u32,
    pub cards: u32,
    pub accounts: u32,
}

impl Allocator {
    pub(crate) fn device(&mut self) -> u32 {
        self.devices += 1;
        self.devices - 1
    }
    pub(crate) fn ip(&mut self) -> u32 {
        self.ips += 1;
        self.ips - 1
    }
    pub(crate) fn card(&mut self) -> u32 {
        self.cards += 1;
        self.cards - 1
    }
    pub(crate) fn account(&mut self) -> u32 {
        self.accounts += 1;
        self.accounts - 1
    }
}

/// The whole population and the indices to sample from it.
pub(crate) struct World {
    pub start_ms: i64,
    pub end_ms: i64,
    pub accounts: Vec<Account>,
    pub households: Vec<Household>,
    pub merchants: Vec<Merchant>,
    /// Merchants by [category][country], with popularity weights.
    pub merchant_index: Vec<Vec<MerchantPool>>,
    /// Mobile carrier NAT pools by [country][carrier]: many customers share each IP.
    pub carrier_ips: Vec<Vec<Vec<u32>>>,
    /// Public wifi / hotel IPs by country.
    pub public_ips: Vec<Vec<u32>>,
    pub activity: WeightedIndex<f64>,
    pub alloc: Allocator,
}

pub(crate) const DAY_MS: i64 = 86_400_000;
const CARRIERS_PER_COUNTRY: usize = 3;

pub(crate) fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, f64)]) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

impl World {
    /// Builds the population for `legit_txns` legitimate transactions.
    pub(crate) fn build(config: &SimConfig, legit_txns: u64, rng: &mut ChaCha8Rng) -> World {
        let d = &config.difficulty;
        let start_ms = config.start_ms;
        let end_ms = start_ms + i64::from(config.days) * DAY_MS;
        let mut alloc = Allocator::default();
        let n_accounts =
            ((legit_txns as f64 / (f64::from(config.days) * config.txns_per_account_day)) as u32)
                .max(200);
        let country_weights: Vec<(u8, f64)> = COUNTRIES
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u8, c.weight))
            .collect();

        // Merchants: every (category, country) pair gets some, popular ones more.
        let n_merchants = (n_accounts / 15).max(60) as f64;
        let mut merchants = Vec::new();
        let mut merchant_index = Vec::new();
        let zipf_noise = LogNormal::new(0.0, 1.0).expect("valid parameters");
        for (cat_i, cat) in CATEGORIES.iter().enumerate() {
            let mut by_country = Vec::new();
            for (country_i, country) in COUNTRIES.iter().enumerate() {
                let count = if cat_i == P2P {
                    2
                } else {
                    ((n_merchants * cat.weight * country.weight).round() as usize).max(1)
                };
                let mut ids = Vec::with_capacity(count);
                let mut weights = Vec::with_capacity(count);
                for rank in 0..count {
                    ids.push(merchants.len() as u32);
                    merchants.push(Merchant {
                        category: cat_i as u8,
                        country: country_i as u8,
                    });
                    weights.push(zipf_noise.sample(rng) / (rank as f64 + 1.0).powf(0.9));
                }
                let index = WeightedIndex::new(&weights).ok();
                by_country.push((ids, index));
            }
            merchant_index.push(by_country);
        }

        // Mobile carrier NAT pools (about 60 customers per IP) and public IPs.
        let mut carrier_ips = Vec::new();
        let mut public_ips = Vec::new();
        for country in COUNTRIES {
            let customers = f64::from(n_accounts) * country.weight / CARRIERS_PER_COUNTRY as f64;
            let pool = ((customers / 60.0) as usize).max(2);
            carrier_ips.push(
                (0..CARRIERS_PER_COUNTRY)
                    .map(|_| (0..pool).map(|_| alloc.ip()).collect())
                    .collect(),
            );
            let public = ((f64::from(n_accounts) * country.weight / 100.0) as usize).max(5);
            public_ips.push((0..public).map(|_| alloc.ip()).collect());
        }

        // Households of 1 to 4 accounts.
        let mut households: Vec<Household> = Vec::new();
        let mut accounts: Vec<Account> = Vec::with_capacity(n_accounts as usize);
        let peak = Normal::new(15.0f32, 3.0).expect("valid parameters");
        let spend = LogNormal::new(0.0f32, 0.5).expect("valid parameters");
        let sizes = [(1u32, 0.65), (2, 0.2), (3, 0.1), (4, 0.05)];
        // Workplaces: shared corporate IPs of 5 to ~200 colleagues.
        let mut workplaces: Vec<Vec<(u32, f64)>> = vec![Vec::new(); COUNTRIES.len()];
        for (country_i, country) in COUNTRIES.iter().enumerate() {
            let n = ((f64::from(n_accounts) * country.weight * d.workplace_ip_share / 30.0)
                as usize)
                .max(1);
            for rank in 0..n {
                workplaces[country_i].push((alloc.ip(), 1.0 / (rank as f64 + 1.0)));
            }
        }
        while (accounts.len() as u32) < n_accounts {
            let size = weighted(rng, &sizes).min(n_accounts - accounts.len() as u32);
            let country = weighted(rng, &country_weights);
            let household = households.len() as u32;
            let shared_device = if size > 1 && rng.random_bool(d.household_device_share) {
                alloc.device()
            } else {
                NONE
            };
            households.push(Household {
                home_ip: alloc.ip(),
                shared_device,
            });
            for _ in 0..size {
                let index = alloc.account();
                debug_assert_eq!(index as usize, accounts.len());
                let upgraded = rng.random_bool(d.device_upgrade_rate);
                let trip = rng.random_bool(d.travel_rate).then(|| {
                    let mut dest = weighted(rng, &country_weights);
                    if COUNTRIES[dest as usize].code == COUNTRIES[country as usize].code {
                        dest = ((dest as usize + 3) % COUNTRIES.len()) as u8;
                    }
                    let len = rng.random_range(3..=12) * DAY_MS;
                    let begin = rng.random_range(start_ms..(end_ms - len).max(start_ms + 1));
                    (dest, begin, begin + len)
                });
                accounts.push(Account {
                    country,
                    household,
                    peak_hour: peak.sample(rng).clamp(7.0, 22.0),
                    spend_scale: spend.sample(rng),
                    primary_device: alloc.device(),
                    secondary_device: if rng.random_bool(0.3) {
                        alloc.device()
                    } else {
                        NONE
                    },
                    upgraded_device: if upgraded { alloc.device() } else { NONE },
                    upgrade_at_ms: if upgraded {
                        rng.random_range(start_ms..end_ms)
                    } else {
                        i64::MAX
                    },
                    cards: [
                        alloc.card(),
                        if rng.random_bool(0.3) {
                            alloc.card()
                        } else {
                            NONE
                        },
                    ],
                    carrier: rng.random_range(0..CARRIERS_PER_COUNTRY) as u8,
                    workplace_ip: if rng.random_bool(d.workplace_ip_share) {
                        weighted(rng, &workplaces[country as usize])
                    } else {
                        NONE
                    },
                    favorites: Vec::new(),
                    contacts: Vec::new(),
                    trip,
                });
            }
        }

        let mut world = World {
            start_ms,
            end_ms,
            accounts,
            households,
            merchants,
            merchant_index,
            carrier_ips,
            public_ips,
            activity: WeightedIndex::new([1.0]).expect("one positive weight"),
            alloc,
        };

        // Habits: favourite merchants near home, and contacts for transfers
        // (household members first, then people in the same country).
        let everyday = [GROCERY, RESTAURANTS, FUEL, ONLINE_RETAIL, 7];
        for a in 0..world.accounts.len() {
            let country = world.accounts[a].country as usize;
            let n_fav = rng.random_range(3..=8);
            let favorites: Vec<u32> = (0..n_fav)
                .map(|_| {
                    let cat = everyday[rng.random_range(0..everyday.len())];
                    world.pick_merchant(rng, cat, country)
                })
                .collect();
            let household = world.accounts[a].household;
            let mut contacts: Vec<u32> = (a.saturating_sub(3)..(a + 4).min(world.accounts.len()))
                .filter(|&b| b != a && world.accounts[b].household == household)
                .map(|b| b as u32)
                .collect();
            for _ in 0..rng.random_range(0..=3) {
                let b = rng.random_range(0..world.accounts.len());
                if b != a {
                    contacts.push(b as u32);
                }
            }
            world.accounts[a].favorites = favorites;
            world.accounts[a].contacts = contacts;
        }

        let activity = LogNormal::new(0.0, 0.8).expect("valid parameters");
        let weights: Vec<f64> = (0..world.accounts.len())
            .map(|_| activity.sample(rng))
            .collect();
        world.activity = WeightedIndex::new(&weights).expect("positive weights");
        world
    }

    /// A merchant of `category` in `country`, by popularity.
    pub(crate) fn pick_merchant(
        &self,
        rng: &mut ChaCha8Rng,
        category: usize,
        country: usize,
    ) -> u32 {
        let (ids, index) = &self.merchant_index[category][country];
        match index {
            Some(index) => ids[index.sample(rng)],
            None => ids[rng.random_range(0..ids.len())],
        }
    }

    /// The phone an account uses at `time_ms` (a new one after an upgrade).
    pub(crate) fn phone(&self, account: u32, time_ms: i64) -> u32 {
        let a = &self.accounts[account as usize];
        if a.upgraded_device != NONE && time_ms >= a.upgrade_at_ms {
            a.upgraded_device
        } else {
            a.primary_device
        }
    }

    /// A carrier NAT IP of the account's mobile carrier in `country`.
    pub(crate) fn carrier_ip(&self, rng: &mut ChaCha8Rng, account: u32, country: usize) -> u32 {
        let pool = &self.carrier_ips[country][self.accounts[account as usize].carrier as usize];
        pool[rng.random_range(0..pool.len())]
    }

    /// A public wifi or hotel IP in `country`.
    pub(crate) fn public_ip(&self, rng: &mut ChaCha8Rng, country: usize) -> u32 {
        let pool = &self.public_ips[country];
        pool[rng.random_range(0..pool.len())]
    }

    /// The home broadband IP of an account's household.
    pub(crate) fn home_ip(&self, account: u32) -> u32 {
        self.households[self.accounts[account as usize].household as usize].home_ip
    }

    /// A typical amount at a merchant for an account, in the merchant's
    /// currency's minor units.
    pub(crate) fn amount(&self, rng: &mut ChaCha8Rng, merchant: u32, scale: f64) -> i64 {
        let m = &self.merchants[merchant as usize];
        let cat = &CATEGORIES[m.category as usize];
        let dist = LogNormal::new((cat.median_eur_cents * scale).ln(), cat.sigma)
            .expect("valid parameters");
        let eur_cents: f64 = dist.sample(rng);
        ((eur_cents * COUNTRIES[m.country as usize].per_eur_cent).round() as i64).max(1)
    }

    /// A channel for a payment at a merchant, drawn from its category's mix.
    pub(crate) fn channel(&self, rng: &mut ChaCha8Rng, merchant: u32) -> u8 {
        let shares = CATEGORIES[self.merchants[merchant as usize].category as usize].channels;
        let items = [
            (CARD_PRESENT, shares[0]),
            (ECOMMERCE, shares[1]),
            (MOBILE_APP, shares[2]),
            (TRANSFER, shares[3]),
        ];
        weighted(rng, &items)
    }
}
