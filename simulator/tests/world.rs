//! Properties of the simulated stream that training, tests and benchmarks
//! rely on: determinism, configured rates, valid contract messages, no label
//! leakage, and fraud signal that lives in the graph.

use std::collections::{HashMap, HashSet};

use fraudgraph_proto::v1::{Label, StreamRecord, Transaction, stream_record::Record};
use fraudgraph_proto::{PayloadFormat, codec, validate};
use fraudgraph_simulator::{SimConfig, Simulation};

fn config(transactions: u64, seed: u64) -> SimConfig {
    SimConfig {
        transactions,
        seed,
        ..SimConfig::default()
    }
}

fn split(sim: &Simulation) -> (Vec<Transaction>, Vec<Label>) {
    let (mut txns, mut labels) = (Vec::new(), Vec::new());
    for r in sim.records() {
        match r.record.expect("every record is set") {
            Record::Transaction(t) => txns.push(t),
            Record::Label(l) => labels.push(l),
        }
    }
    (txns, labels)
}

fn bytes(sim: &Simulation, format: PayloadFormat) -> Vec<u8> {
    let mut out = Vec::new();
    for r in sim.records() {
        out.extend(codec::encode::<StreamRecord>(&r, format));
        out.push(b'\n');
    }
    out
}

#[test]
fn same_seed_gives_byte_identical_stream() {
    let a = Simulation::generate(&config(20_000, 7)).unwrap();
    let b = Simulation::generate(&config(20_000, 7)).unwrap();
    let c = Simulation::generate(&config(20_000, 8)).unwrap();
    for format in [PayloadFormat::Json, PayloadFormat::Protobuf] {
        let (ba, bb, bc) = (bytes(&a, format), bytes(&b, format), bytes(&c, format));
        assert!(ba == bb, "{format:?}: same seed, different bytes");
        assert!(ba != bc, "{format:?}: different seeds, same bytes");
    }
}

#[test]
fn counts_and_typology_rates_are_as_configured() {
    let mut cfg = config(50_000, 3);
    cfg.fraud_rate = 0.02;
    let sim = Simulation::generate(&cfg).unwrap();
    let (txns, labels) = split(&sim);
    assert_eq!(txns.len(), 50_000);
    assert!(
        sim.transactions().eq(txns.iter().cloned()),
        "transactions() is the stream's transactions"
    );
    assert_eq!(
        labels.len(),
        1_000,
        "2% of 50,000 are fraud, one label each"
    );
    let mut by_typology: HashMap<i32, usize> = HashMap::new();
    for l in &labels {
        assert!(l.is_fraud);
        *by_typology.entry(l.typology).or_default() += 1;
    }
    // Default mix 0.35 / 0.2 / 0.2 / 0.15 / 0.1 of 1,000.
    let expected = [(1, 350), (2, 200), (3, 200), (4, 150), (5, 100)];
    for (typology, want) in expected {
        assert_eq!(
            by_typology.get(&typology).copied().unwrap_or(0),
            want,
            "typology {typology}"
        );
    }
    let s = sim.summary();
    assert_eq!(s.transactions, 50_000);
    assert_eq!(s.fraud, 1_000);
    assert_eq!(s.fraud_by_typology["TYPOLOGY_RING"], 350);
    assert!(
        s.accounts > 500 && s.devices > 500 && s.merchants > 60,
        "{s:?}"
    );

    let mut custom = config(20_000, 3);
    custom.fraud_rate = 0.05;
    custom.typology_mix.ring = 1.0;
    custom.typology_mix.mule = 0.0;
    custom.typology_mix.account_takeover = 0.0;
    custom.typology_mix.card_testing = 0.0;
    custom.typology_mix.bust_out = 0.0;
    let s = Simulation::generate(&custom).unwrap().summary().clone();
    assert_eq!(s.fraud_by_typology["TYPOLOGY_RING"], 1_000);
    assert_eq!(s.fraud, 1_000);
}

#[test]
fn stream_is_valid_time_ordered_and_labels_arrive_late() {
    let sim = Simulation::generate(&config(30_000, 11)).unwrap();
    let mut seen_txn: HashMap<String, i64> = HashMap::new();
    let mut last_time = i64::MIN;
    for r in sim.records() {
        match r.record.unwrap() {
            Record::Transaction(t) => {
                validate::transaction(&t, None).unwrap_or_else(|e| panic!("{e}: {t:?}"));
                assert!(t.event_time_ms >= last_time, "transactions out of order");
                last_time = last_time.max(t.event_time_ms);
                assert!(
                    seen_txn.insert(t.txn_id.clone(), t.event_time_ms).is_none(),
                    "duplicate txn_id"
                );
            }
            Record::Label(l) => {
                validate::label(&l).unwrap();
                let at = seen_txn
                    .get(&l.txn_id)
                    .expect("label after its transaction");
                let delay_days = (l.reported_at_ms - at) as f64 / 86_400_000.0;
                assert!((1.0..=120.1).contains(&delay_days), "delay {delay_days}");
                assert!(l.reported_at_ms >= last_time, "label out of order");
                last_time = l.reported_at_ms;
            }
        }
    }
}

/// Transactions carry no trace of their labels: no extra fields, and ids of
/// fraudsters look like everyone else's.
#[test]
fn no_label_leaks_into_transactions() {
    let sim = Simulation::generate(&config(20_000, 5)).unwrap();
    let (txns, labels) = split(&sim);
    let fraud: HashSet<&str> = labels.iter().map(|l| l.txn_id.as_str()).collect();
    let allowed: HashSet<&str> = [
        "txn_id",
        "event_time_ms",
        "account_id",
        "device_id",
        "ip",
        "merchant_id",
        "card_id",
        "amount_minor",
        "currency",
        "mcc",
        "channel",
        "country",
        "counterparty_account_id",
        "client_utc_offset_minutes",
    ]
    .into();
    let id_shape = |s: &str, prefix: &str| {
        s.len() == prefix.len() + 16
            && s.starts_with(prefix)
            && s[prefix.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    for t in &txns {
        let json: serde_json::Value =
            serde_json::from_slice(&codec::encode(t, PayloadFormat::Json)).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(allowed.contains(key.as_str()), "unexpected field {key}");
        }
        assert!(id_shape(&t.txn_id, "txn_"), "{}", t.txn_id);
        assert!(id_shape(&t.account_id, "acc_"), "{}", t.account_id);
        assert!(id_shape(&t.merchant_id, "mch_"), "{}", t.merchant_id);
        if let Some(d) = &t.device_id {
            assert!(id_shape(d, "dev_"), "{d}");
        }
    }
    assert!(txns.iter().any(|t| fraud.contains(t.txn_id.as_str())));
}

/// The distinct accounts seen with each entity.
type AccountsBy<'a> = HashMap<&'a str, HashSet<&'a str>>;

/// Distinct accounts per device and per IP, over the whole stream.
fn sharing(txns: &[Transaction]) -> (AccountsBy<'_>, AccountsBy<'_>) {
    let (mut by_device, mut by_ip): (HashMap<_, HashSet<_>>, HashMap<_, HashSet<_>>) =
        Default::default();
    for t in txns {
        if let Some(d) = &t.device_id {
            by_device
                .entry(d.as_str())
                .or_default()
                .insert(t.account_id.as_str());
        }
        if let Some(ip) = &t.ip {
            by_ip
                .entry(ip.as_str())
                .or_default()
                .insert(t.account_id.as_str());
        }
    }
    (by_device, by_ip)
}

/// Legitimate behaviour that looks suspicious on its own is present, and
/// ring and mule fraud carry their signal in shared entities, not in one account's fan-in.
#[test]
fn suspicious_legit_behaviour_and_graph_signal_are_present() {
    let sim = Simulation::generate(&config(100_000, 9)).unwrap();
    let (txns, labels) = split(&sim);
    let typology: HashMap<&str, i32> = labels
        .iter()
        .map(|l| (l.txn_id.as_str(), l.typology))
        .collect();
    let (by_device, by_ip) = sharing(&txns);
    let legit: Vec<&Transaction> = txns
        .iter()
        .filter(|t| !typology.contains_key(t.txn_id.as_str()))
        .collect();

    // Households share devices; carrier NAT and workplaces share IPs widely.
    let shared_legit_devices = legit
        .iter()
        .filter_map(|t| t.device_id.as_deref())
        .filter(|d| by_device[d].len() >= 2)
        .collect::<HashSet<_>>()
        .len();
    assert!(
        shared_legit_devices > 100,
        "household devices: {shared_legit_devices}"
    );
    let busiest_ip = by_ip.values().map(HashSet::len).max().unwrap();
    assert!(
        busiest_ip >= 30,
        "carrier NAT IPs serve many accounts: {busiest_ip}"
    );
    // Travel and new phones: legit accounts seen in several time zones.
    let mut offsets: HashMap<&str, HashSet<i32>> = HashMap::new();
    for t in &legit {
        if let Some(o) = t.client_utc_offset_minutes {
            offsets.entry(t.account_id.as_str()).or_default().insert(o);
        }
    }
    let travellers = offsets.values().filter(|o| o.len() > 1).count();
    assert!(travellers > 20, "travellers: {travellers}");

    // Ring fraud: its devices are shared by more accounts than a typical
    // legit device, although each one looks like a family's.
    let mean_sharing = |txs: &mut dyn Iterator<Item = &Transaction>| {
        let v: Vec<f64> = txs
            .filter_map(|t| t.device_id.as_deref())
            .map(|d| by_device[d].len() as f64)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let ring = mean_sharing(
        &mut txns
            .iter()
            .filter(|t| typology.get(t.txn_id.as_str()) == Some(&1)),
    );
    let normal = mean_sharing(&mut legit.iter().copied());
    assert!(
        ring > 1.5 * normal,
        "ring device sharing {ring} vs legit {normal}"
    );

    // Mules: each receives from only a few victims, but the herder's devices, used by
    // every mule of a network, are shared by more accounts than a typical legit device.
    let mule_receivers: HashSet<&str> = txns
        .iter()
        .filter(|t| typology.get(t.txn_id.as_str()) == Some(&2))
        .filter_map(|t| t.counterparty_account_id.as_deref())
        .collect();
    assert!(mule_receivers.len() > 20, "mules: {}", mule_receivers.len());
    let herded = mean_sharing(
        &mut txns
            .iter()
            .filter(|t| typology.get(t.txn_id.as_str()) == Some(&2))
            .filter(|t| mule_receivers.contains(t.account_id.as_str())),
    );
    assert!(
        herded > 1.5 * normal,
        "mule device sharing {herded} vs legit {normal}"
    );
    let mut payers: HashMap<&str, HashSet<&str>> = HashMap::new();
    for t in txns
        .iter()
        .filter(|t| typology.get(t.txn_id.as_str()) == Some(&2))
    {
        if let Some(to) = t.counterparty_account_id.as_deref() {
            payers.entry(to).or_default().insert(t.account_id.as_str());
        }
    }
    let most_victims = payers.values().map(HashSet::len).max().unwrap();
    assert!(most_victims <= 4, "a mule collected {most_victims} victims");
}

#[test]
fn bad_config_names_the_knob() {
    let mut cfg = config(10, 1);
    cfg.fraud_rate = 0.7;
    assert_eq!(Simulation::generate(&cfg).err().unwrap().knob, "fraud_rate");
    let mut cfg = config(10, 1);
    cfg.difficulty.camouflage = 1.5;
    assert_eq!(
        Simulation::generate(&cfg).err().unwrap().knob,
        "difficulty.camouflage"
    );
    assert_eq!(
        Simulation::generate(&config(0, 1)).err().unwrap().knob,
        "transactions"
    );
}
