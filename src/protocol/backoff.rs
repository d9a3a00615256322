//! Reconnect delays: capped exponential backoff with full jitter.
//!
//! When a hub restarts, every device it served loses its connection at the same moment. If they
//! all waited the same 1, 2, 4 … seconds they would come back in synchronised waves; with *full
//! jitter* each device waits a uniformly random time between zero and the exponential ceiling,
//! which spreads the load and, as the AWS Architecture Blog's "Exponential Backoff And Jitter"
//! measured, finishes sooner than the other jitter schemes. The defaults are those of the AWS IoT
//! Device SDK's MQTT 5 client: 1 s base, 120 s cap, reset after 30 s connected.
//!
//! The counter resets only when a connection *lasted* long enough: a hub that accepts the
//! connection and drops it at once (a policy denial, a revoked certificate, a broken TLS
//! middlebox) must not make the device reconnect at full speed forever.

use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom as _, SystemRandom};

use crate::{Error, Result};

/// Where [`Backoff`] gets its randomness: uniformly distributed fractions in `[0, 1)`.
///
/// [`SystemJitter`] is the default. Tests inject a fixed or scripted source; any
/// `FnMut() -> f64` closure is a `JitterSource`.
///
/// ```
/// use std::time::Duration;
/// use fleetkit::protocol::{Backoff, BackoffConfig};
///
/// // Always the middle of the window: 0.5 s, 1 s, 2 s, …
/// let mut backoff = Backoff::with_jitter(BackoffConfig::default(), || 0.5)?;
/// assert_eq!(backoff.next_delay(), Duration::from_millis(500));
/// assert_eq!(backoff.next_delay(), Duration::from_secs(1));
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub trait JitterSource {
    /// A fraction in `[0, 1)`.
    ///
    /// Values outside that range are clamped into `[0, 1]` and NaN counts as 0, so a faulty
    /// source can make delays less random but never longer than the ceiling.
    fn fraction(&mut self) -> f64;
}

impl<F: FnMut() -> f64> JitterSource for F {
    fn fraction(&mut self) -> f64 {
        self()
    }
}

/// The default [`JitterSource`]: the operating system's random number generator, through
/// *ring*'s [`SystemRandom`].
///
/// Should the system generator ever fail, it falls back to the standard library's randomly
/// keyed hasher rather than to a constant, so devices still do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct SystemJitter {
    rng: SystemRandom,
}

impl SystemJitter {
    /// A source backed by the operating system's generator.
    pub fn new() -> Self {
        SystemJitter {
            rng: SystemRandom::new(),
        }
    }
}

impl Default for SystemJitter {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterSource for SystemJitter {
    fn fraction(&mut self) -> f64 {
        let mut bytes = [0u8; 8];
        let bits = match self.rng.fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            // `RandomState::new()` is keyed randomly per thread and re-keyed on every call.
            Err(_) => RandomState::new().hash_one(Instant::now()),
        };
        // The top 53 bits, scaled: every value is exactly representable and below 1.
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Settings for [`Backoff`], with builder-style setters.
///
/// The setters accept anything; [`Backoff::new`] (or [`BackoffConfig::validate`]) rejects a
/// zero base or a cap below the base.
///
/// ```
/// use std::time::Duration;
/// use fleetkit::protocol::BackoffConfig;
///
/// let config = BackoffConfig::new()
///     .with_base(Duration::from_millis(500))
///     .with_cap(Duration::from_secs(60))
///     .with_reset_after(Duration::from_secs(10));
/// config.validate()?;
/// // The ceiling doubles from the base, then stays at the cap.
/// assert_eq!(config.ceiling(0), Duration::from_millis(500));
/// assert_eq!(config.ceiling(3), Duration::from_secs(4));
/// assert_eq!(config.ceiling(1_000), Duration::from_secs(60));
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    base: Duration,
    cap: Duration,
    reset_after: Duration,
}

impl BackoffConfig {
    /// The default base: the ceiling of the first delay (1 s).
    pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
    /// The default cap: no delay is ever longer (120 s).
    pub const DEFAULT_CAP: Duration = Duration::from_secs(120);
    /// The default time a connection must last before the backoff starts over (30 s).
    pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(30);

    /// The defaults: 1 s base, 120 s cap, reset after 30 s connected.
    pub const fn new() -> Self {
        BackoffConfig {
            base: Self::DEFAULT_BASE,
            cap: Self::DEFAULT_CAP,
            reset_after: Self::DEFAULT_RESET_AFTER,
        }
    }

    /// Sets the base: the ceiling of the first delay, doubled for each further attempt.
    pub const fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Sets the cap: the largest ceiling, so the longest possible delay.
    pub const fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Sets how long a connection must last for the next disconnect to start the backoff over.
    pub const fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }

    /// The base.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// How long a connection must last to reset the backoff.
    pub const fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// Checks the settings: the base must be positive and the cap at least the base.
    pub fn validate(&self) -> Result<()> {
        if self.base.is_zero() {
            return Err(Error::invalid(
                "backoff base",
                "must be greater than zero, or every delay would be zero",
            ));
        }
        if self.cap < self.base {
            return Err(Error::invalid(
                "backoff cap",
                format!(
                    "{:?} is less than the base of {:?}; the cap must be at least the base",
                    self.cap, self.base
                ),
            ));
        }
        Ok(())
    }

    /// The ceiling for a (zero-based) attempt: `min(cap, base × 2^attempt)`.
    ///
    /// Computed without overflow for every `attempt`, however large.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^attempt as a u128 exists up to 2^127; beyond that the product is surely past any cap.
        let scaled = 1u128
            .checked_shl(attempt)
            .and_then(|factor| self.base.as_nanos().checked_mul(factor));
        match scaled {
            Some(nanos) if nanos < self.cap.as_nanos() => duration_from_nanos(nanos),
            _ => self.cap,
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Capped exponential backoff with full jitter, for reconnecting to a hub.
///
/// Each [`next_delay`](Backoff::next_delay) returns a uniformly random delay in
/// `[0, min(cap, base × 2^attempt)]` and advances the attempt. Tell it when a connection comes
/// up ([`connected`](Backoff::connected)) and goes down ([`disconnected`](Backoff::disconnected)):
/// the attempt counter starts over only if the connection lasted at least
/// [`reset_after`](BackoffConfig::reset_after), so a hub that drops the device right after
/// accepting it does not bring the delays back to the minimum.
///
/// Time is passed in as [`Instant`]s rather than read from the clock, so the rules are testable
/// without sleeping; under tokio, `tokio::time::Instant::now().into_std()` follows a paused test
/// clock.
///
/// ```
/// use std::time::{Duration, Instant};
/// use fleetkit::protocol::{Backoff, BackoffConfig};
///
/// let mut backoff = Backoff::new(BackoffConfig::default())?;
/// let first = backoff.next_delay(); // somewhere in [0 s, 1 s]
/// assert!(first <= Duration::from_secs(1));
/// let second = backoff.next_delay(); // in [0 s, 2 s]
/// assert!(second <= Duration::from_secs(2));
///
/// // A connection that drops at once keeps the backoff where it was…
/// let t0 = Instant::now();
/// backoff.connected(t0);
/// backoff.disconnected(t0 + Duration::from_secs(1));
/// assert_eq!(backoff.attempt(), 2);
///
/// // …one that lasted 30 s or more starts it over.
/// backoff.connected(t0 + Duration::from_secs(5));
/// backoff.disconnected(t0 + Duration::from_secs(60));
/// assert_eq!(backoff.attempt(), 0);
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct Backoff<J = SystemJitter> {
    config: BackoffConfig,
    attempt: u32,
    connected_at: Option<Instant>,
    jitter: J,
}

impl Backoff<SystemJitter> {
    /// A backoff drawing its jitter from the operating system's generator.
    ///
    /// Fails with [`Error::InvalidInput`] if the configuration does not
    /// [validate](BackoffConfig::validate).
    pub fn new(config: BackoffConfig) -> Result<Self> {
        Self::with_jitter(config, SystemJitter::new())
    }
}

impl Default for Backoff<SystemJitter> {
    /// The default configuration with the system generator.
    fn default() -> Self {
        Backoff {
            config: BackoffConfig::default(),
            attempt: 0,
            connected_at: None,
            jitter: SystemJitter::new(),
        }
    }
}

impl<J: JitterSource> Backoff<J> {
    /// A backoff drawing its jitter from `jitter`.
    ///
    /// Fails with [`Error::InvalidInput`] if the configuration does not
    /// [validate](BackoffConfig::validate).
    pub fn with_jitter(config: BackoffConfig, jitter: J) -> Result<Self> {
        config.validate()?;
        Ok(Backoff {
            config,
            attempt: 0,
            connected_at: None,
            jitter,
        })
    }

    /// The delay to wait before the next connection attempt; advances the attempt counter.
    ///
    /// Always within `[0, ceiling()]`, where the ceiling is that of the attempt before the call.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let fraction = self.jitter.fraction();
        // NaN fails both comparisons of `clamp`'s contract, so handle it first.
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let ceiling_nanos = ceiling.as_nanos();
        // `as` saturates; `min` guards against rounding up past the ceiling.
        let nanos = ((ceiling_nanos as f64 * fraction) as u128).min(ceiling_nanos);
        duration_from_nanos(nanos)
    }

    /// The ceiling of the next delay: `min(cap, base × 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        self.config.ceiling(self.attempt)
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Records that a connection came up at `at` (the CONNACK arrived).
    pub fn connected(&mut self, at: Instant) {
        self.connected_at = Some(at);
    }

    /// Records that the connection went down at `at`.
    ///
    /// Starts the backoff over, and returns `true`, if the connection recorded by
    /// [`connected`](Backoff::connected) lasted at least
    /// [`reset_after`](BackoffConfig::reset_after). A failed attempt that never connected, or
    /// an `at` before the connection time, resets nothing.
    pub fn disconnected(&mut self, at: Instant) -> bool {
        let lasted = self
            .connected_at
            .take()
            .map(|since| at.saturating_duration_since(since));
        let reset = lasted.is_some_and(|lasted| lasted >= self.config.reset_after);
        if reset {
            self.attempt = 0;
        }
        reset
    }

    /// Starts the backoff over unconditionally (for example after the user asked to reconnect).
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.connected_at = None;
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

impl<J> fmt::Debug for Backoff<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("config", &self.config)
            .field("attempt", &self.attempt)
            .field("connected_at", &self.connected_at)
            .finish_non_exhaustive()
    }
}

/// A `Duration` from a nanosecond count that is known to fit (it is at most some `Duration`'s).
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits a u32.
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn fixed(fraction: f64) -> impl FnMut() -> f64 {
        move || fraction
    }

    #[test]
    fn defaults_are_the_aws_iot_sdk_ones() {
        let config = BackoffConfig::default();
        assert_eq!(config.base(), SEC);
        assert_eq!(config.cap(), 120 * SEC);
        assert_eq!(config.reset_after(), 30 * SEC);
        config.validate().unwrap();
        assert_eq!(Backoff::default().config(), &config);
    }

    #[test]
    fn ceiling_doubles_then_stays_at_the_cap() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.0)).unwrap();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 120, 120, 120, 120, 120]);
    }

    #[test]
    fn fixed_source_gives_exact_delays() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.5)).unwrap();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next_delay()).collect();
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            delays,
            [
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(8_000),
                ms(16_000),
                ms(32_000),
                ms(60_000),
                ms(60_000)
            ]
        );
        assert_eq!(backoff.attempt(), 9);

        let mut zero = Backoff::with_jitter(BackoffConfig::default(), fixed(0.0)).unwrap();
        assert!((0..20).all(|_| zero.next_delay().is_zero()));

        // Just below 1: the delay is just below the ceiling, never above it.
        let mut top =
            Backoff::with_jitter(BackoffConfig::default(), fixed(1.0 - f64::EPSILON)).unwrap();
        let first = top.next_delay();
        assert!(first <= SEC && first > SEC - Duration::from_micros(1));
    }

    #[test]
    fn scripted_source_is_followed() {
        let mut script = [0.25, 0.75, 0.1].into_iter();
        let config = BackoffConfig::new().with_base(Duration::from_millis(100));
        let mut backoff = Backoff::with_jitter(config, move || script.next().unwrap()).unwrap();
        assert_eq!(backoff.next_delay(), Duration::from_millis(25));
        assert_eq!(backoff.next_delay(), Duration::from_millis(150));
        assert_eq!(backoff.next_delay(), Duration::from_millis(40));
    }

    #[test]
    fn faulty_sources_never_exceed_the_ceiling() {
        for bad in [f64::NAN, -1.0, 1.0, 7.5, f64::INFINITY, f64::NEG_INFINITY] {
            let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(bad)).unwrap();
            for _ in 0..10 {
                let ceiling = backoff.ceiling();
                assert!(backoff.next_delay() <= ceiling, "fraction {bad}");
            }
        }
    }

    #[test]
    fn thousands_of_attempts_stay_at_the_cap() {
        let mut backoff =
            Backoff::with_jitter(BackoffConfig::default(), fixed(1.0 - f64::EPSILON)).unwrap();
        for _ in 0..10_000 {
            let delay = backoff.next_delay();
            assert!(delay <= 120 * SEC);
        }
        assert_eq!(backoff.attempt(), 10_000);
        assert_eq!(backoff.ceiling(), 120 * SEC);

        let config = BackoffConfig::default();
        for attempt in [63, 64, 127, 128, 129, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(config.ceiling(attempt), 120 * SEC, "attempt {attempt}");
        }
        // Even with the largest durations there is no overflow.
        let huge = BackoffConfig::new()
            .with_base(Duration::MAX)
            .with_cap(Duration::MAX);
        assert_eq!(huge.ceiling(u32::MAX), Duration::MAX);
        let mut backoff = Backoff::with_jitter(huge, fixed(1.0)).unwrap();
        assert_eq!(backoff.next_delay(), Duration::MAX);
    }

    #[test]
    fn counter_saturates() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.5)).unwrap();
        backoff.attempt = u32::MAX - 1;
        backoff.next_delay();
        backoff.next_delay();
        assert_eq!(backoff.attempt(), u32::MAX);
        assert_eq!(backoff.next_delay(), 60 * SEC);
    }

    #[test]
    fn system_jitter_spreads_delays() {
        let config = BackoffConfig::new().with_base(SEC).with_cap(SEC);
        let mut backoff = Backoff::new(config).unwrap();
        let delays: Vec<Duration> = (0..10_000).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= SEC));
        let min = *delays.iter().min().unwrap();
        let max = *delays.iter().max().unwrap();
        assert!(min < Duration::from_millis(10), "min {min:?}");
        assert!(max > Duration::from_millis(990), "max {max:?}");
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 9_900, "{} distinct", distinct.len());
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");

        let mut jitter = SystemJitter::default();
        assert!(
            (0..10_000)
                .map(|_| jitter.fraction())
                .all(|f| (0.0..1.0).contains(&f))
        );
    }

    #[test]
    fn a_long_connection_resets_the_backoff() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.5)).unwrap();
        for _ in 0..5 {
            backoff.next_delay();
        }
        let t0 = Instant::now();
        backoff.connected(t0);
        assert!(backoff.disconnected(t0 + 30 * SEC));
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.next_delay(), SEC / 2);
    }

    #[test]
    fn a_short_connection_does_not_reset_the_backoff() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.5)).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        // Flapping: the hub accepts and drops at once, over and over; the delays keep growing.
        let mut delays = Vec::new();
        for _ in 0..10 {
            let delay = backoff.next_delay();
            delays.push(delay.as_millis());
            now += delay;
            backoff.connected(now);
            now += Duration::from_millis(200);
            assert!(!backoff.disconnected(now));
        }
        assert_eq!(
            delays,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        // Just under the threshold still does not count.
        backoff.connected(now);
        assert!(!backoff.disconnected(now + 30 * SEC - Duration::from_nanos(1)));
        assert_eq!(backoff.attempt(), 10);
    }

    #[test]
    fn disconnect_without_a_connection_resets_nothing() {
        let mut backoff = Backoff::with_jitter(BackoffConfig::default(), fixed(0.5)).unwrap();
        backoff.next_delay();
        let t0 = Instant::now();
        assert!(!backoff.disconnected(t0 + 3_600 * SEC));
        // A connection is only counted once: the second disconnect has no connection to measure.
        backoff.connected(t0);
        assert!(backoff.disconnected(t0 + 60 * SEC));
        backoff.next_delay();
        assert!(!backoff.disconnected(t0 + 120 * SEC));
        assert_eq!(backoff.attempt(), 1);
        // A clock that went backwards counts as a zero-length connection.
        backoff.connected(t0 + 60 * SEC);
        assert!(!backoff.disconnected(t0));
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let zero = BackoffConfig::new().with_base(Duration::ZERO);
        let err = Backoff::new(zero).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if field == "backoff base"),
            "{err}"
        );
        let inverted = BackoffConfig::new().with_base(10 * SEC).with_cap(5 * SEC);
        let err = Backoff::with_jitter(inverted, fixed(0.5)).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if field == "backoff cap"),
            "{err}"
        );
        // Equal base and cap is a constant-ceiling backoff, and fine; so is a zero reset time.
        BackoffConfig::new()
            .with_base(5 * SEC)
            .with_cap(5 * SEC)
            .with_reset_after(Duration::ZERO)
            .validate()
            .unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Delay(f64),
        Connected(Duration),
        Disconnected(Duration),
    }

    fn op() -> impl Strategy<Value = Op> {
        let offset = (0u64..200_000).prop_map(Duration::from_millis);
        prop_oneof![
            4 => prop_oneof![Just(0.0), Just(1.0 - f64::EPSILON), 0.0..1.0f64].prop_map(Op::Delay),
            1 => offset.clone().prop_map(Op::Connected),
            1 => offset.prop_map(Op::Disconnected),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (1u64..=u64::MAX).prop_map(Duration::from_nanos),
            (1u64..=3_600_000).prop_map(Duration::from_millis),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// 0 <= delay <= min(cap, base * 2^n), with n from a model of the reset rule, and the
        /// ceiling from doubling step by step (an independent way to compute it).
        #[test]
        fn delays_stay_within_the_ceiling(
            base in duration(),
            extra in duration(),
            reset_after in (0u64..100_000).prop_map(Duration::from_millis),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let cap = base.saturating_add(extra);
            let config = BackoffConfig::new().with_base(base).with_cap(cap).with_reset_after(reset_after);
            // The test sets each fraction just before the draw that uses it.
            let fraction = std::rc::Rc::new(std::cell::Cell::new(0.0));
            let source = fraction.clone();
            let mut backoff = Backoff::with_jitter(config, move || source.get()).unwrap();
            let t0 = Instant::now();
            let mut model_attempt: u32 = 0;
            let mut model_connected: Option<Instant> = None;
            for op in ops {
                match op {
                    Op::Delay(f) => {
                        fraction.set(f);
                        let mut ceiling = base;
                        for _ in 0..model_attempt.min(200) {
                            ceiling = ceiling.saturating_mul(2).min(cap);
                        }
                        prop_assert_eq!(backoff.ceiling(), ceiling);
                        let delay = backoff.next_delay();
                        prop_assert!(delay <= ceiling);
                        model_attempt += 1;
                    }
                    Op::Connected(at) => {
                        backoff.connected(t0 + at);
                        model_connected = Some(t0 + at);
                    }
                    Op::Disconnected(at) => {
                        let reset = model_connected
                            .take()
                            .is_some_and(|c| (t0 + at).saturating_duration_since(c) >= reset_after);
                        if reset {
                            model_attempt = 0;
                        }
                        prop_assert_eq!(backoff.disconnected(t0 + at), reset);
                    }
                }
                prop_assert_eq!(backoff.attempt(), model_attempt);
            }
        }
    }
}
