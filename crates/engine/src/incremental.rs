//! Incremental checkpoints of one keyed operator instance: which key groups a checkpoint writes as
//! full images, which as changes, and which earlier checkpoint files it still references.
//!
//! Pure bookkeeping, no I/O. A key group's state in a checkpoint is its last full image plus the
//! changes written after it, each in the file of the checkpoint that wrote it
//! (`checkpoints/<attempt>-<id>/<operator>-<subtask>.state`). So a checkpoint uploads what changed
//! and references the rest. To keep restores short, a group is rewritten in full ("rebased") once
//! its chain is long or its changes outweigh its image; rebases are spread over checkpoints (a
//! bounded share of the groups each time), so no checkpoint has to rewrite the whole state.
//!
//! Savepoints never use this: they are always full and self-contained, and leave the chain alone.
//!
//! After a restore from a checkpoint the chain adopts the restored files ([`IncrementalChain::adopt`]):
//! the first checkpoint of the new attempt then writes only what changed and references the
//! restored checkpoint's files for the rest, as later ones do (Flink's CLAIM restore mode). A
//! savepoint is never adopted: it belongs to the user, who may delete it.

use std::collections::{BTreeMap, BTreeSet};

/// When a key group is rewritten in full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebasePolicy {
    /// A group with this many change sets after its image is rebased.
    pub max_changes: usize,
    /// A group whose change sets together exceed this multiple of its image size is rebased.
    pub max_change_ratio: f64,
}

impl Default for RebasePolicy {
    fn default() -> Self {
        Self {
            max_changes: 8,
            max_change_ratio: 1.0,
        }
    }
}

/// A file holding part of a key group's state. Adopted files are older than every file of this
/// instance, so they sort first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainFile {
    /// A file of the restored checkpoint (index into the adopted files, oldest first).
    Adopted(usize),
    /// The file this instance wrote for the checkpoint with this id.
    Own(u64),
}

/// A restored key group's place in the restored checkpoint's files (indices into the adopted
/// files, which are in age order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedGroup {
    /// The file with the group's newest image, and the image's size.
    pub image: (usize, u64),
    /// The files with changes after it, oldest first, and their sizes.
    pub changes: Vec<(usize, u64)>,
}

/// What one key group's state is made of right now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupChain {
    /// The file holding the full image.
    image_file: ChainFile,
    image_bytes: u64,
    /// Files holding changes after the image, oldest first.
    change_files: Vec<ChainFile>,
    change_bytes: u64,
}

impl GroupChain {
    /// How urgently the group needs a rebase: 1.0 at the policy's limit (chain length or change
    /// ratio, whichever is nearer), 0 without changes.
    fn pressure(&self, policy: &RebasePolicy) -> f64 {
        let ratio = self.change_bytes as f64 / self.image_bytes.max(1) as f64;
        let length = self.change_files.len() as f64 / policy.max_changes.max(1) as f64;
        (ratio / policy.max_change_ratio).max(length)
    }
}

/// The plan for one checkpoint of an operator instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotPlan {
    /// Key groups to write as full images (every group with state when the chain starts over).
    pub images: BTreeSet<u32>,
    /// Changed key groups to write as change sets.
    pub changes: BTreeSet<u32>,
}

/// The incremental chain of one keyed operator instance.
#[derive(Debug, Clone, Default)]
pub struct IncrementalChain {
    policy: RebasePolicy,
    groups: BTreeMap<u32, GroupChain>,
    started: bool,
}

impl IncrementalChain {
    /// An empty chain: the first checkpoint writes every group in full.
    pub fn new(policy: RebasePolicy) -> Self {
        Self {
            policy,
            groups: BTreeMap::new(),
            started: false,
        }
    }

    /// Start over: the next checkpoint writes every group in full and references nothing. Used
    /// when files the chain builds on may be lost (an aborted checkpoint).
    pub fn reset(&mut self) {
        self.groups.clear();
        self.started = false;
    }

    /// Build on a restored checkpoint: `groups` are this instance's restored key groups and where
    /// their image and changes are. The next checkpoint writes changes only.
    pub fn adopt(&mut self, groups: impl IntoIterator<Item = (u32, AdoptedGroup)>) {
        self.groups.clear();
        for (group, adopted) in groups {
            self.groups.insert(
                group,
                GroupChain {
                    image_file: ChainFile::Adopted(adopted.image.0),
                    image_bytes: adopted.image.1,
                    change_files: adopted
                        .changes
                        .iter()
                        .map(|(file, _)| ChainFile::Adopted(*file))
                        .collect(),
                    change_bytes: adopted.changes.iter().map(|(_, bytes)| bytes).sum(),
                },
            );
        }
        self.started = true;
    }

    /// Decide the next checkpoint: `with_state` are the groups holding state, `changed` the groups
    /// with changes since the last checkpoint.
    pub fn plan(
        &self,
        with_state: impl IntoIterator<Item = u32>,
        changed: impl IntoIterator<Item = u32>,
    ) -> SnapshotPlan {
        let changed: BTreeSet<u32> = changed.into_iter().collect();
        if !self.started {
            let mut images: BTreeSet<u32> = with_state.into_iter().collect();
            images.extend(&changed);
            return SnapshotPlan {
                images,
                changes: BTreeSet::new(),
            };
        }
        // Changed groups the chain has never seen start with an image.
        let mut images: BTreeSet<u32> = changed
            .iter()
            .copied()
            .filter(|g| !self.groups.contains_key(g))
            .collect();
        // Groups at half their limit may be rebased early, one in `max_changes` per checkpoint:
        // that staggers rebases, so groups that change alike do not all come due at once. Groups
        // past their limit twice over are rebased whatever the budget.
        let mut due: Vec<(f64, u32)> = self
            .groups
            .iter()
            .map(|(g, c)| (c.pressure(&self.policy), *g))
            .filter(|(p, _)| *p >= 0.5)
            .collect();
        due.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let budget = self
            .groups
            .len()
            .div_ceil(self.policy.max_changes.max(1))
            .max(1);
        for (i, (pressure, group)) in due.into_iter().enumerate() {
            if i < budget || pressure >= 2.0 {
                images.insert(group);
            }
        }
        let changes = changed.difference(&images).copied().collect();
        SnapshotPlan { images, changes }
    }

    /// Record what checkpoint `checkpoint_id` wrote (`images` and `changes` as `(group, bytes)`;
    /// an image of `None` means the group is now empty) and return the earlier files it still
    /// references, oldest first.
    pub fn record(
        &mut self,
        checkpoint_id: u64,
        images: &[(u32, Option<u64>)],
        changes: &[(u32, u64)],
    ) -> Vec<ChainFile> {
        self.started = true;
        let own = ChainFile::Own(checkpoint_id);
        for (group, bytes) in images {
            match bytes {
                Some(bytes) => {
                    self.groups.insert(
                        *group,
                        GroupChain {
                            image_file: own,
                            image_bytes: *bytes,
                            change_files: Vec::new(),
                            change_bytes: 0,
                        },
                    );
                }
                None => {
                    self.groups.remove(group);
                }
            }
        }
        for (group, bytes) in changes {
            if let Some(chain) = self.groups.get_mut(group) {
                chain.change_files.push(own);
                chain.change_bytes += bytes;
            }
        }
        self.referenced()
            .into_iter()
            .filter(|file| *file != own)
            .collect()
    }

    /// False until the first checkpoint is recorded (and after a reset).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Every file the current state needs, oldest first.
    pub fn referenced(&self) -> Vec<ChainFile> {
        let files: BTreeSet<ChainFile> = self
            .groups
            .values()
            .flat_map(|c| std::iter::once(c.image_file).chain(c.change_files.iter().copied()))
            .collect();
        files.into_iter().collect()
    }

    /// Longest chain of any group (image + change sets): what a restore reads at most per group.
    pub fn max_chain_len(&self) -> usize {
        self.groups
            .values()
            .map(|c| 1 + c.change_files.len())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_checkpoint(
        chain: &mut IncrementalChain,
        id: u64,
        groups: &[u32],
    ) -> (SnapshotPlan, Vec<ChainFile>) {
        let plan = chain.plan(groups.iter().copied(), groups.iter().copied());
        let images: Vec<(u32, Option<u64>)> =
            plan.images.iter().map(|g| (*g, Some(1000))).collect();
        let changes: Vec<(u32, u64)> = plan.changes.iter().map(|g| (*g, 50)).collect();
        let base = chain.record(id, &images, &changes);
        (plan, base)
    }

    #[test]
    fn first_checkpoint_is_full_then_only_changes() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        let plan = chain.plan([0, 1, 2], [1]);
        assert_eq!(plan.images, BTreeSet::from([0, 1, 2]));
        assert!(plan.changes.is_empty());
        assert!(chain
            .record(1, &[(0, Some(10)), (1, Some(10)), (2, Some(10))], &[])
            .is_empty());

        let plan = chain.plan([0, 1, 2], [1]);
        assert_eq!(plan.changes, BTreeSet::from([1]));
        assert!(plan.images.is_empty());
        assert_eq!(chain.record(2, &[], &[(1, 2)]), vec![ChainFile::Own(1)]);
        assert_eq!(
            chain.referenced(),
            vec![ChainFile::Own(1), ChainFile::Own(2)]
        );
    }

    #[test]
    fn new_groups_start_with_an_image_and_emptied_groups_leave_the_chain() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        chain.record(1, &[(0, Some(10))], &[]);
        let plan = chain.plan([0, 5], [5]);
        assert_eq!(plan.images, BTreeSet::from([5]));
        chain.record(2, &[(5, Some(10)), (0, None)], &[]);
        assert_eq!(chain.referenced(), vec![ChainFile::Own(2)]);
    }

    #[test]
    fn chains_stay_short_and_rebases_are_spread() {
        // 64 groups, every group changes every checkpoint: the worst case for incremental.
        let groups: Vec<u32> = (0..64).collect();
        let policy = RebasePolicy::default();
        let mut chain = IncrementalChain::new(policy);
        let mut max_images_after_first = 0;
        for id in 1..=200u64 {
            let (plan, base) = run_checkpoint(&mut chain, id, &groups);
            assert!(
                base.iter().all(|b| *b < ChainFile::Own(id)),
                "references only earlier files"
            );
            assert!(
                chain.max_chain_len() <= 2 * policy.max_changes + 1,
                "chain {}",
                chain.max_chain_len()
            );
            if id > 1 {
                max_images_after_first = max_images_after_first.max(plan.images.len());
            }
            assert_eq!(
                plan.images.len() + plan.changes.len(),
                64,
                "every changed group written"
            );
        }
        assert!(
            max_images_after_first <= 64 / policy.max_changes,
            "at most one group in max_changes rebased at once: {max_images_after_first}"
        );
    }

    #[test]
    fn heavy_changes_trigger_a_rebase_before_the_length_limit() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        chain.record(1, &[(0, Some(100))], &[]);
        chain.record(2, &[], &[(0, 30)]);
        assert!(
            chain.plan([0], [0]).changes.contains(&0),
            "30 B on 100 B: not yet"
        );
        chain.record(3, &[], &[(0, 30)]);
        let plan = chain.plan([0], [0]);
        assert!(
            plan.images.contains(&0),
            "60 B of changes on a 100 B image: rebased early"
        );
        assert!(chain.record(4, &[(0, Some(100))], &[]).is_empty());
    }

    #[test]
    fn groups_far_past_their_limit_are_rebased_beyond_the_budget() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        chain.record(1, &[(0, Some(100)), (1, Some(100)), (2, Some(100))], &[]);
        chain.record(2, &[], &[(0, 250), (1, 250), (2, 60)]);
        let plan = chain.plan([0, 1, 2], [0, 1, 2]);
        // Budget: 3 groups / 8 = 1; groups 0 and 1 are at 2.5x their limit, group 2 at 0.6x.
        assert_eq!(plan.images, BTreeSet::from([0, 1]));
        assert_eq!(plan.changes, BTreeSet::from([2]));
    }

    #[test]
    fn reset_starts_over_with_images() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        chain.record(1, &[(0, Some(10)), (1, Some(10))], &[]);
        chain.reset();
        let plan = chain.plan([0, 1], []);
        assert_eq!(plan.images, BTreeSet::from([0, 1]));
        assert!(chain
            .record(2, &[(0, Some(10)), (1, Some(10))], &[])
            .is_empty());
    }

    #[test]
    fn an_adopted_chain_writes_changes_and_references_the_restored_files() {
        let mut chain = IncrementalChain::new(RebasePolicy::default());
        chain.adopt([
            (
                3,
                AdoptedGroup {
                    image: (0, 1000),
                    changes: vec![(2, 10)],
                },
            ),
            (
                4,
                AdoptedGroup {
                    image: (1, 1000),
                    changes: vec![],
                },
            ),
        ]);
        assert!(chain.is_started());
        let plan = chain.plan([3, 4], [4]);
        assert!(plan.images.is_empty(), "nothing rewritten in full");
        assert_eq!(plan.changes, BTreeSet::from([4]));
        let base = chain.record(7, &[], &[(4, 10)]);
        assert_eq!(
            base,
            vec![
                ChainFile::Adopted(0),
                ChainFile::Adopted(1),
                ChainFile::Adopted(2)
            ],
            "adopted files first, oldest first"
        );
        // Rebasing both groups drops every adopted file.
        chain.record(8, &[(3, Some(1000)), (4, Some(1000))], &[]);
        assert_eq!(chain.referenced(), vec![ChainFile::Own(8)]);
    }
}
