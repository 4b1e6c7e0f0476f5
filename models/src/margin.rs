//! How sure a lead in PR-AUC is: the difference between two models' PR-AUC on the same
//! rows, with an interval from a paired, stratified bootstrap.
//!
//! A typology's test period holds tens of frauds, so its PR-AUC moves by several hundredths
//! with the sample: a margin read off one test period says little without its spread. Each
//! resample draws the positives and the negatives with replacement, each class keeping its
//! size (stratified: a rare class never vanishes from a resample), and scores both models
//! on the same drawn rows (paired: what the two models share cancels out). The interval is
//! the 5th to 95th percentile of the resampled margins. Seeded: the same inputs give the
//! same interval.
//!
//! A resample is a count per row (how often it was drawn), so each one walks the rows in an
//! order sorted once per model, with no sort per resample. PR-AUC is
//! [`crate::metrics::pr_auc`]'s average precision, ties one group, with the counts as
//! weights.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::metrics::{Label, MetricError, pr_auc};

/// PR-AUC of model `a` minus that of model `b` on the same rows, with its bootstrap spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrAucMargin {
    /// The margin on the rows as given.
    pub margin: f64,
    /// 5th percentile of the resampled margins.
    pub low: f64,
    /// 95th percentile of the resampled margins.
    pub high: f64,
    /// Share of resamples in which `a` had the higher PR-AUC.
    pub share_ahead: f64,
    /// Resamples drawn.
    pub resamples: u32,
}

/// [`PrAucMargin`] of `a` over `b`, both scoring the rows labelled `labels`, from
/// `resamples` bootstrap resamples drawn with `seed`. Errors as [`pr_auc`] does (lengths,
/// NaN scores, no positives); zero resamples give an interval of the margin alone.
pub fn pr_auc_margin<L: Label>(
    a: &[f64],
    b: &[f64],
    labels: &[L],
    resamples: u32,
    seed: u64,
) -> Result<PrAucMargin, MetricError> {
    let margin = pr_auc(a, labels)? - pr_auc(b, labels)?;
    let positive: Vec<bool> = labels.iter().map(|&l| l.is_positive()).collect();
    let (pos, neg): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| positive[i]);
    let (order_a, order_b) = (descending(a), descending(b));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0u32; labels.len()];
    let mut margins = Vec::with_capacity(resamples as usize);
    for _ in 0..resamples {
        counts.fill(0);
        for class in [&pos, &neg] {
            for _ in 0..class.len() {
                counts[class[rng.random_range(0..class.len())]] += 1;
            }
        }
        let ap = |scores: &[f64], order: &[usize]| {
            weighted_average_precision(scores, order, &positive, &counts, pos.len())
        };
        margins.push(ap(a, &order_a) - ap(b, &order_b));
    }
    margins.sort_unstable_by(f64::total_cmp);
    let percentile = |q: f64| {
        margins
            .get(((margins.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(margin)
    };
    let ahead = margins.iter().filter(|&&m| m > 0.0).count();
    Ok(PrAucMargin {
        margin,
        low: percentile(0.05),
        high: percentile(0.95),
        share_ahead: if margins.is_empty() {
            f64::from(u8::from(margin > 0.0))
        } else {
            ahead as f64 / margins.len() as f64
        },
        resamples,
    })
}

/// Row indices by score, highest first.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    order
}

/// Average precision with each row counted `counts[row]` times; `positives` is the sum of
/// the positives' counts (a stratified resample keeps it). Rows with equal scores are one
/// group, as in [`pr_auc`].
fn weighted_average_precision(
    scores: &[f64],
    order: &[usize],
    positive: &[bool],
    counts: &[u32],
    positives: usize,
) -> f64 {
    let (mut tp, mut fp, mut ap) = (0u64, 0u64, 0.0);
    let mut rows = order.iter().peekable();
    while let Some(&first) = rows.next() {
        let (mut group_tp, mut group_fp) = (0u64, 0u64);
        let mut add = |row: usize| {
            let c = u64::from(counts[row]);
            if positive[row] {
                group_tp += c;
            } else {
                group_fp += c;
            }
        };
        add(first);
        // -0.0 and 0.0 are one score, as in `pr_auc`.
        while let Some(&&row) = rows.peek() {
            if scores[row] != scores[first] {
                break;
            }
            add(row);
            rows.next();
        }
        tp += group_tp;
        fp += group_fp;
        if group_tp > 0 {
            ap += (group_tp as f64 / positives as f64) * (tp as f64 / (tp + fp) as f64);
        }
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores in which the positives (every `step`-th row) rank where `quality` puts them:
    /// 1 ranks them all first, 0 mixes them evenly into the negatives.
    fn scores(n: usize, step: usize, quality: f64, salt: u64) -> (Vec<f64>, Vec<bool>) {
        let labels: Vec<bool> = (0..n).map(|i| i % step == 0).collect();
        let scores = labels
            .iter()
            .enumerate()
            .map(|(i, &pos)| {
                let noise = ((i as u64 * 2654435761 + salt) % 1000) as f64 / 1000.0;
                noise + if pos { quality } else { 0.0 }
            })
            .collect();
        (scores, labels)
    }

    #[test]
    fn unit_counts_give_pr_auc_ties_included() {
        let (s, y) = scores(500, 7, 0.3, 1);
        // Coarse scores, so that many rows tie.
        let coarse: Vec<f64> = s.iter().map(|x| (x * 10.0).floor() / 10.0).collect();
        let positives = y.iter().filter(|&&p| p).count();
        for scores in [&s, &coarse] {
            let ap = weighted_average_precision(
                scores,
                &descending(scores),
                &y,
                &vec![1; y.len()],
                positives,
            );
            assert!((ap - pr_auc(scores, &y).unwrap()).abs() < 1e-12);
        }
    }

    #[test]
    fn a_model_against_itself_has_no_margin() {
        let (s, y) = scores(400, 10, 0.2, 3);
        let m = pr_auc_margin(&s, &s, &y, 200, 7).unwrap();
        assert_eq!(
            (m.margin, m.low, m.high, m.share_ahead),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!(m.resamples, 200);
    }

    #[test]
    fn a_clearly_better_model_leads_in_every_resample_and_a_close_one_does_not() {
        let (good, y) = scores(2000, 20, 0.9, 5);
        let (weak, _) = scores(2000, 20, 0.1, 11);
        let m = pr_auc_margin(&good, &weak, &y, 300, 1).unwrap();
        assert!(m.margin > 0.3, "{m:?}");
        assert!(
            m.low > 0.2 && m.low <= m.margin && m.margin <= m.high,
            "{m:?}"
        );
        assert_eq!(m.share_ahead, 1.0);
        // Two models of the same quality (different noise): the interval straddles zero.
        let (twin, _) = scores(2000, 20, 0.1, 97);
        let close = pr_auc_margin(&twin, &weak, &y, 300, 1).unwrap();
        assert!(close.low < 0.0 && close.high > 0.0, "{close:?}");
        assert!(
            close.share_ahead > 0.0 && close.share_ahead < 1.0,
            "{close:?}"
        );
        // Fewer positives, wider interval.
        let (good_few, y_few) = scores(2000, 200, 0.3, 5);
        let (weak_few, _) = scores(2000, 200, 0.1, 11);
        let (good_many, y_many) = scores(2000, 10, 0.3, 5);
        let (weak_many, _) = scores(2000, 10, 0.1, 11);
        let few = pr_auc_margin(&good_few, &weak_few, &y_few, 300, 1).unwrap();
        let many = pr_auc_margin(&good_many, &weak_many, &y_many, 300, 1).unwrap();
        assert!(
            few.high - few.low > many.high - many.low,
            "{few:?} {many:?}"
        );
    }

    #[test]
    fn seeded_and_checked_like_pr_auc() {
        let (a, y) = scores(300, 6, 0.4, 2);
        let (b, _) = scores(300, 6, 0.2, 8);
        assert_eq!(
            pr_auc_margin(&a, &b, &y, 100, 42).unwrap(),
            pr_auc_margin(&a, &b, &y, 100, 42).unwrap()
        );
        assert_eq!(
            pr_auc_margin(&a, &b[1..], &y, 10, 0),
            Err(MetricError::LengthMismatch {
                scores: 299,
                labels: 300
            })
        );
        assert_eq!(
            pr_auc_margin(&a, &b, &vec![false; 300], 10, 0),
            Err(MetricError::NoPositives)
        );
        let none = pr_auc_margin(&a, &b, &y, 0, 0).unwrap();
        assert_eq!((none.low, none.high), (none.margin, none.margin));
    }
}
