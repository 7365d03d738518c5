// Shared state that survives anything (include/gpuslice/liveness.hpp, claim.hpp, and their use
// by the ledger, the node region and the rate words), end to end across real processes: a
// zombie leader, hidepid=2 probed as another uid, a claimer killed at each step of each claim,
// a reaper with no identity, joiners racing for node-region records, a ledger corrupted under
// attached processes, a file truncated under a reader, and slot generations.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gpuslice/claim.hpp"
#include "gpuslice/liveness.hpp"
#include "gpuslice/memory/ledger.hpp"
#include "gpuslice/rate/node_region.hpp"
#include "gpuslice/rate/token_bucket.hpp"
#include "gpuslice/testing/fake_liveness.hpp"
#include "test_util.hpp"

namespace m = gpuslice::memory;
namespace r = gpuslice::rate;
using gpuslice::claim_word;
using gpuslice::k_claim_claiming;
using gpuslice::liveness_probe;
using m::test::fork_child;
using m::test::temp_path;
using m::test::wait_child;

namespace {

const std::string k_uuid = "GPU-11111111-2222-3333-4444-555555555555";
constexpr std::int32_t k_nobody = 65534;
/// Exit code of a child that could not set up what it tests (the case is skipped, loudly).
constexpr int k_cannot_set_up = 77;

using fake_ledger = m::basic_ledger<m::heap_storage<>, gpuslice::testing::stepped_clock,
                                    gpuslice::testing::fake_liveness>;

using gpuslice::memory::test::shared_block;

/// A child that sleeps until killed; returns its pid.
pid_t sleeper() {
  return fork_child([] {
    for (;;) ::pause();
    return 0;
  });
}

void kill_and_wait(pid_t pid) {
  ::kill(pid, SIGKILL);
  (void)wait_child(pid);
}

/// Leaves in \p l a slot holding \p bytes on \p device whose process is dead: charged while
/// it lived (a reservation may reap first, and would reap a slot already dead), then killed.
void leave_dead_slot(m::shared_ledger& l, int device, std::uint64_t bytes) {
  const pid_t pid = sleeper();
  const auto probe = gpuslice::proc_liveness{}.probe(pid);
  REQUIRE(probe.what == liveness_probe::status::running);
  auto h = l.attach_as(pid, probe.start_time);
  REQUIRE(h.ok());
  REQUIRE(l.try_reserve(*h, device, bytes));
  kill_and_wait(pid);
}

/// Waits (bounded) until \p pid shows state \p state in /proc.
bool wait_for_state(pid_t pid, char state) {
  for (int i = 0; i < 5000; ++i) {
    const auto st = gpuslice::detail::read_proc_stat(static_cast<std::int32_t>(pid));
    if (st.what == gpuslice::detail::proc_stat::status::running && st.state == state) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

/// Where a claimer dies in the protocol of claim.hpp.
enum class step { after_cas, after_ident, after_writes };
const step k_steps[] = {step::after_cas, step::after_ident, step::after_writes};
const char* name(step s) {
  switch (s) {
    case step::after_cas:
      return "after its CAS";
    case step::after_ident:
      return "after recording its start time";
    case step::after_writes:
      return "half-way through its writes";
  }
  return "?";
}

/// In a child: follows the claim protocol on (\p word, \p ident) up to \p s, scribbles over
/// the claimed state when it got that far, and dies by SIGKILL there.
template <class Word>
[[noreturn]] void die_claiming(Word& word, Word& ident, step s,
                               const std::function<void()>& scribble) {
  const auto seen = word.load();
  const auto mine = claim_word(static_cast<std::int32_t>(::getpid()),
                               gpuslice::claim_generation(seen) + 1, k_claim_claiming);
  word.store(mine);  // step 1, the CAS (alone here, nothing races it)
  if (s != step::after_cas) {
    const auto me = gpuslice::self_identity(gpuslice::proc_liveness{});
    ident.store(gpuslice::claim_ident(mine, me.start_time));
  }
  if (s == step::after_writes) scribble();
  ::raise(SIGKILL);
  ::_exit(1);
}

/// Runs \p body in a child that must die by SIGKILL.
void in_dying_child(const std::function<void()>& body) {
  const pid_t pid = fork_child([&] {
    body();
    return 1;
  });
  REQUIRE(wait_child(pid) == 128 + SIGKILL);
}

/// Maps a whole file read-write (the raw view a crashed process left behind).
template <class T>
T* map_file(const std::string& path, std::size_t size) {
  const int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) return nullptr;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  return p == MAP_FAILED ? nullptr : static_cast<T*>(p);
}

}  // namespace

// ---- liveness -----------------------------------------------------------------------------

TEST_CASE("a zombie leader with running threads is alive, and can charge the ledger",
          "[liveness][shared_state]") {
  temp_path p("zombie");
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  const int d = *l->device(k_uuid, 1 << 20);
  shared_block<std::atomic<int>> stage;  // 1: the worker reserved; 2: the worker may exit
  const pid_t child = ::fork();
  if (child == 0) {
    static std::atomic<int>* st = stage.p;
    static m::shared_ledger* ledger = &*l;
    pthread_t worker;
    if (::pthread_create(
            &worker, nullptr,
            [](void*) -> void* {
              // The leader has exited by now (or is about to): attach and charge from here.
              auto s = ledger->attach();
              if (s.ok() && ledger->try_reserve(*s, 0, 4096)) st->store(1);
              while (st->load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
              ::_exit(0);
            },
            nullptr) != 0) {
      ::_exit(2);
    }
    // The main thread leaves as pthread_exit does at the kernel level (exit of one thread, not
    // the group), without unwinding through the test framework's frames.
    ::syscall(SYS_exit, 0);
  }
  REQUIRE(wait_for_state(child, 'Z'));
  for (int i = 0; i < 5000 && stage.p->load() != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(stage.p->load() == 1);  // the shim's first allocation would have failed here before
  const auto probe = gpuslice::proc_liveness{}.probe(child);
  CHECK(probe.what == liveness_probe::status::running);
  CHECK(probe.start_time != 0);
  CHECK(l->reap() == 0);  // a live process is never reaped
  CHECK(l->used(d) == 4096);
  stage.p->store(2);
  REQUIRE(wait_child(child) == 0);
  CHECK(gpuslice::proc_liveness{}.probe(child).what == liveness_probe::status::gone);
  CHECK(l->reap() == 4096);
}

TEST_CASE("a zombie with no thread left is dead; kill(pid, 0) is the judge",
          "[liveness][shared_state]") {
  const gpuslice::proc_liveness live;
  const pid_t child = fork_child([] { return 0; });
  REQUIRE(wait_for_state(child, 'Z'));
  // The leader turns zombie while the group's other threads (a sanitizer's, say) are still
  // being torn down; until they are gone it counts as alive, which is the safe side.
  bool gone = false;
  for (int i = 0; i < 5000 && !gone; ++i) {
    gone = live.probe(child).what == liveness_probe::status::gone;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(gone);
  REQUIRE(wait_child(child) == 0);
  CHECK(live.probe(child).what == liveness_probe::status::gone);
  CHECK(live.probe(0).what == liveness_probe::status::gone);
  CHECK(live.probe(-1).what == liveness_probe::status::gone);
  const auto self = live.probe(live.self_pid());
  CHECK(self.what == liveness_probe::status::running);
  CHECK(self.start_time != 0);
  // Another user's process (EPERM to kill) is alive.
  const pid_t root_sleeper = sleeper();
  const pid_t prober = fork_child([&] {
    if (::setresgid(k_nobody, k_nobody, k_nobody) != 0 ||
        ::setresuid(k_nobody, k_nobody, k_nobody) != 0) {
      return k_cannot_set_up;
    }
    if (::kill(root_sleeper, 0) == 0 || errno != EPERM) return 3;
    return gpuslice::proc_liveness{}.probe(root_sleeper).what == liveness_probe::status::running
               ? 0
               : 4;
  });
  const int rc = wait_child(prober);
  kill_and_wait(root_sleeper);
  if (rc == k_cannot_set_up) {
    WARN("not root: the other-user probe was not run");
  } else {
    CHECK(rc == 0);
  }
}

TEST_CASE("hidepid=2 as another uid: hidden processes are alive, dead ones still reaped",
          "[liveness][shared_state]") {
  temp_path p("hidepid");
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  REQUIRE(::chmod(p.str().c_str(), 0666) == 0);  // the prober runs as nobody
  const int d = *l->device(k_uuid, 1 << 20);
  auto me = *l->attach();  // this (root) process: alive, and hidden from nobody below
  REQUIRE(l->try_reserve(me, d, 1000));
  leave_dead_slot(*l, d, 300);
  const auto self = static_cast<std::int32_t>(::getpid());
  const pid_t prober = fork_child([&] {
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") != 0) {
      return k_cannot_set_up;
    }
    if (::setresgid(k_nobody, k_nobody, k_nobody) != 0 ||
        ::setresuid(k_nobody, k_nobody, k_nobody) != 0) {
      return k_cannot_set_up;
    }
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(self));
    if (::access(path, F_OK) == 0) return k_cannot_set_up;  // not hidden: nothing to test
    // What a nobody process sees of root's live process: ENOENT from /proc, EPERM from kill.
    if (gpuslice::proc_liveness{}.probe(self).what == liveness_probe::status::gone) return 3;
    auto ledger = m::shared_ledger::open(m::open_only, p.str());
    if (!ledger.ok()) return 4;
    const auto got = ledger->reap();  // the dead slot only
    if (got != 300) return 5;
    if (ledger->used(0) != 1000) return 6;
    return 0;
  });
  const int rc = wait_child(prober);
  if (rc == k_cannot_set_up) {
    WARN("cannot mount /proc with hidepid=2 in a private mount namespace here: not run");
    return;
  }
  CHECK(rc == 0);
  CHECK(l->used(d) == 1000);
  CHECK(l->slot_used(me, d) == 1000);
}

// ---- the claim primitive ------------------------------------------------------------------

TEST_CASE("claim: the holder is named in the CAS, judged by the kernel, finished by CAS",
          "[claim][shared_state]") {
  gpuslice::testing::fake_liveness procs(10, 100);
  gpuslice::testing::stepped_clock clock;
  std::atomic<std::uint64_t> word{0};
  std::atomic<std::uint64_t> ident{0};
  const gpuslice::claim_identity a{10, 100};
  const auto won = gpuslice::try_claim(word, ident, a, procs);
  REQUIRE(won.what == gpuslice::claim_result::kind::won);
  CHECK(gpuslice::claim_pid(word.load()) == 10);
  CHECK(gpuslice::claim_start(word.load(), ident.load()) == 100);
  // Another claimer waits while 10 lives: held now, busy when the injected clock runs out.
  procs.start(20, 200);
  const gpuslice::claim_identity b{20, 200};
  CHECK(gpuslice::try_claim(word, ident, b, procs).what == gpuslice::claim_result::kind::held);
  std::atomic<bool> done{false};
  gpuslice::claim_result late;
  std::thread waiter([&] {
    late = gpuslice::claim(
        word, ident, b, procs, [&] { return clock.now_ns(); }, 1000);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_FALSE(done.load());  // time stands still: it waits
  clock.advance(1001);
  waiter.join();
  CHECK(late.what == gpuslice::claim_result::kind::busy);
  CHECK(gpuslice::claim_pid(late.word) == 10);
  // A reused pid (another start time) is a dead holder: taken over, and the old holder's
  // finish fails rather than overwrite the new claim.
  procs.start(10, 101);
  const auto taken = gpuslice::try_claim(word, ident, b, procs);
  REQUIRE(taken.what == gpuslice::claim_result::kind::took_over);
  CHECK_FALSE(gpuslice::finish_claim(word, won.word, 2));
  CHECK_FALSE(gpuslice::release_claim(word, won.word));
  CHECK(gpuslice::finish_claim(word, taken.word, 2));
  CHECK(gpuslice::claim_state(word.load()) == 2);
  CHECK(gpuslice::claim_generation(word.load()) == gpuslice::claim_generation(won.word) + 1);
  // Settled words are left alone unless asked, and only when their holder is dead.
  CHECK(gpuslice::try_claim(word, ident, a, procs).what == gpuslice::claim_result::kind::settled);
  CHECK(gpuslice::try_claim(word, ident, a, procs, true).what ==
        gpuslice::claim_result::kind::settled);
  procs.kill(20);
  CHECK(gpuslice::try_claim(word, ident, a, procs, true).what ==
        gpuslice::claim_result::kind::took_over);
  // Before the ident word is written, only the pid judges: an unknown start is never "dead".
  word = claim_word(30, 5, k_claim_claiming);
  ident = 0;
  procs.start(30, 999);
  CHECK_FALSE(gpuslice::claim_holder_dead(procs, word.load(), ident.load()));
  procs.obscure(30);
  CHECK_FALSE(gpuslice::claim_holder_dead(procs, word.load(), ident.load()));
  CHECK(gpuslice::claim_holder_dead(procs, claim_word(0, 5, k_claim_claiming), 0));
  CHECK(gpuslice::claim_holder_dead(procs, claim_word(1 << 23, 5, k_claim_claiming), 0));
}

TEST_CASE("a ledger initialiser killed at each step is taken over", "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION(name(s)) {
      temp_path p("init");
      m::test::write_file(p.str(), std::string(m::k_region_size, '\0'));
      in_dying_child([&] {
        auto* reg = map_file<m::region>(p.str(), m::k_region_size);
        if (reg == nullptr) return;
        die_claiming(reg->header.init, reg->header.init_ident, s, [&] {
          reg->header.layout_version = m::k_layout_version;  // the magic is written last
          reg->header.device_count.store(3);
          std::strcpy(reg->devices[0].uuid, "GPU-junk");
          reg->slots[0].owner.store(m::make_owner(4242, m::slot_state::live, 9));
        });
      });
      auto l = m::shared_ledger::open(m::open_or_create, p.str());
      REQUIRE(l.ok());
      CHECK(l->device_count() == 0);
      CHECK(l->snapshot().processes.empty());
      CHECK(*l->device(k_uuid, 1000) == 0);
      CHECK(m::read_snapshot(p.str()).ok());
    }
  }
}

TEST_CASE("a device registrar killed at each step is taken over", "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION(name(s)) {
      temp_path p("device");
      auto l = m::shared_ledger::open(m::create_only, p.str());
      REQUIRE(l.ok());
      in_dying_child([&] {
        auto& rec = l->storage().region()->devices[0];
        die_claiming(rec.state, rec.state_ident, s, [&] {
          std::strcpy(rec.uuid, "GPU-junk");
          rec.limit.store(1);
          rec.used.store(77);
          rec.rate_words[0].store(12345);
        });
      });
      auto d = l->device(k_uuid, 1000);  // would have waited 2 s and failed before
      REQUIRE(d.ok());
      CHECK(*d == 0);
      CHECK(l->uuid(0) == k_uuid);
      CHECK(l->limit(0) == 1000);
      CHECK(l->used(0) == 0);
      r::shared_token_bucket<> bucket(l->rate_words(0));
      CHECK(bucket.attach(500'000, 1000, 0).ok());  // the rate words were rebuilt too
    }
  }
}

TEST_CASE("a slot claimer killed at each step leaves a slot that is reaped",
          "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION(name(s)) {
      temp_path p("slot");
      auto l = m::shared_ledger::open(m::create_only, p.str());
      REQUIRE(l.ok());
      const int d = *l->device(k_uuid, 1000);
      in_dying_child([&] {
        auto& slot = l->storage().region()->slots[0];
        die_claiming(slot.owner, slot.ident, s, [&] { slot.lanes[1].used[0].store(999); });
      });
      const auto o = l->storage().region()->slots[0].owner.load();
      CHECK(m::owner_state(o) == m::slot_state::claiming);
      CHECK(l->reap() == 0);  // a claimer holds nothing
      CHECK(m::owner_state(l->storage().region()->slots[0].owner.load()) == m::slot_state::free);
      auto me = l->attach();
      REQUIRE(me.ok());
      CHECK(l->slot_used(*me, d) == 0);
      CHECK(l->try_reserve(*me, d, 1000));
    }
  }
}

TEST_CASE("a rate-word initialiser killed at each step is taken over", "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION(name(s)) {
      temp_path p("rate");
      auto l = m::shared_ledger::open(m::create_only, p.str());
      REQUIRE(l.ok());
      const int d = *l->device(k_uuid, 1000);
      auto* words = l->rate_words(d);
      in_dying_child([&] {
        die_claiming(words[0], words[6], s, [&] {
          words[2].store(0);  // a share of zero: garbage a joiner must never use
          words[7].store(r::k_rate_tag_ready);
        });
      });
      r::shared_token_bucket<> bucket(words);
      const auto got = bucket.attach(250'000, 1000, 0);  // gave up after 0.5 ms before
      REQUIRE(got.ok());
      CHECK(*got);  // this process initialised them
      CHECK(bucket.ready());
      CHECK(bucket.share_ppm() == 250'000);
    }
  }
}

TEST_CASE("a live rate-word initialiser is waited for on the injected clock",
          "[claim][shared_state]") {
  r::local_rate_words w;
  gpuslice::testing::fake_liveness procs(1, 10);
  gpuslice::testing::stepped_clock clock;
  procs.start(50, 5);
  w.words[0] = claim_word(50, 1, k_claim_claiming);
  r::shared_token_bucket<> bucket(w.words);
  auto now = [&] { return clock.now_ns(); };
  std::atomic<int> outcome{-1};
  std::thread t([&] {
    const auto got = bucket.attach(500'000, 1000, 0, procs, now, 1'000'000);
    outcome = got.ok() ? 1 : 0;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(outcome.load() == -1);  // waiting while 50 lives
  procs.kill(50);
  t.join();
  CHECK(outcome.load() == 1);  // and took over once it died
  CHECK(bucket.ready());
  // Busy after the wait when the initialiser lives on.
  r::local_rate_words w2;
  procs.start(51, 5);
  w2.words[0] = claim_word(51, 1, k_claim_claiming);
  r::shared_token_bucket<> b2(w2.words);
  std::thread t2([&] {
    const auto got = b2.attach(500'000, 1000, 0, procs, now, 1'000'000);
    outcome = got.ok() ? 1 : (got.code() == gpuslice::errc::busy ? 2 : 0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  clock.advance(1'000'001);
  t2.join();
  CHECK(outcome.load() == 2);
}

TEST_CASE("a node-region initialiser or joiner killed at each step is taken over",
          "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION("initialiser " << name(s)) {
      temp_path p("node-init");
      m::test::write_file(p.str(), std::string(r::k_node_region_size, '\0'));
      in_dying_child([&] {
        auto* lay = map_file<r::node_layout>(p.str(), r::k_node_region_size);
        if (lay == nullptr) return;
        die_claiming(lay->header.init, lay->header.init_ident, s, [&] {
          lay->tenants[0].owner.store(claim_word(4242, 1, 2));
          lay->header.joins.store(99);
        });
      });
      auto region = r::node_region::open(p.str());
      REQUIRE(region.ok());
      CHECK(region->live_tenants() == 0);
      CHECK(region->layout()->header.joins.load() == 0);
    }
    DYNAMIC_SECTION("joiner " << name(s)) {
      temp_path p("node-join");
      auto region = r::node_region::open(p.str());
      REQUIRE(region.ok());
      in_dying_child([&] {
        auto& t = region->layout()->tenants[0];
        die_claiming(t.owner, t.ident, s, [&] { t.device_key.store(1); });
      });
      // Every record is usable again: the dead joiner's too.
      const auto me = gpuslice::self_identity(gpuslice::proc_liveness{});
      for (std::size_t i = 0; i < r::k_node_tenants; ++i) {
        REQUIRE(
            region->join(7, i + 1, gpuslice::task_priority::low, 0, me.pid, me.start_time, 0).ok());
      }
      CHECK(region->live_tenants() == r::k_node_tenants);
    }
  }
}

TEST_CASE("a reaper killed at each step of taking the gate is taken over",
          "[claim][shared_state]") {
  for (const step s : k_steps) {
    DYNAMIC_SECTION(name(s)) {
      temp_path p("gate");
      auto l = m::shared_ledger::open(m::create_only, p.str());
      REQUIRE(l.ok());
      const int d = *l->device(k_uuid, 1000);
      auto me = *l->attach();
      in_dying_child([&] {
        auto child = l->attach();
        if (!child.ok() || !l->try_reserve(*child, d, 600)) return;
        auto& h = l->storage().region()->header;
        die_claiming(h.reap_gate, h.reap_gate_ident, s,
                     [&] { l->storage().region()->devices[d].used.fetch_or(m::k_gate_bit); });
      });
      CHECK(l->try_reserve(me, d, 900));  // finishes the reap the dead reaper left
      CHECK(l->used(d) == 900);
      CHECK(gpuslice::claim_state(l->storage().region()->header.reap_gate.load()) ==
            gpuslice::k_claim_free);
    }
  }
}

// ---- the reap gate's holder -------------------------------------------------------------

TEST_CASE("a process that cannot establish its identity never reaps", "[ledger][shared_state]") {
  SECTION("fake liveness") {
    gpuslice::testing::fake_liveness procs(1, 10);
    auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
    const int d = *l.device(k_uuid, 1000);
    procs.start(9, 90);
    auto s = *l.attach_as(9, 90);
    REQUIRE(l.try_reserve(s, d, 600));
    procs.kill(9);
    procs.obscure(1);  // this process cannot read its own start time
    CHECK(l.reap() == 0);
    CHECK(l.storage().region()->header.reap_gate.load() == 0);  // never even claimed
    CHECK(l.used(d) == 600);
    procs.start(1, 10);
    CHECK(l.reap() == 600);
  }
  SECTION("a real process out of file descriptors") {
    temp_path p("no-identity");
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    const int d = *l->device(k_uuid, 1000);
    leave_dead_slot(*l, d, 400);
    const pid_t child = fork_child([&] {
      const rlimit lim{16, 16};
      if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return k_cannot_set_up;
      while (::open("/dev/null", O_RDONLY) >= 0) {
      }
      if (gpuslice::self_identity(gpuslice::proc_liveness{}).complete()) return k_cannot_set_up;
      if (l->reap() != 0) return 3;
      if (l->storage().region()->header.reap_gate.load() != 0) return 4;
      return l->used(0) == 400 ? 0 : 5;
    });
    const int rc = wait_child(child);
    if (rc == k_cannot_set_up) {
      WARN("could not exhaust file descriptors: not run");
    } else {
      CHECK(rc == 0);
    }
    CHECK(l->reap() == 400);
  }
  SECTION("a live holder whose start time is not known is never displaced") {
    temp_path p("live-holder");
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    const int d = *l->device(k_uuid, 1000);
    leave_dead_slot(*l, d, 400);
    const pid_t holder = sleeper();
    auto& h = l->storage().region()->header;
    const auto g = claim_word(holder, 3, k_claim_claiming);
    h.reap_gate.store(g);  // its ident word is not written (or unreadable): start unknown
    CHECK(l->reap() == 0);
    CHECK(h.reap_gate.load() == g);
    kill_and_wait(holder);
    CHECK(l->reap() == 400);
  }
}

// ---- node-region records ----------------------------------------------------------------

TEST_CASE("joiners racing for node-region records never share one", "[node_region][shared_state]") {
  temp_path p("race");
  auto region = r::node_region::open(p.str());
  REQUIRE(region.ok());
  const auto me = gpuslice::self_identity(gpuslice::proc_liveness{});
  constexpr std::size_t k_free = 3;
  for (std::size_t i = 0; i < r::k_node_tenants - k_free; ++i) {
    REQUIRE(region->join(1, 1, gpuslice::task_priority::low, 0, me.pid, me.start_time, 0).ok());
  }
  constexpr int k_joiners = 6;
  const int rounds = m::test::sanitized() ? 50 : 300;
  shared_block<std::atomic<int>> occupancy(r::k_node_tenants);
  shared_block<std::atomic<int>> violations;
  shared_block<std::atomic<int>> joined;
  std::vector<pid_t> kids;
  for (int k = 0; k < k_joiners; ++k) {
    kids.push_back(fork_child([&, k] {
      auto mine = r::node_region::open(p.str());
      if (!mine.ok()) return 2;
      const auto self = gpuslice::self_identity(gpuslice::proc_liveness{});
      for (int i = 0; i < rounds; ++i) {
        auto h = mine->join(2, static_cast<std::uint64_t>(10 + k), gpuslice::task_priority::low, 0,
                            self.pid, self.start_time, i);
        if (!h.ok()) continue;
        if (occupancy.p[h->index].fetch_add(1) != 0) violations.p->fetch_add(1);
        if (!mine->current(*h)) violations.p->fetch_add(1);
        joined.p->fetch_add(1);
        std::this_thread::yield();
        occupancy.p[h->index].fetch_sub(1);
        mine->leave(*h);
      }
      return 0;
    }));
  }
  for (pid_t k : kids) CHECK(wait_child(k) == 0);
  CHECK(violations.p->load() == 0);
  CHECK(joined.p->load() > 0);
  CHECK(region->live_tenants() == r::k_node_tenants - k_free);
}

TEST_CASE("a live joiner's half-written record is never taken", "[node_region][shared_state]") {
  temp_path p("half");
  auto region = r::node_region::open(p.str());
  REQUIRE(region.ok());
  const auto me = gpuslice::self_identity(gpuslice::proc_liveness{});
  for (std::size_t i = 0; i + 1 < r::k_node_tenants; ++i) {
    REQUIRE(region->join(1, 1, gpuslice::task_priority::low, 0, me.pid, me.start_time, 0).ok());
  }
  // The last record: claimed by a live process that has not written its start time yet.
  const pid_t slow = sleeper();
  auto& last = region->layout()->tenants[r::k_node_tenants - 1];
  last.owner.store(claim_word(slow, 1, k_claim_claiming));
  auto refused = region->join(1, 2, gpuslice::task_priority::low, 0, me.pid, me.start_time, 0);
  CHECK_FALSE(refused.ok());
  CHECK(last.owner.load() == claim_word(slow, 1, k_claim_claiming));
  kill_and_wait(slow);
  auto taken = region->join(1, 2, gpuslice::task_priority::low, 0, me.pid, me.start_time, 0);
  REQUIRE(taken.ok());
  CHECK(taken->index == r::k_node_tenants - 1);
}

// ---- corruption and readers ---------------------------------------------------------------

TEST_CASE("a ledger marked corrupted stops attached processes too", "[ledger][shared_state]") {
  temp_path p("corrupt");
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  const int d = *l->device(k_uuid, 1 << 20);
  shared_block<std::atomic<std::uint64_t>> ops;
  shared_block<std::atomic<std::uint64_t>> after;  // reservations granted after it was marked
  shared_block<std::atomic<int>> marked;
  const pid_t child = fork_child([&] {
    auto s = l->attach();
    if (!s.ok()) return 2;
    for (int i = 0; i < 10'000'000; ++i) {
      const bool was_marked = marked.p->load() != 0;
      if (l->try_reserve(*s, d, 64)) {
        if (was_marked) after.p->fetch_add(1);
        l->release(*s, d, 64);
        ops.p->fetch_add(1);
      } else if (!l->usable()) {
        return 0;  // refused, and it says why
      }
    }
    return 3;
  });
  while (ops.p->load() < 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  l->mark_corrupted();
  marked.p->store(1);
  CHECK(wait_child(child) == 0);
  CHECK(after.p->load() == 0);
  CHECK_FALSE(l->attach().ok());  // no new slot in a corrupted ledger either
  auto reopened = m::shared_ledger::open(m::open_or_create, p.str());
  REQUIRE_FALSE(reopened.ok());
  CHECK(reopened.code() == gpuslice::errc::corrupt);
  // The advice never suggests removing a file under running processes.
  CHECK(reopened.message().find("stop every process") != std::string::npos);
  CHECK(m::read_snapshot(p.str()).code() == gpuslice::errc::corrupt);
}

TEST_CASE("a file truncated under a reader is an error, never SIGBUS", "[ledger][shared_state]") {
  temp_path p("truncate");
  {
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    auto s = l->attach();
    REQUIRE(l->try_reserve(*s, *l->device(k_uuid, 1000), 10));
  }
  const std::string image = m::test::read_file(p.str());
  REQUIRE(::truncate(p.str().c_str(), 4096) == 0);
  auto cut = m::read_snapshot(p.str());
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.code() == gpuslice::errc::corrupt);
  CHECK(cut.message().find("truncated") != std::string::npos);
  // Truncated and restored over and over while a reader reads: every read is a snapshot or an
  // error, and the reader survives.
  m::test::write_file(p.str(), image);
  std::atomic<bool> stop{false};
  std::thread cutter([&] {
    while (!stop.load()) {
      (void)::truncate(p.str().c_str(), static_cast<off_t>(m::k_region_size / 2));
      (void)::truncate(p.str().c_str(), static_cast<off_t>(m::k_region_size));
    }
  });
  int ok = 0;
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    const auto snap = m::read_snapshot(p.str());
    if (snap.ok()) {
      ++ok;
      CHECK(snap->devices.size() <= static_cast<std::size_t>(m::k_max_devices));
    } else {
      ++refused;
    }
  }
  stop = true;
  cutter.join();
  CHECK(ok + refused == 300);
}

TEST_CASE("read_snapshot clamps counts it cannot trust", "[ledger][shared_state]") {
  temp_path p("clamp");
  {
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    REQUIRE(l->device(k_uuid, 1000).ok());
    REQUIRE(l->set_sm_limit(0, 30));
  }
  std::string bytes = m::test::read_file(p.str());
  m::test::poke<std::uint32_t>(
      bytes, offsetof(m::region, devices) + offsetof(m::device_record, sm_limit_percent), 4000);
  m::test::write_file(p.str(), bytes);
  const auto snap = m::read_snapshot(p.str());
  REQUIRE(snap.ok());
  REQUIRE(snap->devices.size() == 1);
  CHECK(snap->devices[0].sm_limit_percent == 100);
}

// ---- slot generations -----------------------------------------------------------------------

TEST_CASE("a reaped slot's old handle never acts on the slot's next owner",
          "[ledger][shared_state]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid, 1000);
  auto me = *l.attach();
  REQUIRE(l.try_reserve(me, d, 300));
  // This process is taken for dead (the start time it recorded no longer matches) and reaped.
  procs.start(1, 11);
  CHECK(l.reap() == 300);
  CHECK_FALSE(l.slot_current(me));
  // Another process takes the slot and charges it.
  procs.start(2, 20);
  auto other = *l.attach_as(2, 20);
  CHECK(other.index == me.index);
  REQUIRE(l.try_reserve(other, d, 500));
  // The stale handle fails closed: no reservation, and its release frees none of 2's bytes.
  CHECK_FALSE(l.try_reserve(me, d, 1));
  l.release(me, d, 500);
  CHECK(l.used(d) == 500);
  CHECK(l.slot_used(other, d) == 500);
  CHECK(l.slot_used(me, d) == 0);
  // attach() gives this process a new slot of its own.
  auto again = l.attach();
  REQUIRE(again.ok());
  CHECK(l.slot_current(*again));
  CHECK(again->index != me.index);
  CHECK(l.try_reserve(*again, d, 500));
  CHECK_FALSE(l.try_reserve(*again, d, 1));
}

TEST_CASE("a corrupted ledger stays closed: reaps, registrations and releases change nothing",
          "[ledger][shared_state]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid, 1000);
  auto me = *l.attach();
  procs.start(9, 90);
  auto other = *l.attach_as(9, 90);
  REQUIRE(l.try_reserve(me, d, 100));
  REQUIRE(l.try_reserve(other, d, 200));
  l.mark_corrupted();
  CHECK_FALSE(l.usable());
  CHECK_FALSE(l.try_reserve(me, d, 1));
  procs.kill(9);
  CHECK(l.reap() == 0);  // a reap would reopen the gates: none runs
  CHECK_FALSE(l.try_reserve(me, d, 1));
  l.release(me, d, 100);
  CHECK(l.used(d) == 300);  // nothing counted any more, nothing given back
  const auto fresh = l.device("GPU-another", 1000);
  REQUIRE_FALSE(fresh.ok());
  CHECK(fresh.code() == gpuslice::errc::corrupt);
  CHECK_FALSE(l.attach_as(12, 1).ok());
}
