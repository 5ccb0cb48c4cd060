//! The 8×8 handwritten-digits data set (1,797 images), embedded compressed in the binary.
//! Source and licence: `trainer/data/README.md`.

use std::io::Read;

use ndarray::Array2;

use crate::TrainError;

static DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Pixels per image and classes.
pub const FEATURES: usize = 64;
pub const CLASSES: usize = 10;

pub struct Digits {
    /// Images scaled to [0, 1], one per row.
    pub x: Array2<f32>,
    pub y: Vec<usize>,
}

impl Digits {
    pub fn load() -> Result<Self, TrainError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_GZ)
            .read_to_string(&mut text)
            .map_err(|e| TrainError::Data(format!("cannot decompress digits: {e}")))?;
        let mut pixels = Vec::new();
        let mut y = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != FEATURES + 1 {
                return Err(TrainError::Data(format!(
                    "line {}: {} fields",
                    i + 1,
                    fields.len()
                )));
            }
            for f in &fields[..FEATURES] {
                let v: f32 = f
                    .trim()
                    .parse()
                    .map_err(|_| TrainError::Data(format!("line {}: bad pixel {f:?}", i + 1)))?;
                pixels.push(v / 16.0);
            }
            let label: usize = fields[FEATURES]
                .trim()
                .parse()
                .ok()
                .filter(|l| *l < CLASSES)
                .ok_or_else(|| TrainError::Data(format!("line {}: bad label", i + 1)))?;
            y.push(label);
        }
        let x = Array2::from_shape_vec((y.len(), FEATURES), pixels)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        Ok(Self { x, y })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_all_images_with_balanced_labels() {
        let d = Digits::load().unwrap();
        assert_eq!(d.x.dim(), (1797, 64));
        let mut counts = [0usize; 10];
        d.y.iter().for_each(|&l| counts[l] += 1);
        // load_digits has 174..=183 images per class.
        assert!(
            counts.iter().all(|&c| (174..=183).contains(&c)),
            "{counts:?}"
        );
        assert!(d.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}
