//! The worker's slots: how many calls may run at once, resizable while it runs (`control
//! pool-grow` / `pool-shrink`, the autoscaler). A slot is a permit of a fair semaphore.
//! Growing adds permits at once; shrinking forgets the free ones at once and takes the rest
//! as running calls end: whoever next acquires a permit while the pool is above its size
//! forgets it instead and waits on. A call is never stopped to shrink the pool.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Why a resize was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    #[error(
        "the pool cannot grow to {wanted} slots: this worker has room for at most {limit} (start it with a higher --max-concurrency)"
    )]
    AboveLimit { wanted: usize, limit: usize },
    #[error("the pool cannot shrink below 1 slot")]
    Empty,
}

pub(super) struct Pool {
    semaphore: Arc<Semaphore>,
    sizes: Mutex<Sizes>,
    /// Most slots: what the sandbox was sized for.
    limit: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Permits in existence, held or free.
    issued: usize,
    /// The size asked for; `issued` comes down to it as calls end.
    target: usize,
}

impl Pool {
    /// A pool of `size` slots that may grow to `limit`.
    pub(super) fn new(size: usize, limit: usize) -> Pool {
        let size = size.max(1);
        Pool {
            semaphore: Arc::new(Semaphore::new(size)),
            sizes: Mutex::new(Sizes {
                issued: size,
                target: size,
            }),
            limit: limit.max(size),
        }
    }

    /// The pool's size (what it is shrinking to, while it shrinks).
    pub(super) fn size(&self) -> usize {
        self.lock().target
    }

    /// Most slots it may have.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Slots in use right now.
    pub(super) fn busy(&self) -> usize {
        let sizes = self.lock();
        sizes
            .issued
            .saturating_sub(self.semaphore.available_permits())
    }

    /// Sets the size; returns it.
    pub(super) fn resize(&self, target: usize) -> Result<usize, ResizeError> {
        if target == 0 {
            return Err(ResizeError::Empty);
        }
        if target > self.limit {
            return Err(ResizeError::AboveLimit {
                wanted: target,
                limit: self.limit,
            });
        }
        let mut sizes = self.lock();
        if target > sizes.issued {
            self.semaphore.add_permits(target - sizes.issued);
            sizes.issued = target;
        } else {
            let free = self.semaphore.forget_permits(sizes.issued - target);
            sizes.issued -= free;
        }
        sizes.target = target;
        Ok(target)
    }

    /// Waits for a slot (in turn with every other waiter); `Err` once the pool is closed.
    pub(super) async fn acquire(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        loop {
            let permit = self.semaphore.clone().acquire_owned().await?;
            if let Some(permit) = self.keep(permit) {
                return Ok(permit);
            }
        }
    }

    /// Up to `n` free slots no waiter wants, without waiting.
    pub(super) fn try_acquire_spare(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let spare = self.semaphore.available_permits().min(n);
        if spare == 0 {
            return None;
        }
        let mut permits = self
            .semaphore
            .clone()
            .try_acquire_many_owned(spare as u32)
            .ok()?;
        let mut sizes = self.lock();
        let excess = sizes
            .issued
            .saturating_sub(sizes.target)
            .min(permits.num_permits());
        if excess > 0 {
            sizes.issued -= excess;
            if let Some(excess) = permits.split(excess) {
                excess.forget();
            }
        }
        (permits.num_permits() > 0).then_some(permits)
    }

    /// A permit just acquired, unless the pool is above its size: then it is forgotten.
    fn keep(&self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let mut sizes = self.lock();
        if sizes.issued > sizes.target {
            sizes.issued -= permit.num_permits();
            permit.forget();
            return None;
        }
        Some(permit)
    }

    /// No more slots are handed out (shutdown); waiters get `Err`.
    pub(super) fn close(&self) {
        self.semaphore.close();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sizes> {
        // Sections only do arithmetic; a panic inside one leaves the numbers usable.
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_waits_for_running_calls_and_growing_is_immediate() {
        let pool = Pool::new(2, 4);
        let first = pool.acquire().await.unwrap();
        let second = pool.acquire().await.unwrap();
        assert_eq!(pool.busy(), 2);

        assert_eq!(pool.resize(1), Ok(1));
        assert_eq!(pool.size(), 1);
        // Both calls keep running; the first to end gives its slot up for good.
        drop(first);
        assert!(pool.try_acquire_spare(4).is_none());
        assert_eq!(pool.busy(), 1);
        drop(second);
        let only = pool.acquire().await.unwrap();
        assert!(pool.try_acquire_spare(4).is_none());

        assert_eq!(pool.resize(3), Ok(3));
        let more = pool.try_acquire_spare(4).unwrap();
        assert_eq!(more.num_permits(), 2);
        assert_eq!(pool.busy(), 3);
        drop((only, more));

        assert_eq!(
            pool.resize(5),
            Err(ResizeError::AboveLimit {
                wanted: 5,
                limit: 4
            })
        );
        assert_eq!(pool.resize(0), Err(ResizeError::Empty));
        assert_eq!(pool.size(), 3);
    }

    #[tokio::test]
    async fn a_shrink_while_idle_takes_effect_at_once() {
        let pool = Pool::new(4, 4);
        pool.resize(2).unwrap();
        let two = pool.try_acquire_spare(4).unwrap();
        assert_eq!(two.num_permits(), 2);
    }
}
