//! A tenant's quotas as the service enforces them: limit caps on each call (filled in when the
//! call names none, so the worker enforces them), the enqueue rate (one broker bucket shared by
//! every service process), and component storage. Concurrency is the broker's, at reserve.

use wtq_client::broker::Tenancy;
use wtq_client::message::{LimitOverrides, now_ms};
use wtq_client::registry::ComponentRecord;
use wtq_client::tenancy::{Quotas, RateDecision};

use super::error::{ApiError, ApiResult};
use super::state::{Shared, TenantContext};

/// The rate bucket enqueues take from.
pub const ENQUEUE_BUCKET: &str = "enqueue";

/// Checks a call's limits against the tenant's caps and fills in a cap where the call names
/// no limit.
pub fn apply_caps(quotas: &Quotas, limits: &mut LimitOverrides) -> ApiResult<()> {
    for (field, cap_name, value, cap) in [
        (
            "time_limit_ms",
            "max_time_ms",
            &mut limits.time_ms,
            quotas.max_time_ms,
        ),
        ("fuel", "max_fuel", &mut limits.fuel, quotas.max_fuel),
        (
            "memory",
            "max_memory",
            &mut limits.memory,
            quotas.max_memory,
        ),
    ] {
        let Some(cap) = cap else { continue };
        match value {
            Some(asked) if *asked > cap => {
                return Err(ApiError::limit_above_cap(format!(
                    "{field} {asked} is above this tenant's cap {cap_name} of {cap}; ask for at most {cap} or leave it out"
                )));
            }
            Some(_) => {}
            None => *value = Some(cap),
        }
    }
    Ok(())
}

/// Checks that a batch of `n` can ever pass the tenant's rate (a batch larger than the rate's
/// count would wait forever).
pub fn check_batch(quotas: &Quotas, n: usize) -> ApiResult<()> {
    match quotas.rate {
        Some(rate) if n > rate.count as usize => Err(ApiError::bad_request(format!(
            "a batch of {n} tasks is larger than this tenant's rate of {rate}; send at most {} per batch",
            rate.count
        ))),
        _ => Ok(()),
    }
}

/// Takes `n` enqueues from the tenant's rate; 429 with `Retry-After` when it is used up.
pub async fn take_rate(shared: &Shared, tenant: &TenantContext, n: usize) -> ApiResult<()> {
    let Some(rate) = tenant.tenant.quotas.rate else {
        return Ok(());
    };
    check_batch(&tenant.tenant.quotas, n)?;
    // `check_batch` bounds `n` by a u32.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let decision = shared
        .call(tenant.broker.take_rate(ENQUEUE_BUCKET, rate, n, now_ms()))
        .await?;
    match decision {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after_ms } => {
            shared.metrics.rate_limited.inc();
            Err(ApiError::rate_limited(
                retry_after_ms,
                format!(
                    "this tenant's enqueue rate of {rate} is used up; retry in {} ms",
                    retry_after_ms.max(1)
                ),
            ))
        }
    }
}

/// Checks that storing a version of `name` (`digest`, `size` bytes) keeps the tenant within
/// its storage quota: the sizes of every stored version of every component, plus this one
/// unless it is already `name`'s current version (deploying that again stores nothing).
pub fn check_storage(
    quotas: &Quotas,
    stored: &[ComponentRecord],
    name: &str,
    digest: &str,
    size: u64,
) -> ApiResult<()> {
    let Some(quota) = quotas.storage else {
        return Ok(());
    };
    let used: u64 = stored
        .iter()
        .flat_map(|record| &record.versions)
        .map(|version| version.size)
        .fold(0, u64::saturating_add);
    let redeploy = stored
        .iter()
        .any(|record| record.name == name && record.current().is_some_and(|v| v.digest == digest));
    let adds = if redeploy { 0 } else { size };
    if used.saturating_add(adds) > quota {
        return Err(ApiError::storage_quota_exceeded(format!(
            "storing `{name}` ({size} bytes) would make {} bytes of components, over this tenant's storage quota of {quota}; deploy something smaller or ask an admin for more",
            used.saturating_add(adds)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use wtq_client::registry::Version;
    use wtq_client::tenancy::Rate;

    use super::*;

    #[test]
    fn caps_refuse_larger_limits_and_fill_missing_ones() {
        let quotas = Quotas {
            max_time_ms: Some(1000),
            max_fuel: Some(50),
            ..Quotas::default()
        };
        let check = |limits: LimitOverrides| {
            let mut limits = limits;
            apply_caps(&quotas, &mut limits).map(|()| limits)
        };
        let filled = check(LimitOverrides::default()).expect("allowed");
        assert_eq!(
            filled,
            LimitOverrides {
                time_ms: Some(1000),
                fuel: Some(50),
                memory: None
            }
        );
        let lower = LimitOverrides {
            time_ms: Some(10),
            fuel: None,
            memory: Some(1 << 30),
        };
        assert_eq!(
            check(lower).ok(),
            Some(LimitOverrides {
                fuel: Some(50),
                ..lower
            })
        );
        let error = check(LimitOverrides {
            fuel: Some(51),
            ..LimitOverrides::default()
        })
        .expect_err("above the cap");
        assert_eq!(error.kind(), "limit_above_cap");
        assert!(format!("{error:?}").contains("max_fuel"), "{error:?}");
    }

    #[test]
    fn a_batch_over_the_rate_is_refused() {
        let quotas = Quotas {
            rate: Some(Rate {
                count: 10,
                per_ms: 1000,
            }),
            ..Quotas::default()
        };
        assert!(check_batch(&quotas, 10).is_ok());
        assert_eq!(
            check_batch(&quotas, 11).map_err(|e| e.kind()),
            Err("bad_request")
        );
        assert!(check_batch(&Quotas::default(), 1_000_000).is_ok());
    }

    #[test]
    fn storage_counts_every_version_but_not_a_redeploy() {
        let version = |digest: &str, size| Version {
            digest: digest.into(),
            deployed_ms: 0,
            tasks: vec![],
            size,
        };
        let stored = vec![ComponentRecord {
            name: "a".into(),
            versions: vec![version("new", 40), version("old", 40)],
        }];
        let quotas = Quotas {
            storage: Some(100),
            ..Quotas::default()
        };
        assert!(check_storage(&quotas, &stored, "b", "x", 20).is_ok());
        let error = check_storage(&quotas, &stored, "b", "x", 21).expect_err("over");
        assert_eq!(error.kind(), "storage_quota_exceeded");
        assert!(check_storage(&quotas, &stored, "a", "new", 40).is_ok());
        assert!(check_storage(&quotas, &stored, "a", "old", 40).is_err());
    }
}
