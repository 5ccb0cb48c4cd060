//! A real, small training source for gradtel: an MLP (64-128-64-10) trained by minibatch SGD
//! on the 8×8 handwritten digits, with R data-parallel ranks as threads.
//!
//! Each rank draws its own minibatch from its own slice of the training set, computes its local
//! gradient, and hands it to its [`RankSink`] (in the demo: its own gradtel agent over the
//! Ingest socket) *before* the all-reduce, exactly where a DDP communication hook sees it. Then
//! the ranks average their gradients and apply one SGD step, so every replica stays identical.
//! This crate knows nothing of gRPC: the sink is the caller's.

pub mod data;
pub mod mlp;

use std::sync::{Barrier, Mutex, RwLock};

use data::Digits;
use mlp::Mlp;
use ndarray::{Array2, Axis};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("digits data: {0}")]
    Data(String),
    #[error("bad training configuration: {0}")]
    Config(String),
    #[error("a rank thread panicked")]
    RankPanicked,
}

/// Where a rank hands its local gradient each step.
pub trait RankSink: Send {
    /// `tensors`: (name, flattened values) in model order. An error is counted, never fatal:
    /// telemetry must not stop training.
    fn push_step(
        &mut self,
        step: u64,
        tensors: &[(&str, &[f32])],
        loss: f64,
        learning_rate: f64,
        batch_size: u64,
    ) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub ranks: usize,
    pub steps: u64,
    pub batch_per_rank: usize,
    pub learning_rate: f64,
    pub widths: Vec<usize>,
    pub seed: u64,
    /// Images held out for the test accuracy (the last ones of the set).
    pub test_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            ranks: 4,
            steps: 300,
            batch_per_rank: 32,
            learning_rate: 0.1,
            widths: vec![data::FEATURES, 128, 64, data::CLASSES],
            seed: 0,
            test_size: 297,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub initial_test_accuracy: f64,
    pub test_accuracy: f64,
    pub push_errors: u64,
    pub last_push_error: Option<String>,
}

/// Progress callback: (step, mean loss over ranks).
pub type OnStep<'a> = &'a (dyn Fn(u64, f64) + Sync);

fn accuracy(model: &Mlp, x: &Array2<f32>, y: &[usize]) -> f64 {
    let pred = model.predict(x.view());
    pred.iter().zip(y).filter(|(p, t)| p == t).count() as f64 / y.len().max(1) as f64
}

/// Train with one thread per sink (rank). Returns when every rank has done `steps` steps.
pub fn train<S: RankSink>(
    cfg: &TrainConfig,
    sinks: Vec<S>,
    on_step: OnStep<'_>,
) -> Result<TrainSummary, TrainError> {
    if sinks.len() != cfg.ranks || cfg.ranks == 0 {
        return Err(TrainError::Config(format!(
            "{} sinks for {} ranks",
            sinks.len(),
            cfg.ranks
        )));
    }
    let digits = Digits::load()?;
    let n = digits.y.len();
    if cfg.test_size >= n || cfg.batch_per_rank == 0 {
        return Err(TrainError::Config(
            "test set or batch size out of range".into(),
        ));
    }
    let n_train = n - cfg.test_size;
    let test_x = digits.x.slice(ndarray::s![n_train.., ..]).to_owned();
    let test_y = digits.y[n_train..].to_vec();
    let initial = Mlp::new(&cfg.widths, cfg.seed);
    let initial_test_accuracy = accuracy(&initial, &test_x, &test_y);
    // Sum of the ranks' gradients and losses for the current step.
    let acc = Mutex::new((initial.zeros_like(), 0.0f64));
    let model = RwLock::new(initial);
    let barrier = Barrier::new(cfg.ranks);
    let losses = Mutex::new(Vec::with_capacity(cfg.steps as usize));
    let push_errors = Mutex::new((0u64, None::<String>));

    std::thread::scope(|scope| {
        let handles: Vec<_> = sinks
            .into_iter()
            .enumerate()
            .map(|(rank, mut sink)| {
                let (model, acc, barrier, losses, push_errors, digits) =
                    (&model, &acc, &barrier, &losses, &push_errors, &digits);
                scope.spawn(move || {
                    // Rank r trains on images r, r+R, r+2R, ... of the training part.
                    let mine: Vec<usize> = (rank..n_train).step_by(cfg.ranks).collect();
                    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ (0x9E37_79B9 + rank as u64));
                    for step in 0..cfg.steps {
                        let idx: Vec<usize> = (0..cfg.batch_per_rank)
                            .map(|_| mine[rng.random_range(0..mine.len())])
                            .collect();
                        let x = digits.x.select(Axis(0), &idx);
                        let y: Vec<usize> = idx.iter().map(|&i| digits.y[i]).collect();
                        let (loss, grads) = match model.read() {
                            Ok(m) => m.loss_and_grad(x.view(), &y),
                            Err(_) => return,
                        };
                        let names = grads.parameter_layout();
                        let tensors: Vec<(&str, &[f32])> = names
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .zip(grads.parameter_slices())
                            .collect();
                        if let Err(e) = sink.push_step(
                            step,
                            &tensors,
                            loss,
                            cfg.learning_rate,
                            cfg.batch_per_rank as u64,
                        ) && let Ok(mut pe) = push_errors.lock()
                        {
                            pe.0 += 1;
                            pe.1 = Some(e);
                        }
                        if let Ok(mut a) = acc.lock() {
                            a.0.add_scaled(&grads, 1.0);
                            a.1 += loss;
                        }
                        // All-reduce: the last rank to arrive averages and applies the step.
                        if barrier.wait().is_leader()
                            && let (Ok(mut a), Ok(mut m)) = (acc.lock(), model.write())
                        {
                            let scale = -(cfg.learning_rate as f32) / cfg.ranks as f32;
                            m.add_scaled(&a.0, scale);
                            let mean_loss = a.1 / cfg.ranks as f64;
                            a.0 = m.zeros_like();
                            a.1 = 0.0;
                            if let Ok(mut l) = losses.lock() {
                                l.push(mean_loss);
                            }
                            on_step(step, mean_loss);
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| TrainError::RankPanicked)?;
        }
        Ok::<(), TrainError>(())
    })?;

    let losses = losses.into_inner().map_err(|_| TrainError::RankPanicked)?;
    let model = model.into_inner().map_err(|_| TrainError::RankPanicked)?;
    let (errors, last_error) = push_errors
        .into_inner()
        .map_err(|_| TrainError::RankPanicked)?;
    Ok(TrainSummary {
        steps: losses.len() as u64,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        final_loss: losses.last().copied().unwrap_or(f64::NAN),
        initial_test_accuracy,
        test_accuracy: accuracy(&model, &test_x, &test_y),
        push_errors: errors,
        last_push_error: last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(std::sync::Arc<Mutex<Vec<(u64, usize)>>>);
    impl RankSink for Recorder {
        fn push_step(
            &mut self,
            step: u64,
            tensors: &[(&str, &[f32])],
            _: f64,
            _: f64,
            _: u64,
        ) -> Result<(), String> {
            let n = tensors.iter().map(|t| t.1.len()).sum();
            self.0.lock().unwrap().push((step, n));
            Ok(())
        }
    }

    #[test]
    fn data_parallel_training_learns_digits() {
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let cfg = TrainConfig {
            ranks: 2,
            steps: 150,
            ..Default::default()
        };
        let sinks = (0..2).map(|_| Recorder(log.clone())).collect();
        let s = train(&cfg, sinks, &|_, _| {}).unwrap();
        assert_eq!(s.steps, 150);
        assert!(s.final_loss < s.first_loss * 0.5, "{s:?}");
        assert!(s.test_accuracy > 0.85, "{s:?}");
        assert!(s.test_accuracy > s.initial_test_accuracy + 0.5);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 300);
        // 64*128+128 + 128*64+64 + 64*10+10 parameters per push.
        assert!(log.iter().all(|&(_, n)| n == 17_226));
    }
}
