//! Each algorithm's script against its own definition, on random traffic
//! at simulated server times (proptest, fixed seed).
//!
//! The script runs (with `EVAL`, on the real server) inside a wrapper that
//! shadows `redis` for it: `TIME` answers the simulated time, and `PTTL`,
//! `PEXPIRE` and `SET .. PX` keep the key's expiry in a table the harness
//! carries between calls (in server milliseconds, with Redis's semantics: a
//! key whose expiry is millisecond `x` is gone once the clock is past `x`),
//! so no real TTL ever runs. The harness deletes the key when the simulated
//! clock passes its expiry.
//!
//! The models, one per algorithm, are written from the documented
//! definitions (crate docs and each script's header), not from the scripts:
//! - sliding log: a request is admitted iff the units admitted in the
//!   window `(now - W, now]` plus its cost are at most the quota; so no
//!   window of length `W` ever holds more than the quota;
//! - fixed window: a window opens at the first admitted request of an idle
//!   key, at millisecond `m`, and ends when its counter expires: it is gone
//!   from millisecond `m + max(W - 1, 1) + 1` on (`W` ms later, 2 ms for a
//!   1 ms window: Redis has no `PX 0`); admitted iff count + cost <= quota;
//! - GCRA: the TAT recurrence `tat = max(TAT, now)`, admitted iff
//!   `tat + cost·T − τ <= now` with `τ = burst·T`, then `TAT = tat + cost·T`;
//! - sliding counter: the documented estimate
//!   `previous × (W − elapsed) / W + current`, windows following on from the
//!   first request of an idle key, counters forgotten one window after the
//!   last admitted request; and its documented error bound checked on the
//!   true counts: no window of length `W` holds more than twice the quota,
//!   and a burst of duration `D < W` gets at most `quota × D / W` more.

use fred::types::Value;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::sync::atomic::AtomicUsize;

use super::*;

/// Shadows `redis` for the script that follows (see the module docs).
/// ARGV ends with the simulated time (µs) and the key's expiry (ms, -1:
/// none); the reply is `{script's reply, {expiry of KEYS[1] or -1}}`.
const PRELUDE: &str = r#"
local SIM_NOW = tonumber(ARGV[#ARGV - 1])
local SIM_EXP = tonumber(ARGV[#ARGV])
local real = redis
local ARGV = {unpack(ARGV, 1, #ARGV - 2)}
local now_ms = math.floor(SIM_NOW / 1000)
local exp = {}
if SIM_EXP >= 0 then exp[KEYS[1]] = SIM_EXP end
local function sim(protected, cmd, ...)
  local c = string.upper(cmd)
  local a = {...}
  if c == 'TIME' then
    return {string.format('%d', math.floor(SIM_NOW / 1000000)), string.format('%d', SIM_NOW % 1000000)}
  elseif c == 'PTTL' then
    if real.call('EXISTS', a[1]) == 0 then exp[a[1]] = nil return -2 end
    if exp[a[1]] then return exp[a[1]] - now_ms end
    return -1
  elseif c == 'PEXPIRE' then
    if real.call('EXISTS', a[1]) == 0 then return 0 end
    exp[a[1]] = now_ms + tonumber(a[2])
    return 1
  elseif c == 'SET' then
    local px = nil
    if a[3] and string.upper(a[3]) == 'PX' then px = tonumber(a[4]) end
    assert(#a == 2 or (px and #a == 4), 'the harness knows SET k v [PX ms] only')
    local r = real.call('SET', a[1], a[2])
    if px then exp[a[1]] = now_ms + px else exp[a[1]] = nil end
    return r
  elseif c == 'DEL' or c == 'UNLINK' then
    for _, k in ipairs(a) do exp[k] = nil end
  elseif c == 'EXPIRE' or c == 'PEXPIREAT' or c == 'EXPIREAT' or c == 'PERSIST' or c == 'TTL' then
    error('the harness does not emulate ' .. c)
  end
  if protected then return real.pcall(cmd, ...) end
  return real.call(cmd, ...)
end
local redis = setmetatable({
  call = function(...) return sim(false, ...) end,
  pcall = function(...) return sim(true, ...) end,
}, {__index = real})
local function sim_body()
"#;

const POSTLUDE: &str = r#"
end
local r = sim_body()
local e = -1
if real.call('EXISTS', KEYS[1]) == 1 then
  assert(exp[KEYS[1]], 'the script left its key without a TTL')
  e = exp[KEYS[1]]
end
return {r, {e}}
"#;

/// One identity's key under simulated time.
struct Sim {
    client: Client,
    source: String,
    key: String,
    /// Emulated expiry of the key, server milliseconds.
    expire_ms: Option<i64>,
}

static CASE: AtomicUsize = AtomicUsize::new(0);

impl Sim {
    fn new(redis: &Redis, source: &str, prefix: &str) -> Sim {
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        Sim {
            client: redis.client().clone(),
            source: format!("{PRELUDE}{source}{POSTLUDE}"),
            key: format!("{prefix}{{model}}:{case}"),
            expire_ms: None,
        }
    }

    /// Runs the script at `now` (µs) with `args` (cost first); returns its
    /// reply.
    async fn run(&mut self, now: i64, args: &[i64]) -> Result<Value, String> {
        let now_ms = now.div_euclid(1000);
        if self.expire_ms.is_some_and(|e| now_ms > e) {
            let _: i64 = self
                .client
                .del(&self.key)
                .await
                .map_err(|e| e.to_string())?;
            self.expire_ms = None;
        }
        let mut argv: Vec<String> = args.iter().map(i64::to_string).collect();
        argv.push(now.to_string());
        argv.push(self.expire_ms.unwrap_or(-1).to_string());
        let reply: Vec<Value> = self
            .client
            .eval(self.source.clone(), vec![self.key.clone()], argv)
            .await
            .map_err(|e| format!("script error: {e}"))?;
        let [r, e]: [Value; 2] = reply
            .try_into()
            .map_err(|r| format!("unexpected reply {r:?}"))?;
        let e = match e {
            Value::Array(v) => v.first().and_then(Value::as_i64),
            _ => None,
        }
        .ok_or("no expiry in the reply")?;
        self.expire_ms = (e >= 0).then_some(e);
        Ok(r)
    }

    async fn clean(&self) {
        let _: i64 = self.client.del(&self.key).await.unwrap();
    }
}

/// A script reply `{allowed, remaining, reset_after, retry_after}`.
fn four(v: &Value) -> Result<[i64; 4], String> {
    let Value::Array(a) = v else {
        return Err(format!("not an array: {v:?}"));
    };
    let ints: Vec<i64> = a.iter().filter_map(Value::as_i64).collect();
    ints.try_into()
        .map_err(|_| format!("not 4 integers: {v:?}"))
}

/// Gaps between requests, µs: many on and next to the boundaries that
/// matter (`W`, whole milliseconds, one emission interval), some random.
fn gap(w: i64, t: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => prop::sample::select(vec![0, 1, 999, 1_000, 1_001, w - 1, w, w + 1, t - 1, t, t + 1]),
        2 => 0..=w / 4,
        2 => 0..=2 * w,
    ]
    .prop_map(|g| g.max(0))
}

/// `(quota, window µs, requests as (gap µs, cost))`; a cost is at most the
/// quota (more is refused before any script runs).
type Case = (i64, i64, Vec<(i64, i64)>);

fn case(windows: &'static [i64]) -> impl Strategy<Value = Case> {
    (1i64..=6, prop::sample::select(windows)).prop_flat_map(|(quota, w)| {
        let t = (w / quota).max(1);
        let req = (gap(w, t), 1..=quota);
        (Just(quota), Just(w), prop::collection::vec(req, 1..40))
    })
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            max_shrink_iters: 400,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Runs `check` on every generated case (against the server, from inside
/// the tokio test); panics with the shrunk counterexample.
fn run_model<S, F, Fut>(name: &str, cases: u32, strategy: S, check: F)
where
    S: Strategy<Value = Case>,
    F: Fn(Case) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&strategy, |c| {
            handle.block_on(check(c)).map_err(TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("{name} differs from its model: {e}");
    }
}

const START: i64 = 1_796_031_733_000_000;

async fn redis() -> Redis {
    connect(&shared_url(Topology::Standalone).unwrap())
        .await
        .unwrap()
}

/// Sliding log: admitted iff the units admitted in `(now - W, now]` plus
/// the cost fit the quota; `remaining`, `reset_after` and `retry_after`
/// exact; no window of length `W` ever holds more than the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_log_matches_its_definition_on_random_traffic() {
    let redis = redis().await;
    let prefix = unique_prefix("rl_model_log");
    let source = Algorithm::SlidingLog.script().source();
    run_model(
        "sliding_log",
        96,
        case(&[1_000, 1_500, 2_000, 1_000_000]),
        |(quota, w, reqs)| {
            let mut sim = Sim::new(&redis, source, &prefix);
            async move {
                let out = sliding_log_case(&mut sim, quota, w, &reqs).await;
                sim.clean().await;
                out
            }
        },
    );
}

async fn sliding_log_case(
    sim: &mut Sim,
    quota: i64,
    w: i64,
    reqs: &[(i64, i64)],
) -> Result<(), String> {
    // One entry per admitted unit: its time.
    let mut units: Vec<i64> = Vec::new();
    let mut now = START;
    for (step, &(gap, cost)) in reqs.iter().enumerate() {
        now += gap;
        let live: Vec<i64> = units.iter().copied().filter(|&u| u > now - w).collect();
        let count = live.len() as i64;
        let allowed = count + cost <= quota;
        let want = if allowed {
            [1, quota - count - cost, w, 0]
        } else {
            // The (count + cost - quota)-th oldest live unit must leave.
            let leaving = live[(count + cost - quota - 1) as usize];
            let reset = live.last().map_or(0, |l| l + w - now);
            [0, quota - count, reset, leaving + w - now]
        };
        let got = four(&sim.run(now, &[cost, quota, w]).await?)?;
        if got != want {
            return Err(format!(
                "step {step} at +{} µs, cost {cost}: script {got:?}, model {want:?} (live units at +µs {:?})",
                now - START,
                live.iter().map(|u| u - START).collect::<Vec<_>>()
            ));
        }
        // The definition is checked on what the script admitted.
        if got[0] == 1 {
            units.extend(std::iter::repeat_n(now, cost as usize));
        }
    }
    // The definition itself: every window of length W (ending at an
    // admission, where the count peaks) holds at most the quota.
    for &t in &units {
        let n = units.iter().filter(|&&u| u > t - w && u <= t).count() as i64;
        if n > quota {
            return Err(format!(
                "{n} units in the window ending at +{} µs",
                t - START
            ));
        }
    }
    Ok(())
}

/// Fixed window, as the script and crate docs define it: a window opens at
/// the first admitted request of an idle key and lasts until its counter
/// expires (`max(W - 1, 1)` ms after its first millisecond, inclusive);
/// admitted iff count + cost <= quota; `remaining`, `reset_after` (to the
/// end of the millisecond the counter expires in) and `retry_after` exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_matches_its_definition_on_random_traffic() {
    let redis = redis().await;
    let prefix = unique_prefix("rl_model_fixed");
    let source = Algorithm::FixedWindow.script().source();
    run_model(
        "fixed_window",
        96,
        case(&[1_000, 2_000, 3_000, 10_000, 1_000_000]),
        |(quota, w, reqs)| {
            let mut sim = Sim::new(&redis, source, &prefix);
            async move {
                let out = fixed_window_case(&mut sim, quota, w, &reqs).await;
                sim.clean().await;
                out
            }
        },
    );
}

async fn fixed_window_case(
    sim: &mut Sim,
    quota: i64,
    w: i64,
    reqs: &[(i64, i64)],
) -> Result<(), String> {
    let w_ms = w / 1000;
    // (first millisecond, count) of the open window.
    let mut window: Option<(i64, i64)> = None;
    let mut now = START;
    for (step, &(gap, cost)) in reqs.iter().enumerate() {
        now += gap;
        let now_ms = now.div_euclid(1000);
        let last_ms = |start: i64| start + (w_ms - 1).max(1);
        if window.is_some_and(|(start, _)| now_ms > last_ms(start)) {
            window = None;
        }
        let count = window.map_or(0, |(_, c)| c);
        let reset = window.map_or(0, |(start, _)| (last_ms(start) - now_ms + 1) * 1000);
        let allowed = count + cost <= quota;
        let want = if allowed {
            let start = window.map_or(now_ms, |(s, _)| s);
            window = Some((start, count + cost));
            [
                1,
                quota - count - cost,
                (last_ms(start) - now_ms + 1) * 1000,
                0,
            ]
        } else {
            [0, quota - count, reset, reset]
        };
        let got = four(&sim.run(now, &[cost, quota, w_ms]).await?)?;
        if got != want {
            return Err(format!(
                "step {step} at +{} µs, cost {cost}: script {got:?}, model {want:?} (window {window:?})",
                now - START
            ));
        }
    }
    Ok(())
}

/// GCRA: the TAT recurrence with burst tolerance `τ = burst × T`, exactly:
/// the one-limit reply `d` (allowed: `TAT' − now`; denied:
/// `−(TAT − now) − 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_matches_the_tat_recurrence_on_random_traffic() {
    let redis = redis().await;
    let prefix = unique_prefix("rl_model_gcra");
    let source = Algorithm::Gcra.script().source();
    // Here "quota" is the burst and "window" the time the burst takes to
    // refill (burst × T).
    run_model(
        "gcra",
        96,
        case(&[1_000, 1_500, 7_000, 1_000_000]),
        |(burst, w, reqs)| {
            let mut sim = Sim::new(&redis, source, &prefix);
            async move {
                let out = gcra_case(&mut sim, burst, w, &reqs).await;
                sim.clean().await;
                out
            }
        },
    );
}

async fn gcra_case(sim: &mut Sim, burst: i64, w: i64, reqs: &[(i64, i64)]) -> Result<(), String> {
    let t = (w / burst).max(1);
    let tau = burst * t;
    let mut tat: Option<i64> = None;
    let mut now = START;
    for (step, &(gap, cost)) in reqs.iter().enumerate() {
        now += gap;
        let cur = tat.map_or(now, |x| x.max(now));
        let want = if cur + cost * t - tau <= now {
            tat = Some(cur + cost * t);
            cur + cost * t - now
        } else {
            now - cur - 1
        };
        let got = sim.run(now, &[cost, t, burst]).await?;
        if got.as_i64() != Some(want) {
            return Err(format!(
                "step {step} at +{} µs, cost {cost}, T {t}, τ {tau}: script {got:?}, model {want} (TAT at +{:?})",
                now - START,
                tat.map(|x| x - START)
            ));
        }
    }
    Ok(())
}

/// Sliding window counter: the documented estimate decides
/// (`previous × (W − elapsed) / W + current + cost <= quota`, windows
/// following on from the first request of an idle key, forgotten one window
/// (rounded up to ms) after the last admission), `remaining` is the floor of
/// what the estimate leaves; and the documented error bound holds on the
/// true counts: no window of length `W` holds more than twice the quota,
/// and the admissions within any span `D < W` total at most
/// `quota + quota × D / W`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_counter_matches_its_estimate_and_error_bound_on_random_traffic() {
    let redis = redis().await;
    let prefix = unique_prefix("rl_model_counter");
    let source = Algorithm::SlidingCounter.script().source();
    run_model(
        "sliding_counter",
        96,
        case(&[1_000, 1_500, 2_000, 1_000_000]),
        |(quota, w, reqs)| {
            let mut sim = Sim::new(&redis, source, &prefix);
            async move {
                let out = sliding_counter_case(&mut sim, quota, w, &reqs).await;
                sim.clean().await;
                out
            }
        },
    );
}

async fn sliding_counter_case(
    sim: &mut Sim,
    quota: i64,
    w: i64,
    reqs: &[(i64, i64)],
) -> Result<(), String> {
    // (window start, current count, previous count, last admission).
    let mut st: Option<(i64, i64, i64, i64)> = None;
    let mut admitted: Vec<(i64, i64)> = Vec::new();
    let mut now = START;
    for (step, &(gap, cost)) in reqs.iter().enumerate() {
        now += gap;
        let now_ms = now.div_euclid(1000);
        // Forgotten once the clock passes the millisecond the counters
        // expire at: one window (rounded up to ms) after the last admission.
        if st.is_some_and(|(_, _, _, last)| now_ms > last.div_euclid(1000) + (w + 999) / 1000) {
            st = None;
        }
        let (mut s, mut c, mut p) = st.map_or((now, 0, 0), |(s, c, p, _)| (s, c, p));
        if now >= s + w {
            let n = (now - s) / w;
            p = if n == 1 { c } else { 0 };
            c = 0;
            s += n * w;
        }
        let e = (now - s).max(0);
        let est = p as f64 * (w - e) as f64 / w as f64 + c as f64;
        let allowed = est + cost as f64 <= quota as f64;
        let remaining = (quota as f64 - est).floor() as i64;
        let want_remaining = if allowed { remaining - cost } else { remaining };
        let got = four(&sim.run(now, &[cost, quota, w]).await?)?;
        if got[0] != i64::from(allowed) || got[1] != want_remaining {
            return Err(format!(
                "step {step} at +{} µs, cost {cost}: script {got:?}, model allowed {allowed} remaining {want_remaining} (s +{}, c {c}, p {p}, estimate {est})",
                now - START,
                s - START
            ));
        }
        // A denial writes nothing, the roll-over included: the state stays
        // as it was (the next request rolls over again).
        if allowed {
            st = Some((s, c + cost, p, now));
        }
        // The bound is checked on what the script admitted.
        if got[0] == 1 {
            admitted.push((now, cost));
        }
    }
    // The error bound, on the true counts.
    for (i, &(a, _)) in admitted.iter().enumerate() {
        let mut total = 0;
        for &(b, cost) in &admitted[i..] {
            if b - a >= w {
                break;
            }
            total += cost;
            let bound = quota as f64 + quota as f64 * (b - a) as f64 / w as f64;
            if total as f64 > bound + 1e-9 {
                return Err(format!(
                    "{total} units admitted in [+{}, +{}] µs: more than the documented bound {bound}",
                    a - START,
                    b - START
                ));
            }
            if total > 2 * quota {
                return Err(format!("{total} units in less than a window"));
            }
        }
    }
    Ok(())
}
