//! `math`: the arithmetic example guest (`add`, `mul`, `xsum`, `fib`), the tasks of Celery's
//! tutorial. Overflow is a task failure, never a wrap-around.

use std::hint::black_box;

use wtq_sdk::{TaskError, task};

/// Adds two integers; fails if the sum overflows a 64-bit integer.
#[task]
fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_add(y)
        .ok_or_else(|| overflow(format!("{x} + {y}")))
}

/// Multiplies two integers; fails if the product overflows a 64-bit integer.
#[task]
fn mul(x: i64, y: i64) -> Result<i64, TaskError> {
    x.checked_mul(y)
        .ok_or_else(|| overflow(format!("{x} * {y}")))
}

/// Sums a list of integers (the classic chord callback); fails on overflow.
#[task]
fn xsum(numbers: Vec<i64>) -> Result<i64, TaskError> {
    numbers
        .iter()
        .try_fold(0i64, |sum, n| sum.checked_add(*n))
        .ok_or_else(|| overflow(format!("the sum of {} numbers", numbers.len())))
}

/// The n-th Fibonacci number, computed by naive recursion to burn CPU on calls (n <= 93).
#[task]
fn fib(n: u32) -> Result<u64, TaskError> {
    // fib(94) does not fit in a u64.
    if n > 93 {
        return Err(TaskError::fail(format!(
            "fib({n}) overflows a 64-bit integer; n must be <= 93"
        )));
    }
    Ok(fib_recursive(n))
}

#[inline(never)]
fn fib_recursive(n: u32) -> u64 {
    if n < 2 {
        return u64::from(n);
    }
    // The black_box keeps LLVM from turning one of the two calls into a loop (accumulator
    // tail-recursion elimination), so the task stays exponential in calls.
    black_box(fib_recursive(n - 1) + fib_recursive(n - 2))
}

fn overflow(what: String) -> TaskError {
    TaskError::fail(format!("{what} overflows a 64-bit integer"))
}

wtq_sdk::export!(add, mul, xsum, fib);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(add(2, 3), Ok(5));
        assert_eq!(
            add(i64::MAX, 1),
            Err(TaskError::fail(format!(
                "{} + 1 overflows a 64-bit integer",
                i64::MAX
            )))
        );
        assert_eq!(mul(-4, 5), Ok(-20));
        assert!(mul(i64::MAX, 2).is_err());
        assert_eq!(xsum(vec![1, 2, 3]), Ok(6));
        assert_eq!(xsum(vec![]), Ok(0));
        assert!(xsum(vec![i64::MAX, 1]).is_err());
        assert_eq!(fib(0), Ok(0));
        assert_eq!(fib(20), Ok(6765));
        assert!(fib(94).is_err());
    }
}
