//! Comparing a kernel's output with the independent reference, element by element, against the error bound of
//! docs/NUMERICS.md:
//!
//! `|y - y*| <= u_Y |y*| + (1 + u_Y) (K + 2) u S + delta_Y`
//!
//! with `u = 2^-24` (f32 unit roundoff), `u_Y` the unit roundoff of the output type (`2^-8` bf16, `2^-11` f16),
//! `S = |t| Σ_k |x_k w_k| + |bias|` and `delta_Y` half the smallest subnormal of the output type. `y*` is the f64
//! reference of [`super::reference::reference_linear`]; everything here is computed in f64 from the same inputs.

use std::fmt;

use thiserror::Error;

use super::reference::{reference_linear, round_to};
use super::{pow2, DType};

/// f32 unit roundoff.
pub const U_F32: f64 = 1.0 / 16_777_216.0;

/// Unit roundoff of an output type: `2^-8` for bf16, `2^-11` for f16.
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => pow2(-8),
        DType::F16 => pow2(-11),
    }
}

/// Half the smallest subnormal of an output type: `2^-134` for bf16, `2^-25` for f16.
pub fn half_min_subnormal(dtype: DType) -> f64 {
    match dtype {
        DType::Bf16 => pow2(-134),
        DType::F16 => pow2(-25),
    }
}

/// The bound on `|y - y*|` for one output element: `y_star` the f64 reference value, `s` the magnitude sum
/// `|t| Σ_k |x_k w_k| + |bias|`, `k` the reduction length. Always positive.
pub fn error_bound(y_star: f64, s: f64, k: usize, y_dtype: DType) -> f64 {
    let uy = unit_roundoff(y_dtype);
    uy * y_star.abs()
        + (1.0 + uy) * (k as f64 + 2.0) * U_F32 * s.abs()
        + half_min_subnormal(y_dtype)
}

/// Decodes a bf16 or f16 bit pattern (exactly, to f32).
pub fn decode(bits: u16, dtype: DType) -> f32 {
    match dtype {
        DType::Bf16 => half::bf16::from_bits(bits).to_f32(),
        DType::F16 => half::f16::from_bits(bits).to_f32(),
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Elements compared (`M * N`).
    pub elements: usize,
    /// Largest `|y - y*|` (+inf when an output is NaN or an infinity the reference does not have).
    pub max_abs_err: f64,
    /// Largest error / bound over all elements; at most 1 when every element is within its bound.
    pub max_ratio: f64,
    /// (row, col) of the element with the largest ratio.
    pub worst: (usize, usize),
    /// The kernel's output and the f64 reference at `worst`.
    pub worst_y: f64,
    pub worst_ref: f64,
    /// Elements whose error exceeds their bound.
    pub violations: usize,
}

impl Comparison {
    /// Whether every element is within its bound.
    pub fn passes(&self) -> bool {
        self.violations == 0
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max abs error {:.3e}, max error/bound {:.4} at [{}, {}] (y {:e}, reference {:e}), {} of {} elements outside the bound",
            self.max_abs_err,
            self.max_ratio,
            self.worst.0,
            self.worst.1,
            self.worst_y,
            self.worst_ref,
            self.violations,
            self.elements
        )
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum CompareError {
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), CompareError> {
    if got == expected {
        Ok(())
    } else {
        Err(CompareError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Compares `y` (`[M, N]` bit patterns of `y_dtype`) with the reference `round_Y(x w^T * t + bias)`, where `x` is
/// `[M, K]` (activations as f32, exactly), `w_deq` the dequantized weight `[N, K]` of
/// [`super::reference::dequant_weight`], `tensor_scale` the per-tensor scale (1 when `None`), `bias` `[N]`.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    y: &[u16],
    y_dtype: DType,
    x: &[f32],
    w_deq: &[f32],
    m: usize,
    n: usize,
    k: usize,
    tensor_scale: Option<f32>,
    bias: Option<&[f32]>,
) -> Result<Comparison, CompareError> {
    check_len("y", y.len(), m * n)?;
    check_len("x", x.len(), m * k)?;
    check_len("w", w_deq.len(), n * k)?;
    if let Some(b) = bias {
        check_len("bias", b.len(), n)?;
    }
    // The lengths are checked, so the reference does not panic.
    let y_star = reference_linear(x, w_deq, m, n, k, tensor_scale, bias);
    let t = f64::from(tensor_scale.unwrap_or(1.0)).abs();
    let mut out = Comparison {
        elements: m * n,
        max_abs_err: 0.0,
        max_ratio: 0.0,
        worst: (0, 0),
        worst_y: 0.0,
        worst_ref: 0.0,
        violations: 0,
    };
    let mut first = true;
    for row in 0..m {
        let xrow = &x[row * k..(row + 1) * k];
        for col in 0..n {
            let wrow = &w_deq[col * k..(col + 1) * k];
            let dot_abs: f64 = xrow
                .iter()
                .zip(wrow)
                .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                .sum();
            let s = t * dot_abs + bias.map_or(0.0, |b| f64::from(b[col]).abs());
            let ys = y_star[row * n + col];
            let yv = f64::from(decode(y[row * n + col], y_dtype));
            let rounded = f64::from(round_to(ys, y_dtype));
            // The error is measured against y* itself, not round_Y(y*): near a rounding tie of the output type, the
            // f32 accumulation may legitimately land on the other neighbour. An overflow to the same infinity as the
            // rounded reference is no error; a NaN or a lone infinity is infinitely wrong.
            let err = if yv.is_infinite() && yv == rounded {
                0.0
            } else {
                let d = (yv - ys).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d
                }
            };
            let bound = error_bound(ys, s, k, y_dtype);
            let ratio = err / bound;
            if err > bound {
                out.violations += 1;
            }
            out.max_abs_err = out.max_abs_err.max(err);
            if first || ratio > out.max_ratio {
                first = false;
                out.max_ratio = ratio;
                out.worst = (row, col);
                out.worst_y = yv;
                out.worst_ref = ys;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f32], dtype: DType) -> Vec<u16> {
        v.iter()
            .map(|&x| match dtype {
                DType::Bf16 => half::bf16::from_f32(x).to_bits(),
                DType::F16 => half::f16::from_f32(x).to_bits(),
            })
            .collect()
    }

    #[test]
    fn bound_constants() {
        assert_eq!(unit_roundoff(DType::Bf16), 2f64.powi(-8));
        assert_eq!(unit_roundoff(DType::F16), 2f64.powi(-11));
        assert_eq!(half_min_subnormal(DType::F16), 2f64.powi(-25));
        assert_eq!(half_min_subnormal(DType::Bf16), 2f64.powi(-134));
        let b = error_bound(-2.0, 4.0, 6, DType::F16);
        let want = 2.0 * 2f64.powi(-11)
            + (1.0 + 2f64.powi(-11)) * 8.0 * 2f64.powi(-24) * 4.0
            + 2f64.powi(-25);
        assert_eq!(b, want);
        assert!(error_bound(0.0, 0.0, 1, DType::Bf16) > 0.0);
    }

    #[test]
    fn exact_output_passes_and_wrong_output_fails() {
        // x [2, 3], w [2, 3]
        let x = [1.0, 2.0, 3.0, -1.0, 0.5, 0.25];
        let w = [1.0, 1.0, 1.0, 2.0, 0.0, -4.0];
        let bias = [0.5, -0.5];
        let y_star = reference_linear(&x, &w, 2, 2, 3, Some(2.0), Some(&bias));
        let yf: Vec<f32> = y_star.iter().map(|&v| v as f32).collect();
        for dt in [DType::Bf16, DType::F16] {
            let c = compare(&bits(&yf, dt), dt, &x, &w, 2, 2, 3, Some(2.0), Some(&bias))
                .expect("lengths match");
            assert!(c.passes(), "{c}");
            assert_eq!(c.max_abs_err, 0.0);
            assert_eq!(c.elements, 4);
            let mut bad = yf.clone();
            bad[3] += 1.0;
            let c = compare(&bits(&bad, dt), dt, &x, &w, 2, 2, 3, Some(2.0), Some(&bias))
                .expect("lengths match");
            assert_eq!(c.violations, 1);
            assert_eq!(c.worst, (1, 1));
            assert!(c.max_ratio > 1.0);
            assert_eq!(c.max_abs_err, 1.0);
            let mut nan = yf.clone();
            nan[2] = f32::NAN;
            let c = compare(&bits(&nan, dt), dt, &x, &w, 2, 2, 3, Some(2.0), Some(&bias))
                .expect("lengths match");
            assert_eq!((c.violations, c.worst), (1, (1, 0)));
            assert!(c.max_ratio.is_infinite());
        }
    }

    #[test]
    fn error_within_the_accumulation_term_passes() {
        // Large terms that cancel: y* = 1, S = 2^20 + 1, so the accumulation term dominates the bound.
        let x = [1.0, 1.0, 1.0];
        let w = [524288.0, -524288.0, 1.0];
        let c = compare(
            &bits(&[1.0], DType::Bf16),
            DType::Bf16,
            &x,
            &w,
            1,
            1,
            3,
            None,
            None,
        )
        .expect("lengths match");
        assert!(c.passes());
        // An error of 0.25 is about (K + 2) u S = 5 * 2^-24 * 2^20 ~ 0.31: inside.
        let c = compare(
            &bits(&[1.25], DType::Bf16),
            DType::Bf16,
            &x,
            &w,
            1,
            1,
            3,
            None,
            None,
        )
        .expect("lengths match");
        assert!(c.passes() && c.max_ratio > 0.5, "{c}");
        let c = compare(
            &bits(&[1.5], DType::Bf16),
            DType::Bf16,
            &x,
            &w,
            1,
            1,
            3,
            None,
            None,
        )
        .expect("lengths match");
        assert!(!c.passes(), "{c}");
    }

    #[test]
    fn lengths_are_checked() {
        assert_eq!(
            compare(
                &[0; 3],
                DType::F16,
                &[0.0; 4],
                &[0.0; 4],
                2,
                2,
                2,
                None,
                None
            ),
            Err(CompareError::Length {
                what: "y",
                expected: 4,
                got: 3
            })
        );
        assert!(matches!(
            compare(
                &[0; 4],
                DType::F16,
                &[0.0; 4],
                &[0.0; 4],
                2,
                2,
                2,
                None,
                Some(&[0.0])
            ),
            Err(CompareError::Length { what: "bias", .. })
        ));
    }
}
