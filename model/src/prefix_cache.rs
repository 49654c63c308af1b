//! Keys and values kept between an episode's turns, so a later turn prefills only what the
//! environment added instead of the whole conversation again.
//!
//! When a row of a [`crate::DecodeBatch`] that belongs to a *session* (an episode) finishes, the
//! keys and values of its prompt and completion (all but the last sampled token, which was never
//! fed) are stored here with their token ids. A later request of the same session whose prompt
//! starts with those ids — a multi-turn thread extended with the environment's reply, which
//! [`crate::ChatThread`] builds from the ids exactly as sampled — takes the entry back and
//! prefills only the rest (vLLM's and SGLang's prefix caching, scoped to one episode).
//!
//! Memory is bounded: entries are evicted least recently stored first once their keys and
//! values exceed the budget, and an evicted turn is simply prefilled again (counted in
//! [`PrefixCacheStats::evicted`]). Entries belong to one weights version: the batch that
//! made them decodes with one model, so a continuation computes exactly what a full prefill
//! with the same weights would (the behaviour log-probs stay those of one model).

use crate::kv_cache::KvCache;

/// Counters of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Requests of a session that found an entry to continue from.
    pub hits: u64,
    /// Requests of a session that found none (first turns, evicted or diverged entries).
    pub misses: u64,
    /// Prompt tokens not prefilled because their keys and values were reused.
    pub reused_tokens: u64,
    /// Entries stored.
    pub stored: u64,
    /// Entries evicted to stay within the budget.
    pub evicted: u64,
    /// Tokens of the evicted entries (prefilled again if their sessions continue).
    pub evicted_tokens: u64,
    /// Entries copied from one session to another ([`PrefixCache::fork`]).
    pub forks: u64,
    /// Tokens of the copied entries: prefill positions a forked branch does not recompute.
    pub forked_tokens: u64,
}

struct Entry {
    session: u64,
    /// The ids whose keys and values `cache` holds, in order.
    tokens: Vec<u32>,
    /// One row, columns `0..tokens.len()`.
    cache: KvCache,
    /// Insertion order, for eviction.
    stamp: u64,
}

/// Per-session keys and values between turns, within a memory budget.
pub struct PrefixCache {
    budget_bytes: usize,
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
    stats: PrefixCacheStats,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache")
            .field("budget_bytes", &self.budget_bytes)
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl PrefixCache {
    /// An empty store holding at most `budget_bytes` of keys and values.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            entries: Vec::new(),
            bytes: 0,
            clock: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    /// Bytes of keys and values held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Stores `session`'s keys and values for `tokens` (`cache`: one row, `tokens.len()`
    /// columns), evicting the oldest entries beyond the budget. An entry larger than the whole
    /// budget is not kept.
    pub(crate) fn insert(&mut self, session: u64, tokens: Vec<u32>, cache: KvCache) {
        self.stats.stored += 1;
        self.push(session, tokens, cache);
    }

    /// Adds an entry and evicts the oldest ones beyond the budget.
    fn push(&mut self, session: u64, tokens: Vec<u32>, cache: KvCache) {
        let size = cache.bytes();
        self.clock += 1;
        self.entries.push(Entry {
            session,
            tokens,
            cache,
            stamp: self.clock,
        });
        self.bytes += size;
        while self.bytes > self.budget_bytes {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].stamp)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.bytes -= e.cache.bytes();
            self.stats.evicted += 1;
            self.stats.evicted_tokens += e.tokens.len() as u64;
        }
    }

    /// Takes `session`'s entry sharing the longest prefix with `prompt` and returns its keys
    /// and values cut to that prefix, with the prefix length (always below `prompt.len()`, so
    /// the last prompt token is fed and gives the next token's logits). The entry is removed:
    /// the continuing row stores a longer one when it finishes. `None` (a miss) when the session
    /// has no entry sharing at least one token.
    pub(crate) fn take(&mut self, session: u64, prompt: &[u32]) -> Option<(KvCache, usize)> {
        let common = |t: &[u32]| t.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.session == session)
            .map(|(i, e)| (i, common(&e.tokens).min(prompt.len().saturating_sub(1))))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, self.entries[i].stamp));
        let Some((i, n)) = best else {
            self.stats.misses += 1;
            return None;
        };
        let e = self.entries.swap_remove(i);
        self.bytes -= e.cache.bytes();
        let mut cache = e.cache;
        cache.truncate_row(n);
        self.stats.hits += 1;
        self.stats.reused_tokens += n as u64;
        Some((cache, n))
    }

    /// Copies `from`'s most recently stored entry to session `to`, for a branch of a tree
    /// search that continues the same conversation in its own way: the branch's next request
    /// finds the copy and prefills only what follows it, while `from` keeps its entry for its
    /// other branches. Returns the copied tokens (0 when `from` has no entry, e.g. it was
    /// evicted: the branch then prefills its whole prompt). The copy counts against the budget
    /// like any stored entry.
    pub fn fork(&mut self, from: u64, to: u64) -> usize {
        let Some(e) = self
            .entries
            .iter()
            .filter(|e| e.session == from)
            .max_by_key(|e| e.stamp)
        else {
            return 0;
        };
        let (tokens, cache) = (e.tokens.clone(), e.cache.clone());
        let n = tokens.len();
        self.stats.forks += 1;
        self.stats.forked_tokens += n as u64;
        self.push(to, tokens, cache);
        n
    }

    /// Drops every entry of `session` (its episode ended).
    pub fn forget(&mut self, session: u64) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.session != session;
            if !keep {
                freed += e.cache.bytes();
            }
            keep
        });
        self.bytes -= freed;
    }
}
