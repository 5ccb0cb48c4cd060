//! A ReLU multilayer perceptron with softmax cross-entropy, forward and backward by hand.
//!
//! For a batch X (B×d), layer l computes Z_l = A_{l−1} W_lᵀ + b_l, A_l = relu(Z_l), and the last
//! layer's logits go through softmax. With P the softmax output and Y the one-hot labels, the
//! loss is L = −(1/B) Σ log P[i, y_i]; backprop: dZ_L = (P − Y)/B, dW_l = dZ_lᵀ A_{l−1},
//! db_l = Σ_rows dZ_l, dA_{l−1} = dZ_l W_l, dZ_{l−1} = dA_{l−1} ⊙ 1[Z_{l−1} > 0].

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Weights and biases of one layer (PyTorch layout: W is out × in).
#[derive(Debug, Clone)]
pub struct Layer {
    pub w: Array2<f32>,
    pub b: Array1<f32>,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub layers: Vec<Layer>,
}

/// Gradient of the loss, shaped like the model.
pub type Grads = Mlp;

impl Mlp {
    /// He-initialised network with the given layer widths, e.g. `[64, 128, 64, 10]`.
    pub fn new(widths: &[usize], seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let layers = widths
            .windows(2)
            .map(|w| {
                let (fan_in, fan_out) = (w[0], w[1]);
                let std = (2.0 / fan_in as f64).sqrt();
                let weights = Array2::from_shape_fn((fan_out, fan_in), |_| {
                    // Box–Muller: two uniforms to one standard normal.
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random();
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                });
                Layer {
                    w: weights,
                    b: Array1::zeros(fan_out),
                }
            })
            .collect();
        Self { layers }
    }

    pub fn zeros_like(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    w: Array2::zeros(l.w.raw_dim()),
                    b: Array1::zeros(l.b.raw_dim()),
                })
                .collect(),
        }
    }

    /// Parameter names and shapes, PyTorch style (`fc1.weight`, `fc1.bias`, ...).
    pub fn parameter_layout(&self) -> Vec<(String, Vec<usize>)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                [
                    (format!("fc{}.weight", i + 1), l.w.shape().to_vec()),
                    (format!("fc{}.bias", i + 1), l.b.shape().to_vec()),
                ]
            })
            .collect()
    }

    /// Parameters as contiguous slices, in [`Self::parameter_layout`] order.
    pub fn parameter_slices(&self) -> Vec<&[f32]> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    l.w.as_slice().expect("weights are standard layout"),
                    l.b.as_slice().expect("biases are standard layout"),
                ]
            })
            .collect()
    }

    fn forward_all(&self, x: ArrayView2<f32>) -> (Vec<Array2<f32>>, Vec<Array2<f32>>) {
        let mut acts = vec![x.to_owned()];
        let mut pre = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let z = acts[i].dot(&l.w.t()) + &l.b;
            let a = if i + 1 < self.layers.len() {
                z.mapv(|v| v.max(0.0))
            } else {
                z.clone()
            };
            pre.push(z);
            acts.push(a);
        }
        (pre, acts)
    }

    /// Predicted classes.
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        let (_, acts) = self.forward_all(x);
        let logits = acts.last().expect("at least one layer");
        logits
            .rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            })
            .collect()
    }

    /// Mean cross-entropy loss and its gradient on a batch.
    pub fn loss_and_grad(&self, x: ArrayView2<f32>, y: &[usize]) -> (f64, Grads) {
        let batch = y.len();
        let (pre, acts) = self.forward_all(x);
        let logits = acts.last().expect("at least one layer");
        let mut probs = logits.clone();
        let mut loss = 0.0f64;
        for (mut row, &label) in probs.rows_mut().into_iter().zip(y) {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum: f32 = row.sum();
            row.mapv_inplace(|v| v / sum);
            loss -= f64::from(row[label].max(1e-12)).ln();
        }
        loss /= batch as f64;
        let mut dz = probs;
        for (mut row, &label) in dz.rows_mut().into_iter().zip(y) {
            row[label] -= 1.0;
        }
        dz.mapv_inplace(|v| v / batch as f32);
        let mut grads = Vec::with_capacity(self.layers.len());
        for i in (0..self.layers.len()).rev() {
            let dw = dz.t().dot(&acts[i]);
            let db = dz.sum_axis(Axis(0));
            grads.push(Layer { w: dw, b: db });
            if i > 0 {
                let da = dz.dot(&self.layers[i].w);
                dz = da * pre[i - 1].mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
            }
        }
        grads.reverse();
        (loss, Mlp { layers: grads })
    }

    /// `self += scale * other`.
    pub fn add_scaled(&mut self, other: &Mlp, scale: f32) {
        for (l, g) in self.layers.iter_mut().zip(&other.layers) {
            l.w.scaled_add(scale, &g.w);
            l.b.scaled_add(scale, &g.b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backprop against central finite differences of the loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let m = Mlp::new(&[5, 7, 3], 1);
        let x = Array2::from_shape_fn((4, 5), |(i, j)| ((i * 5 + j) as f32 * 0.37).sin());
        let y = [0, 2, 1, 2];
        let (_, g) = m.loss_and_grad(x.view(), &y);
        let eps = 1e-3f32;
        for (li, idx) in [(0usize, (3usize, 1usize)), (1, (2, 4)), (0, (6, 0))] {
            let mut plus = m.clone();
            plus.layers[li].w[idx] += eps;
            let mut minus = m.clone();
            minus.layers[li].w[idx] -= eps;
            let numeric = (plus.loss_and_grad(x.view(), &y).0
                - minus.loss_and_grad(x.view(), &y).0)
                / (2.0 * f64::from(eps));
            let analytic = f64::from(g.layers[li].w[idx]);
            assert!(
                (numeric - analytic).abs() < 2e-3,
                "{li} {idx:?}: {numeric} vs {analytic}"
            );
        }
        let mut plus = m.clone();
        plus.layers[1].b[1] += eps;
        let mut minus = m.clone();
        minus.layers[1].b[1] -= eps;
        let numeric = (plus.loss_and_grad(x.view(), &y).0 - minus.loss_and_grad(x.view(), &y).0)
            / (2.0 * f64::from(eps));
        assert!((numeric - f64::from(g.layers[1].b[1])).abs() < 2e-3);
    }
}
