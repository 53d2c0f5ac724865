//! Which records go into which batch, epoch by epoch.
//!
//! The order of an epoch is a function of (seed, epoch) alone, so batches are
//! the same for any number of loader threads, and a run resumed at
//! (epoch, batch) sees exactly the batches it would have seen.
//!
//! Orders:
//! - `Random`: a uniform permutation of every record of the split. Needs
//!   random access over the whole split (the page cache or fast storage).
//! - `QuasiRandom { window }`: the shards are shuffled, then taken `window` at
//!   a time and the records of each window are shuffled together. A machine
//!   whose RAM cannot cache the data set reads only `window` shards at once.
//!
//! Ranks (data-parallel training): rank r of `world` takes the records at
//! positions p of the epoch's order with p mod world == r. The parts are
//! disjoint and together cover the epoch; when the record count N is not a
//! multiple of `world`, ranks below N mod world hold one record more.
//! So batch k of every rank together is batch k of one process whose batch
//! is `world` times larger. With `drop_last` (training) every rank takes the
//! same number of batches, N / (world x batch), that one process's count:
//! data-parallel ranks step together, and a rank with one record more does
//! not wait in a collective for ranks that have finished.
//!
//! A limit (`Sampler::first`) keeps the first records of each epoch's order
//! and drops the rest before the ranks take their parts, so ranks share the
//! limited epoch exactly as they share a whole one.

use crate::rng::SplitMix64;

/// A record: shard (position in the split's shard list) and index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub shard: u32,
    pub index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Random,
    QuasiRandom {
        window: usize,
    },
    /// Stored order, for evaluation.
    Sequential,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    /// Records per shard, in shard order.
    shard_lens: Vec<u32>,
    seed: u64,
    order: Order,
    rank: usize,
    world: usize,
    batch_size: usize,
    drop_last: bool,
    /// At most this many records an epoch (the first of its order).
    limit: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    #[error("rank {rank} is not below world size {world}")]
    Rank { rank: usize, world: usize },
    #[error("batch size and quasi-random window must be at least 1")]
    Zero,
}

impl Sampler {
    pub fn new(
        shard_lens: Vec<u32>,
        seed: u64,
        order: Order,
        (rank, world): (usize, usize),
        batch_size: usize,
        drop_last: bool,
    ) -> Result<Self, SamplerError> {
        if world == 0 || rank >= world {
            return Err(SamplerError::Rank { rank, world });
        }
        if batch_size == 0 || order == (Order::QuasiRandom { window: 0 }) {
            return Err(SamplerError::Zero);
        }
        Ok(Self {
            shard_lens,
            seed,
            order,
            rank,
            world,
            batch_size,
            drop_last,
            limit: None,
        })
    }

    /// Only the first `limit` records of each epoch's order (all of them
    /// where the split holds fewer, or `limit` is None).
    pub fn first(mut self, limit: Option<usize>) -> Self {
        self.limit = limit;
        self
    }

    /// Records in the split.
    pub fn total(&self) -> usize {
        self.shard_lens.iter().map(|&n| n as usize).sum()
    }

    /// Records an epoch takes, all ranks together: the split's, or fewer
    /// under a limit.
    pub fn epoch_len(&self) -> usize {
        let total = self.total();
        self.limit.map_or(total, |limit| limit.min(total))
    }

    /// Records this rank sees in an epoch.
    pub fn rank_len(&self) -> usize {
        let (n, w) = (self.epoch_len(), self.world);
        n / w + usize::from(self.rank < n % w)
    }

    /// Batches this rank sees in an epoch (with `drop_last`, the same on
    /// every rank).
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.epoch_len() / (self.world * self.batch_size)
        } else {
            self.rank_len().div_ceil(self.batch_size)
        }
    }

    /// The whole epoch's order, all ranks together, cut to `epoch_len`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<RecordId> {
        let mut order = self.full_order(epoch);
        order.truncate(self.epoch_len());
        order
    }

    /// Every record of the split, in `epoch`'s order.
    fn full_order(&self, epoch: u64) -> Vec<RecordId> {
        let mut rng = SplitMix64::new(mix(self.seed, epoch));
        let records_of = |shard: usize| {
            (0..self.shard_lens[shard]).map(move |index| RecordId {
                shard: shard as u32,
                index,
            })
        };
        match self.order {
            Order::Sequential => (0..self.shard_lens.len()).flat_map(records_of).collect(),
            Order::Random => {
                let mut all: Vec<RecordId> =
                    (0..self.shard_lens.len()).flat_map(records_of).collect();
                rng.shuffle(&mut all);
                all
            }
            Order::QuasiRandom { window } => {
                let mut shards: Vec<usize> = (0..self.shard_lens.len()).collect();
                rng.shuffle(&mut shards);
                let mut all = Vec::with_capacity(self.total());
                for group in shards.chunks(window) {
                    let start = all.len();
                    all.extend(group.iter().flat_map(|&s| records_of(s)));
                    rng.shuffle(&mut all[start..]);
                }
                all
            }
        }
    }

    /// This rank's batches of `epoch`, from batch `start_batch` on.
    pub fn batches(&self, epoch: u64, start_batch: usize) -> Vec<Vec<RecordId>> {
        let mine: Vec<RecordId> = self
            .epoch_order(epoch)
            .into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect();
        mine.chunks(self.batch_size)
            .take(self.batches_per_epoch())
            .skip(start_batch)
            .map(<[RecordId]>::to_vec)
            .collect()
    }
}

/// A seed for (seed, epoch, ...) that differs in every bit pattern.
pub fn mix(seed: u64, value: u64) -> u64 {
    let mut rng = SplitMix64::new(seed ^ value.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sampler(order: Order, rank: usize, world: usize, batch: usize, drop_last: bool) -> Sampler {
        Sampler::new(
            vec![10, 7, 10, 3],
            42,
            order,
            (rank, world),
            batch,
            drop_last,
        )
        .expect("sampler")
    }

    fn all_ids() -> HashSet<RecordId> {
        sampler(Order::Sequential, 0, 1, 1, false)
            .epoch_order(0)
            .into_iter()
            .collect()
    }

    #[test]
    fn every_order_is_a_permutation_that_changes_with_the_epoch() {
        for order in [Order::Random, Order::QuasiRandom { window: 2 }] {
            let s = sampler(order, 0, 1, 4, false);
            let (a, b) = (s.epoch_order(0), s.epoch_order(1));
            assert_eq!(a.len(), 30);
            assert_eq!(a.iter().copied().collect::<HashSet<_>>(), all_ids());
            assert_ne!(a, b, "{order:?}");
            assert_eq!(a, s.epoch_order(0), "same (seed, epoch), same order");
        }
    }

    #[test]
    fn quasi_random_reads_one_window_of_shards_at_a_time() {
        let s = sampler(Order::QuasiRandom { window: 2 }, 0, 1, 4, false);
        let order = s.epoch_order(3);
        // Cut the order where the window changes: each part uses 2 shards.
        let mut seen_windows = Vec::new();
        let mut current: HashSet<u32> = HashSet::new();
        let mut count = 0;
        let lens = [10, 7, 10, 3];
        for id in &order {
            current.insert(id.shard);
            count += 1;
            if current.len() == 2
                && count == current.iter().map(|&s| lens[s as usize]).sum::<usize>()
            {
                seen_windows.push(std::mem::take(&mut current));
                count = 0;
            }
        }
        assert_eq!(seen_windows.len(), 2, "{order:?}");
    }

    #[test]
    fn ranks_are_disjoint_cover_the_epoch_and_differ_by_at_most_one() {
        let world = 4; // 30 records: ranks 0 and 1 get 8, ranks 2 and 3 get 7
        let mut union = HashSet::new();
        let mut total = 0;
        for rank in 0..world {
            let s = sampler(Order::Random, rank, world, 3, false);
            let ids: Vec<RecordId> = s.batches(5, 0).into_iter().flatten().collect();
            assert_eq!(ids.len(), if rank < 2 { 8 } else { 7 });
            assert_eq!(ids.len(), s.rank_len());
            total += ids.len();
            union.extend(ids);
        }
        assert_eq!(total, 30);
        assert_eq!(union, all_ids());
    }

    /// Batch k of each of `world` ranks, together, is batch k of one
    /// process with a batch `world` times larger, and with `drop_last` every
    /// rank has that process's number of batches, even where ranks hold
    /// different numbers of records.
    #[test]
    fn ranks_batches_together_are_one_processs_larger_batches() {
        // 30 records, 4 ranks of batch 2: one process of batch 8 has 3
        // batches; ranks 0 and 1 hold 8 records (4 batches' worth) but take 3.
        let one = sampler(Order::Random, 0, 1, 8, true).batches(3, 0);
        assert_eq!(one.len(), 3);
        let parts: Vec<Vec<Vec<RecordId>>> = (0..4)
            .map(|rank| sampler(Order::Random, rank, 4, 2, true).batches(3, 0))
            .collect();
        for (k, batch) in one.iter().enumerate() {
            let mut union: Vec<RecordId> = parts.iter().flat_map(|p| p[k].clone()).collect();
            let mut want = batch.clone();
            union.sort();
            want.sort();
            assert_eq!(union, want, "batch {k}");
        }
        assert!(parts.iter().all(|p| p.len() == 3));
    }

    /// Under a limit the ranks share the first records of the order as they
    /// share a whole epoch: disjoint, covering exactly those records, the
    /// one-more records on the lowest ranks.
    #[test]
    fn a_limit_keeps_the_first_records_and_the_ranks_share_them() {
        let first_13 = sampler(Order::Sequential, 0, 1, 1, false).epoch_order(0)[..13].to_vec();
        let limited = sampler(Order::Sequential, 0, 1, 5, false).first(Some(13));
        assert_eq!(limited.epoch_len(), 13);
        assert_eq!(limited.batches_per_epoch(), 3); // 5, 5, 3
        let batches = limited.batches(0, 0);
        assert_eq!(batches.concat(), first_13);
        assert_eq!(batches[2].len(), 3);
        let mut union = Vec::new();
        for rank in 0..3 {
            let s = sampler(Order::Sequential, rank, 3, 2, false).first(Some(13));
            let ids = s.batches(0, 0).concat();
            assert_eq!(ids.len(), if rank == 0 { 5 } else { 4 }, "rank {rank}");
            assert_eq!(ids.len(), s.rank_len());
            union.extend(ids);
        }
        union.sort();
        assert_eq!(union, first_13);
        // A random order is cut after it is drawn: the limit changes which
        // records come, not the order they come in.
        let random = sampler(Order::Random, 0, 1, 4, false);
        assert_eq!(
            random.clone().first(Some(7)).epoch_order(4),
            random.epoch_order(4)[..7]
        );
        // A limit above the split's size is the whole split.
        let above = sampler(Order::Sequential, 0, 1, 4, true).first(Some(1000));
        assert_eq!((above.epoch_len(), above.batches_per_epoch()), (30, 7));
    }

    #[test]
    fn resuming_at_a_batch_gives_the_rest_of_the_epoch() {
        let s = sampler(Order::Random, 1, 2, 4, false);
        let whole = s.batches(2, 0);
        assert_eq!(whole.len(), 4); // 15 records: 4, 4, 4, 3
        assert_eq!(whole[3].len(), 3);
        assert_eq!(s.batches(2, 2), whole[2..].to_vec());
        let dropping = sampler(Order::Random, 1, 2, 4, true);
        assert_eq!(dropping.batches(2, 0), whole[..3].to_vec());
    }

    #[test]
    fn bad_settings_are_refused() {
        let lens = vec![1];
        assert!(Sampler::new(lens.clone(), 0, Order::Random, (2, 2), 1, false).is_err());
        assert!(Sampler::new(lens.clone(), 0, Order::Random, (0, 1), 0, false).is_err());
        let window = Order::QuasiRandom { window: 0 };
        assert_eq!(
            Sampler::new(lens, 0, window, (0, 1), 1, false).err(),
            Some(SamplerError::Zero)
        );
    }
}
