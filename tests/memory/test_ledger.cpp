// The ledger in one process (in-memory and shared file), its opener's error handling, reaping
// with faked liveness, and the simpler multi-process cases (fork re-attach, concurrent open).
#include <sys/mman.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "gpuslice/memory/ledger.hpp"
#include "gpuslice/testing/fake_liveness.hpp"
#include "test_util.hpp"

namespace m = gpuslice::memory;
using gpuslice::errc;
using m::test::temp_path;

namespace {
constexpr std::uint64_t k_mib = 1024 * 1024;
constexpr std::uint64_t k_gib = 1024 * k_mib;
const std::string k_uuid0 = "GPU-8f0c2a4e-1b2c-4d5e-8f90-0123456789ab";
const std::string k_uuid1 = "GPU-00000000-0000-0000-0000-000000000001";

using fake_ledger = m::basic_ledger<m::heap_storage<>, gpuslice::testing::stepped_clock,
                                    gpuslice::testing::fake_liveness>;

/// A valid ledger file image with one device and one reservation.
std::string valid_image(const std::string& path) {
  {
    auto l = m::shared_ledger::open(m::create_only, path);
    REQUIRE(l.ok());
    auto d = l->device(k_uuid0, k_gib);
    auto s = l->attach();
    REQUIRE(l->try_reserve(*s, *d, 100));
  }
  return m::test::read_file(path);
}
}  // namespace

TEST_CASE("devices are keyed by UUID and keep their limit", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  CHECK(l.device_count() == 0);
  auto d0 = l.device(k_uuid0, 2 * k_gib);
  REQUIRE(d0.ok());
  CHECK(*d0 == 0);
  auto d1 = l.device(k_uuid1, k_gib);
  REQUIRE(d1.ok());
  CHECK(*d1 == 1);
  // An existing device keeps its limit.
  CHECK(*l.device(k_uuid0, 5) == 0);
  CHECK(l.limit(0) == 2 * k_gib);
  CHECK(l.uuid(1) == k_uuid1);
  CHECK(*l.find_device(k_uuid1) == 1);
  auto missing = l.find_device("GPU-nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.code() == errc::not_found);
  CHECK(missing.message() == "device UUID \"GPU-nope\" is not in the ledger");
  auto bad = l.device(std::string(m::k_uuid_bytes, 'x'), 1);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.code() == errc::invalid_value);
  CHECK(l.device("", 1).code() == errc::invalid_value);
}

TEST_CASE("a seventeenth device is refused", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  for (int i = 0; i < m::k_max_devices; ++i) REQUIRE(*l.device("GPU-" + std::to_string(i), 1) == i);
  auto r = l.device("GPU-16", 1);
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == errc::capacity);
  CHECK(r.message() == "device UUID \"GPU-16\": the ledger already holds 16 devices");
}

TEST_CASE("reserve never goes over the limit and release gives back", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  const int d = *l.device(k_uuid0, 1000);
  auto s = l.attach();
  REQUIRE(s.ok());
  CHECK(l.try_reserve(*s, d, 600));
  CHECK_FALSE(l.try_reserve(*s, d, 401));
  CHECK(l.used(d) == 600);
  CHECK(l.try_reserve(*s, d, 400));  // exactly at the limit is allowed
  CHECK(l.used(d) == 1000);
  CHECK_FALSE(l.try_reserve(*s, d, 1));
  CHECK(l.slot_used(*s, d) == 1000);
  l.release(*s, d, 600);
  CHECK(l.used(d) == 400);
  CHECK(l.slot_used(*s, d) == 400);
  CHECK(l.try_reserve(*s, d, 0));  // zero bytes always fit
  // Bad arguments fail closed.
  CHECK_FALSE(l.try_reserve(*s, 5, 1));
  CHECK_FALSE(l.try_reserve(*s, -1, 1));
  CHECK_FALSE(l.try_reserve(m::slot_handle{}, d, 1));
  CHECK_FALSE(l.try_reserve(*s, d, ~std::uint64_t{0}));
  CHECK(l.used(d) == 400);
}

TEST_CASE("memory the driver holds is charged beyond the limit and refuses everyone", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(2, 20);
  auto me = *l.attach();
  auto other = *l.attach_as(2, 20);
  REQUIRE(l.try_reserve(other, d, 900));
  CHECK_FALSE(l.try_reserve(me, d, 300));
  CHECK(l.charge_held(me, d, 300));  // a context that does not fit: counted all the same
  CHECK(l.used(d) == 1200);
  CHECK(l.slot_used(me, d) == 300);
  l.release(other, d, 200);
  CHECK_FALSE(l.try_reserve(other, d, 1));  // 1000 in use: the other process sees it
  l.release(other, d, 100);
  CHECK(l.try_reserve(other, d, 100));
  CHECK(l.used(d) == 1000);
  // Bad arguments fail closed and charge nothing.
  CHECK_FALSE(l.charge_held(me, 5, 1));
  CHECK_FALSE(l.charge_held(m::slot_handle{}, d, 1));
  CHECK_FALSE(l.charge_held(me, d, ~std::uint64_t{0}));
  CHECK(l.used(d) == 1000);
}

TEST_CASE("releasing more than the slot holds gives back only what it holds", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(2, 20);
  auto me = *l.attach();
  auto other = *l.attach_as(2, 20);
  REQUIRE(l.try_reserve(me, d, 400));
  REQUIRE(l.try_reserve(other, d, 100));
  l.release(me, d, 1000);
  CHECK(l.slot_used(me, d) == 0);
  CHECK(l.used(d) == 100);
  CHECK(l.slot_used(other, d) == 100);
  CHECK(l.try_reserve(me, d, 900));
}

TEST_CASE("a limit of 0 admits nothing", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  const int d = *l.device(k_uuid0, 0);
  auto s = *l.attach();
  CHECK_FALSE(l.try_reserve(s, d, 1));
  CHECK(l.used(d) == 0);
}

TEST_CASE("set_limit applies to the next reservation and never revokes", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  const int d = *l.device(k_uuid0, 1000);
  auto s = *l.attach();
  REQUIRE(l.try_reserve(s, d, 800));
  REQUIRE(l.set_limit(d, 500));
  CHECK(l.limit(d) == 500);
  CHECK(l.used(d) == 800);  // in use stays in use
  CHECK_FALSE(l.try_reserve(s, d, 1));
  l.release(s, d, 400);
  CHECK(l.try_reserve(s, d, 100));
  CHECK_FALSE(l.try_reserve(s, d, 1));
  REQUIRE(l.set_limit(d, 2000));
  CHECK(l.try_reserve(s, d, 1500));
  CHECK(l.used(d) == 2000);
  CHECK_FALSE(l.set_limit(7, 1));
}

TEST_CASE("SM limit and the limiter's words", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  const int d = *l.device(k_uuid0, 1);
  CHECK(l.sm_limit(d) == 0);
  CHECK(l.set_sm_limit(d, 30));
  CHECK(l.sm_limit(d) == 30);
  CHECK_FALSE(l.set_sm_limit(d, 101));
  CHECK_FALSE(l.set_sm_limit(9, 10));
  auto* w = l.rate_words(d);
  REQUIRE(w != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(w) % 8 == 0);
  for (std::size_t i = 0; i < m::k_rate_words; ++i) CHECK(w[i].load() == 0);
  CHECK(l.rate_words(16) == nullptr);
  CHECK(l.rate_words(-1) == nullptr);
}

TEST_CASE("a dead process's slot is reaped exactly once; a reused pid does not keep it",
          "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  gpuslice::testing::stepped_clock clock;
  auto l = fake_ledger::create(clock, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(4242, 100);
  auto victim = l.attach_as(4242, 100);
  REQUIRE(victim.ok());
  auto me = *l.attach();
  REQUIRE(l.try_reserve(*victim, d, 700));
  REQUIRE(l.try_reserve(me, d, 200));

  CHECK(l.reap() == 0);  // everyone alive
  CHECK(l.snapshot().processes.size() == 2);

  // pid 4242 now belongs to another process: the old slot is dead.
  procs.start(4242, 555);
  CHECK(l.reap() == 700);
  CHECK(l.used(d) == 200);
  CHECK(l.reap() == 0);  // exactly once
  CHECK(l.used(d) == 200);
  CHECK(l.reclaimed_bytes() == 700);
  auto snap = l.snapshot();
  REQUIRE(snap.processes.size() == 1);
  CHECK(snap.processes[0].pid == 1);
  CHECK(snap.processes[0].used[0] == 200);
  // The new process with the reused pid gets a slot of its own.
  auto reborn = l.attach_as(4242, 555);
  REQUIRE(reborn.ok());
  CHECK(l.slot_used(*reborn, d) == 0);
}

TEST_CASE("a process whose liveness cannot be read is never reaped", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(9, 90);
  auto s = *l.attach_as(9, 90);
  REQUIRE(l.try_reserve(s, d, 600));
  procs.obscure(9);  // e.g. /proc unreadable for lack of file descriptors
  CHECK(l.reap() == 0);
  CHECK(l.used(d) == 600);
  procs.kill(9);
  CHECK(l.reap() == 600);
}

TEST_CASE("real /proc liveness: self, a reused pid, a zombie and a gone process", "[ledger]") {
  const m::proc_liveness live;
  const auto self = live.probe(live.self_pid());
  REQUIRE(self.what == m::liveness_probe::status::running);
  CHECK(self.start_time > 0);
  const pid_t child = m::test::fork_child([] { return 0; });
  // Until waited for, the exited child is a zombie: dead to the ledger.
  for (int i = 0; i < 1000 && live.probe(child).what == m::liveness_probe::status::running; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(live.probe(child).what == m::liveness_probe::status::gone);
  REQUIRE(m::test::wait_child(child) == 0);
  CHECK(live.probe(child).what == m::liveness_probe::status::gone);
  CHECK(live.probe(0).what == m::liveness_probe::status::gone);
}

TEST_CASE("a reserve that would fail reaps first", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(77, 1);
  auto dead = *l.attach_as(77, 1);
  REQUIRE(l.try_reserve(dead, d, 900));
  auto me = *l.attach();
  CHECK_FALSE(l.try_reserve(me, d, 500));  // 77 is alive: no room
  procs.kill(77);
  CHECK(l.try_reserve(me, d, 500));  // reaping 77 made room
  CHECK(l.used(d) == 500);
}

TEST_CASE("periodic reaping is rate-bounded by the injected clock", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  gpuslice::testing::stepped_clock clock(0);
  auto l = fake_ledger::create(clock, procs);
  const int d = *l.device(k_uuid0, 1000);
  procs.start(5, 1);
  auto other = *l.attach_as(5, 1);
  REQUIRE(l.try_reserve(other, d, 100));
  procs.kill(5);
  auto me = *l.attach();
  std::uint64_t mine = 0;
  for (std::uint32_t i = 0; i < m::k_reap_check_every; ++i, ++mine) {
    REQUIRE(l.try_reserve(me, d, 1));
  }
  CHECK(l.used(d) == 100 + mine);  // a whole check period, but the interval has not elapsed
  clock.advance(m::k_reap_interval_ns - 1);
  for (std::uint32_t i = 0; i < m::k_reap_check_every; ++i, ++mine) {
    REQUIRE(l.try_reserve(me, d, 1));
  }
  CHECK(l.used(d) == 100 + mine);
  clock.advance(1);
  for (std::uint32_t i = 0; i < m::k_reap_check_every; ++i, ++mine) {
    REQUIRE(l.try_reserve(me, d, 1));
  }
  CHECK(l.used(d) == mine);  // the interval elapsed: reaped within one check period
}

TEST_CASE("a reaper that died half-way is taken over by the next operation", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 10);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  const int d = *l.device(k_uuid0, 1000);
  auto me = *l.attach();
  procs.start(31, 3);
  auto half = *l.attach_as(31, 3);
  REQUIRE(l.try_reserve(half, d, 250));
  // Reaper pid 999 (now gone) closed the gate and marked slot 31 before dying.
  auto* r = l.storage().region();
  r->header.reap_gate.store(gpuslice::claim_word(999, 4, gpuslice::k_claim_claiming));
  r->devices[d].used.fetch_or(m::k_gate_bit);
  r->slots[half.index].owner.store(
      gpuslice::with_claim_state(half.owner, static_cast<std::uint8_t>(m::slot_state::reaping)));
  CHECK(l.used(d) == 250);          // the gate bit is not part of the total
  CHECK(l.try_reserve(me, d, 10));  // finishes the dead reaper's work, then reserves
  CHECK(l.used(d) == 10);
  CHECK(l.reclaimed_bytes() == 250);
  CHECK(gpuslice::claim_state(r->header.reap_gate.load()) == gpuslice::k_claim_free);
  CHECK((r->devices[d].used.load() & m::k_gate_bit) == 0);
  CHECK(l.snapshot().processes.size() == 1);
}

TEST_CASE("snapshot lists devices and live processes", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  const int d0 = *l.device(k_uuid0, 1000);
  const int d1 = *l.device(k_uuid1, 2000);
  l.set_sm_limit(d1, 40);
  auto s = *l.attach();
  REQUIRE(l.try_reserve(s, d0, 10));
  REQUIRE(l.try_reserve(s, d1, 20));
  auto snap = l.snapshot();
  REQUIRE(snap.devices.size() == 2);
  CHECK(snap.devices[0].uuid == k_uuid0);
  CHECK(snap.devices[0].limit == 1000);
  CHECK(snap.devices[0].used == 10);
  CHECK(snap.devices[1].sm_limit_percent == 40);
  REQUIRE(snap.processes.size() == 1);
  CHECK(snap.processes[0].pid == ::getpid());
  CHECK(snap.processes[0].start_time != 0);
  CHECK(snap.processes[0].used[0] == 10);
  CHECK(snap.processes[0].used[1] == 20);
}

TEST_CASE("attach returns one slot per process; pids must be positive", "[ledger]") {
  auto l = m::in_memory_ledger::create();
  auto a = l.attach();
  auto b = l.attach();
  REQUIRE(a.ok());
  CHECK(a->index == b->index);
  CHECK(l.attach_as(0, 1).code() == errc::invalid_value);
}

TEST_CASE("the slot table fills up and is refused with a clear error", "[ledger]") {
  gpuslice::testing::fake_liveness procs(1, 1);
  auto l = fake_ledger::create(gpuslice::testing::stepped_clock{}, procs);
  for (std::size_t i = 0; i < m::k_slot_count; ++i) {
    const auto pid = static_cast<std::int32_t>(1000 + i);
    procs.start(pid, 1);
    REQUIRE(l.attach_as(pid, 1).ok());
  }
  procs.start(5000, 1);
  auto full = l.attach_as(5000, 1);
  REQUIRE_FALSE(full.ok());
  CHECK(full.code() == errc::capacity);
  CHECK(full.message() == "all 1024 process slots are held by live processes");
  procs.kill(1000);  // a dead one frees its slot on the next attach
  CHECK(l.attach_as(5000, 1).ok());
}

// ---- the shared file ---------------------------------------------------------------------

TEST_CASE("creation tags", "[ledger][file]") {
  temp_path p("tags");
  auto none = m::shared_ledger::open(m::open_only, p.str());
  REQUIRE_FALSE(none.ok());
  CHECK(none.code() == errc::not_found);
  CHECK(none.message() == "ledger file \"" + p.str() + "\": does not exist (open_only)");

  auto nodir = m::shared_ledger::open(m::open_or_create, p.str() + ".d/ledger");
  REQUIRE_FALSE(nodir.ok());
  CHECK(nodir.code() == errc::io_error);
  CHECK(nodir.message() ==
        "ledger file \"" + p.str() + ".d/ledger\": cannot create: No such file or directory");

  auto created = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(created.ok());
  auto again = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE_FALSE(again.ok());
  CHECK(again.code() == errc::exists);

  const int d = *created->device(k_uuid0, 1000);
  auto s = *created->attach();
  REQUIRE(created->try_reserve(s, d, 300));
  // Both other tags see the same, live ledger: it is never reinitialised.
  auto opened = m::shared_ledger::open(m::open_only, p.str());
  REQUIRE(opened.ok());
  CHECK(opened->used(d) == 300);
  auto either = m::shared_ledger::open(m::open_or_create, p.str());
  REQUIRE(either.ok());
  CHECK(either->used(d) == 300);
  CHECK(*either->find_device(k_uuid0) == d);
  // Two mappings, one ledger: a reservation through one is seen by the other, and so are the
  // limiter's words.
  auto s2 = *opened->attach();
  CHECK(s2.index == s.index);  // same process, same slot
  CHECK_FALSE(opened->try_reserve(s2, d, 701));
  either->rate_words(d)[3].store(42);
  CHECK(opened->rate_words(d)[3].load() == 42);
  CHECK(std::filesystem::file_size(p.str()) == m::k_region_size);
}

TEST_CASE("read_snapshot sees a file without writing it", "[ledger][file]") {
  temp_path p("snapshot");
  valid_image(p.str());
  const auto before = m::test::read_file(p.str());
  auto snap = m::read_snapshot(p.str());
  REQUIRE(snap.ok());
  REQUIRE(snap->devices.size() == 1);
  CHECK(snap->devices[0].uuid == k_uuid0);
  CHECK(snap->devices[0].used == 100);
  CHECK(m::test::read_file(p.str()) == before);
  CHECK(m::read_snapshot(p.str() + ".absent").code() == errc::not_found);
}

TEST_CASE("damaged files give one clear error and are left untouched", "[ledger][file]") {
  temp_path good("good");
  const std::string image = valid_image(good.str());
  REQUIRE(image.size() == m::k_region_size);
  std::mt19937_64 rng(12345);

  struct damage {
    std::string name;
    std::string bytes;
    errc code;
    std::string message;  // after "ledger file \"<path>\": "
  };
  std::vector<damage> cases;
  {
    std::string b(m::k_region_size, '\0');
    for (auto& c : b) c = static_cast<char>(rng());
    cases.push_back(
        {"random bytes", b, errc::corrupt, "not a gpuslice ledger (wrong magic number)"});
  }
  cases.push_back({"truncated", image.substr(0, 1000), errc::corrupt,
                   "truncated: 1000 bytes, expected 1642752"});
  cases.push_back({"truncated inside the header", image.substr(0, 100), errc::corrupt,
                   "truncated: 100 bytes, expected 1642752"});
  cases.push_back({"grown", image + std::string(64, '\0'), errc::corrupt,
                   "wrong size: 1642816 bytes, expected 1642752"});
  {
    std::string b = image;
    m::test::poke<std::uint64_t>(b, 0, 0x4c4c45484d464c45ULL);
    cases.push_back(
        {"wrong magic", b, errc::corrupt, "not a gpuslice ledger (wrong magic number)"});
  }
  {
    // A foreign file whose init word happens to read "initialising" by a dead pid: never taken
    // over (and so never overwritten).
    std::string b = image;
    m::test::poke<std::uint64_t>(b, 0, 0x4c4c45484d464c45ULL);
    m::test::poke<std::uint64_t>(b, offsetof(m::region_header, init),
                                 gpuslice::claim_word(0x3fffff, 1, gpuslice::k_claim_claiming));
    cases.push_back({"wrong magic, initialising", b, errc::corrupt,
                     "not a gpuslice ledger (wrong magic number)"});
  }
  {
    std::string b = image;
    m::test::poke<std::uint32_t>(b, 8, 0);
    cases.push_back({"old version", b, errc::version_mismatch, "layout version 0, expected 2"});
  }
  {
    std::string b = image.substr(0, 4096);
    m::test::poke<std::uint32_t>(b, 8, 3);
    cases.push_back({"newer version of another size", b, errc::version_mismatch,
                     "layout version 3, expected 2"});
  }
  {
    std::string b = image;
    m::test::poke<std::uint32_t>(b, offsetof(m::region_header, device_count), 17);
    cases.push_back(
        {"too many devices", b, errc::corrupt, "header claims 17 devices, at most 16 fit"});
  }
  {
    std::string b = image;
    m::test::poke<std::uint8_t>(b, offsetof(m::region_header, init), 3);
    cases.push_back(
        {"marked corrupted", b, errc::corrupt, std::string(m::detail::k_corrupted_advice)});
  }
  {
    std::string b = image;
    m::test::poke<std::uint8_t>(b, offsetof(m::region_header, init), 9);
    cases.push_back({"bad init state", b, errc::corrupt, "invalid initialisation state 9"});
  }
  {
    std::string b = image;
    m::test::poke<std::uint64_t>(b, offsetof(m::region_header, region_size), 4096);
    cases.push_back({"header size disagrees", b, errc::corrupt,
                     "size 1642752 bytes (header says 4096), expected 1642752"});
  }
  {
    std::string b(m::k_region_size, '\0');
    b[40] = 1;  // zero magic, but not a fresh file either
    cases.push_back(
        {"zero magic with data", b, errc::corrupt, "not a gpuslice ledger (wrong magic number)"});
  }

  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      temp_path p("damaged");
      m::test::write_file(p.str(), c.bytes);
      const std::string prefix = "ledger file \"" + p.str() + "\": ";
      for (int tag = 0; tag < 2; ++tag) {
        auto r = tag == 0 ? m::shared_ledger::open(m::open_only, p.str())
                          : m::shared_ledger::open(m::open_or_create, p.str());
        REQUIRE_FALSE(r.ok());
        CHECK(r.code() == c.code);
        CHECK(r.message() == prefix + c.message);
        CHECK(r.message().find('\n') == std::string::npos);
      }
      auto snap = m::read_snapshot(p.str());
      REQUIRE_FALSE(snap.ok());
      CHECK(snap.code() == c.code);
      CHECK(m::test::read_file(p.str()) == c.bytes);  // never reinitialised
    }
  }
}

TEST_CASE("random files never crash the opener", "[ledger][file]") {
  std::mt19937_64 rng(777);
  temp_path good("good");
  const std::string image = valid_image(good.str());
  for (int i = 0; i < 200; ++i) {
    temp_path p("fuzz");
    std::string b = image;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) {
      // Damage the header, where the opener looks.
      b[rng() % sizeof(m::region_header)] = static_cast<char>(rng());
    }
    if (rng() % 4 == 0) b.resize(rng() % (m::k_region_size + 100));
    m::test::write_file(p.str(), b);
    auto r = m::shared_ledger::open(m::open_only, p.str());
    if (!r.ok()) {
      CHECK_FALSE(r.message().empty());
      CHECK(r.message().rfind("ledger file \"", 0) == 0);
    } else {
      CHECK(r->device_count() <= m::k_max_devices);
      (void)r->snapshot();
    }
  }
}

TEST_CASE("a mark_corrupted ledger is refused afterwards", "[ledger][file]") {
  temp_path p("marked");
  {
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    l->mark_corrupted();
  }
  auto r = m::shared_ledger::open(m::open_or_create, p.str());
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == errc::corrupt);
}

TEST_CASE("an initialiser that died half-way is taken over", "[ledger][file]") {
  temp_path p("stuck");
  const pid_t gone = m::test::fork_child([] { return 0; });
  REQUIRE(m::test::wait_child(gone) == 0);
  std::string b(m::k_region_size, '\0');
  // Claimed (initialising) by a process that is gone.
  m::test::poke<std::uint64_t>(b, offsetof(m::region_header, init),
                               gpuslice::claim_word(gone, 1, gpuslice::k_claim_claiming));
  b[5000] = 7;  // half-written garbage in the body
  m::test::write_file(p.str(), b);
  auto l = m::shared_ledger::open(m::open_or_create, p.str());
  REQUIRE(l.ok());
  CHECK(l->device_count() == 0);
  CHECK(l->snapshot().processes.empty());
}

TEST_CASE("an empty file is not a ledger for open_only", "[ledger][file]") {
  temp_path p("empty");
  m::test::write_file(p.str(), "");
  auto r = m::shared_ledger::open(m::open_only, p.str());  // waits k_init_wait_ns
  REQUIRE_FALSE(r.ok());
  CHECK(r.code() == errc::busy);
  CHECK(r.message() ==
        "ledger file \"" + p.str() + "\": is empty: its creator did not initialise it within 2 s");
  // open_or_create may initialise an empty file: nobody can be using it.
  CHECK(m::shared_ledger::open(m::open_or_create, p.str()).ok());
}

TEST_CASE("a forked child attaches to its own slot", "[ledger][file]") {
  temp_path p("fork");
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  const int d = *l->device(k_uuid0, 1000);
  auto parent = *l->attach();
  REQUIRE(l->try_reserve(parent, d, 100));
  const pid_t child = m::test::fork_child([&] {
    auto mine = l->attach();
    if (!mine.ok() || mine->index == parent.index) return 1;
    if (!l->try_reserve(*mine, d, 50)) return 2;
    return l->slot_used(*mine, d) == 50 ? 0 : 3;  // exits holding 50 bytes
  });
  REQUIRE(m::test::wait_child(child) == 0);
  CHECK(l->used(d) == 150);
  CHECK(l->reap() == 50);
  CHECK(l->used(d) == 100);
  CHECK(l->slot_used(parent, d) == 100);
}

TEST_CASE("processes that open a fresh file together agree on one initialisation",
          "[ledger][file]") {
  temp_path p("race");
  constexpr int k_children = 8;
  // go: 0 = wait, 1 = open together, 2 = may exit. The children stay alive until the parent
  // has looked, so a periodic reap by a sibling cannot return their bytes early.
  struct flags {
    std::atomic<int> go;
    std::atomic<int> reserved;
  };
  auto* f = static_cast<flags*>(::mmap(nullptr, sizeof(flags), PROT_READ | PROT_WRITE,
                                       MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(f != MAP_FAILED);
  f->go.store(0);
  f->reserved.store(0);
  std::vector<pid_t> kids;
  for (int i = 0; i < k_children; ++i) {
    kids.push_back(m::test::fork_child([&] {
      while (f->go.load() == 0) {
      }
      auto l = m::shared_ledger::open(m::open_or_create, p.str());
      if (!l.ok()) return 1;
      auto d = l->device(k_uuid0, 1000);
      auto s = l->attach();
      if (!d.ok() || !s.ok() || *d != 0) return 2;
      const int rc = l->try_reserve(*s, *d, 1) ? 0 : 3;
      f->reserved.fetch_add(1);
      while (f->go.load() != 2) ::usleep(1000);
      return rc;
    }));
  }
  f->go.store(1);
  while (f->reserved.load() < k_children) ::usleep(1000);
  {
    auto l = m::shared_ledger::open(m::open_only, p.str());
    REQUIRE(l.ok());
    CHECK(l->device_count() == 1);
    CHECK(l->used(0) == k_children);  // nobody's reservation was wiped by a second init
    CHECK(l->snapshot().processes.size() == k_children);
  }
  f->go.store(2);
  for (pid_t k : kids) CHECK(m::test::wait_child(k) == 0);
  ::munmap(f, sizeof(flags));
  auto l = m::shared_ledger::open(m::open_only, p.str());
  REQUIRE(l.ok());
  CHECK(l->reap() == k_children);
  CHECK(l->used(0) == 0);
}
