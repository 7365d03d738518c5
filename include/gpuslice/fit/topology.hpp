#pragma once
/// \file
/// Topology-aware GPU choice over a node's pairwise link scores (e.g. NVLink classes):
///   - best_linked_subset: the N candidates with the largest summed pair score, found by
///     branch-and-bound (include-first depth-first search in index order with an upper bound on
///     what the undecided candidates can still add), never by listing all C(m, N) subsets;
///   - links_lost: for a single-GPU request, what taking one GPU costs the GPUs left idle.
/// Pure functions, thread-safe.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "gpuslice/fit/model.hpp"

namespace gpuslice::fit {

/// The outcome of best_linked_subset.
struct linked_subset {
  std::vector<std::size_t> devices;  ///< chosen positions, ascending
  std::int64_t score = 0;            ///< sum of link scores over the chosen pairs
  std::uint64_t nodes_visited = 0;   ///< search nodes expanded (for tests and benchmarks)
};

namespace detail {

/// Buffers of the search, reusable across calls to avoid allocations. Not thread-safe.
struct subset_workspace {
  std::vector<std::int64_t> top_prefix;  ///< [j*m + t]: sum of j's t strongest links
  std::vector<std::int64_t> to_chosen;   ///< links from each candidate to the chosen ones
  std::vector<std::int64_t> gains, row;
  std::vector<std::size_t> chosen;
};

/// Branch-and-bound state. Scores are doubled internally so the half-counted bound stays an
/// integer. The bound of a search node is O(m): each undecided candidate j may add its links to
/// the chosen ones plus half of its (need - 1) strongest links to any candidate (precomputed
/// prefix sums), and only the `need` largest of those can be realised.
class subset_search {
 public:
  subset_search(const link_matrix& links, const std::vector<std::size_t>& cand, std::size_t count,
                subset_workspace& ws)
      : links_(links),
        cand_(cand),
        count_(count),
        m_(cand.size()),
        top_prefix_(ws.top_prefix),
        to_chosen_(ws.to_chosen),
        chosen_(ws.chosen),
        gains_(ws.gains) {
    top_prefix_.assign(m_ * m_, 0);
    std::vector<std::int64_t>& row = ws.row;
    for (std::size_t j = 0; j < m_; ++j) {
      row.clear();
      for (std::size_t k = 0; k < m_; ++k) {
        if (k != j) row.push_back(link(j, k));
      }
      std::sort(row.begin(), row.end(), std::greater<>());
      std::int64_t sum = 0;
      for (std::size_t t = 0; t < row.size(); ++t) {
        sum += row[t];
        top_prefix_[j * m_ + t + 1] = sum;
      }
    }
    to_chosen_.assign(m_, 0);
    chosen_.clear();
  }

  void run(linked_subset& out) {
    chosen_.reserve(count_);
    dfs(0, 0);
    out.devices = best_;
    out.score = best_score_;
    out.nodes_visited = visited_;
  }

 private:
  std::int64_t link(std::size_t a, std::size_t b) const { return links_.at(cand_[a], cand_[b]); }

  /// Twice an upper bound on what picking \p need more from cand_[from..] can add.
  std::int64_t bound2(std::size_t from, std::size_t need) {
    gains_.clear();
    for (std::size_t j = from; j < m_; ++j) {
      gains_.push_back(2 * to_chosen_[j] + top_prefix_[j * m_ + need - 1]);
    }
    const auto nth = gains_.begin() + static_cast<std::ptrdiff_t>(need);
    if (nth < gains_.end())
      std::nth_element(gains_.begin(), nth - 1, gains_.end(), std::greater<>());
    std::int64_t ub = 0;
    for (auto it = gains_.begin(); it != nth && it != gains_.end(); ++it) ub += *it;
    return ub;
  }

  void dfs(std::size_t i, std::int64_t score) {
    ++visited_;
    const std::size_t need = count_ - chosen_.size();
    if (need == 0) {
      if (!found_ || score > best_score_) {
        found_ = true;
        best_score_ = score;
        best_.clear();
        for (std::size_t c : chosen_) best_.push_back(cand_[c]);
      }
      return;
    }
    if (m_ - i < need) return;
    // Prune when even the optimistic bound cannot beat the best (ties keep the earlier,
    // lexicographically smaller, subset).
    if (found_ && 2 * score + bound2(i, need) <= 2 * best_score_) return;
    const std::int64_t add = to_chosen_[i];
    chosen_.push_back(i);
    for (std::size_t j = 0; j < m_; ++j) to_chosen_[j] += link(i, j);
    dfs(i + 1, score + add);
    for (std::size_t j = 0; j < m_; ++j) to_chosen_[j] -= link(i, j);
    chosen_.pop_back();
    dfs(i + 1, score);
  }

  const link_matrix& links_;
  const std::vector<std::size_t>& cand_;
  std::size_t count_;
  std::size_t m_;
  std::vector<std::int64_t>& top_prefix_;
  std::vector<std::int64_t>& to_chosen_;
  std::vector<std::size_t>& chosen_;
  std::vector<std::int64_t>& gains_;
  std::vector<std::size_t> best_;
  std::int64_t best_score_ = 0;
  bool found_ = false;
  std::uint64_t visited_ = 0;
};

}  // namespace detail

/// Chooses \p count of \p candidates (device positions, ascending, all < links.size()) with the
/// largest sum of pair scores; among equal sums the lexicographically smallest set. Returns
/// false when there are fewer candidates than \p count. \p ws holds reusable buffers (one per
/// thread); otherwise pure.
inline bool best_linked_subset(const link_matrix& links, const std::vector<std::size_t>& candidates,
                               std::size_t count, linked_subset& out,
                               detail::subset_workspace& ws) {
  out.devices.clear();
  out.score = 0;
  out.nodes_visited = 0;
  if (count == 0 || candidates.size() < count) return count == 0;
  detail::subset_search search(links, candidates, count, ws);
  search.run(out);
  return true;
}

/// As above with buffers of its own. Pure, thread-safe.
inline bool best_linked_subset(const link_matrix& links, const std::vector<std::size_t>& candidates,
                               std::size_t count, linked_subset& out) {
  detail::subset_workspace ws;
  return best_linked_subset(links, candidates, count, out, ws);
}

/// The sum of link scores between device \p d and the devices in \p idle other than itself:
/// what the idle set loses when \p d is taken. Pure, thread-safe.
inline std::int64_t links_lost(const link_matrix& links, std::size_t d,
                               const std::vector<std::size_t>& idle) noexcept {
  std::int64_t lost = 0;
  for (std::size_t k : idle) {
    if (k != d) lost += links.at(d, k);
  }
  return lost;
}

}  // namespace gpuslice::fit
