//! Where the weights of a layer loop live for one run: every layer resident, every layer
//! streamed (`--offload sequential`), or, under `--vram-budget`, as many layers resident as fit
//! next to the rest of the run and the others streamed through a two-slot ring.
//!
//! The CLI calls [`plan_layers`] with the run's real sizes (the largest request's activations,
//! the other models that stay on the device) and prints [`LayerPlan::describe`]; the model is
//! then placed as planned ([`crate::runtime::residency::Residency::from_plan`]). Model code
//! never decides where a weight lives.
use super::residency::{MemoryOptions, Offload, Residency};
use super::weights::WeightStore;
use crate::error::{Error, Result};

/// Where the layers of one loop live.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// Every layer uploaded once and kept.
    Resident,
    /// Layers with `resident[i] == false` stream through the ring (every layer if `None`).
    Streamed { resident: Option<Vec<bool>> },
}

/// The plan for one layer loop (e.g. the transformer's `transformer_blocks`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// The checkpoint prefix of the loop's layers (`{group}.{i}.`).
    pub group: String,
    pub layers: usize,
    pub placement: Placement,
    /// The budget and the plan made for it (GPU runs with `--vram-budget`).
    pub budget: Option<(u64, BudgetPlan)>,
    /// Device bytes of the step cache counted in the plan (`--cache fbcache`; 0 without).
    pub step_cache_bytes: u64,
}

impl LayerPlan {
    /// Every layer resident (no options, or the CPU).
    pub fn resident(group: &str, layers: usize) -> LayerPlan {
        LayerPlan {
            group: group.into(),
            layers,
            placement: Placement::Resident,
            budget: None,
            step_cache_bytes: 0,
        }
    }

    /// Records that `bytes` of step cache were counted in the plan (they are said in
    /// [`LayerPlan::describe`]).
    pub fn with_step_cache(self, bytes: u64) -> LayerPlan {
        LayerPlan {
            step_cache_bytes: bytes,
            ..self
        }
    }

    /// One line for the user, or `None` when there is nothing to say (every layer resident
    /// without a budget).
    pub fn describe(&self) -> Option<String> {
        let line = self.describe_layers();
        if self.step_cache_bytes == 0 {
            return line;
        }
        let cache = format!(
            "step cache: {:.1} MiB on the device (the remaining blocks' residual){}",
            self.step_cache_bytes as f64 / (1u64 << 20) as f64,
            if self.budget.is_some() {
                ", counted in the VRAM plan"
            } else {
                ""
            }
        );
        Some(match line {
            Some(l) => format!("{l}; {cache}"),
            None => cache,
        })
    }

    fn describe_layers(&self) -> Option<String> {
        match (&self.budget, &self.placement) {
            (Some((budget, plan)), _) => Some(plan.describe(*budget)),
            (None, Placement::Streamed { .. }) => Some(format!(
                "weights: all {} {} streamed through a two-layer ring (--offload sequential)",
                self.layers, self.group
            )),
            (None, Placement::Resident) => None,
        }
    }
}

/// Plans the loop `group` (`layers` layers) of `store` for a run with options `mem`.
/// `other_bytes`: the device bytes the run needs beside this loop's layers and the store's other
/// weights, at the same time: the activations of its largest request and the models that stay
/// on the device. A budget too small even with every layer streamed is an error naming the
/// numbers and what to do.
pub fn plan_layers(
    store: &WeightStore,
    group: &str,
    layers: usize,
    mem: &MemoryOptions,
    other_bytes: u64,
) -> Result<LayerPlan> {
    if !mem.streams() {
        return Ok(LayerPlan::resident(group, layers));
    }
    let budget = match (mem.vram_budget, store.device().is_cuda()) {
        (Some(budget), true) => {
            let layer_bytes = Residency::layer_bytes(store, group, layers);
            // Every weight of the store in the compute dtype (the layers' INT8 savings are
            // in `layer_bytes`; the rest is counted dense).
            let all: u64 = store
                .checkpoint()
                .names()
                .filter_map(|k| store.shape_of(k))
                .map(|s| s.iter().product::<usize>() as u64 * store.dtype().size() as u64)
                .sum();
            let fixed = all.saturating_sub(layer_bytes.iter().sum::<u64>()) + other_bytes;
            let plan = plan_budget(&layer_bytes, fixed, budget);
            if !plan.fits {
                return Err(Error::OutOfMemory {
                    requested: plan.total() as usize,
                    hint: format!(
                        "--vram-budget {:.1} GiB is too small even when every {group} layer is \
                         streamed ({}); raise it, add --quantize int8, or make the video smaller",
                        gib(budget),
                        plan.describe(budget)
                    ),
                });
            }
            Some((budget, plan))
        }
        _ => None,
    };
    let placement = match &budget {
        // A budget without --offload sequential that keeps every layer resident: no ring.
        Some((_, p)) if mem.offload != Offload::Sequential && p.streamed_layers() == 0 => {
            Placement::Resident
        }
        Some((_, p)) => Placement::Streamed {
            resident: Some(p.resident.clone()),
        },
        None if mem.offload == Offload::Sequential => Placement::Streamed { resident: None },
        None => Placement::Resident,
    };
    Ok(LayerPlan {
        group: group.into(),
        layers,
        placement,
        budget,
        step_cache_bytes: 0,
    })
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// A budget plan for one layer loop.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPlan {
    /// Per layer: resident (uploaded once) or streamed through the ring.
    pub resident: Vec<bool>,
    /// Device bytes of the resident layers.
    pub resident_bytes: u64,
    /// Device bytes of the streaming ring (two slots of the largest streamed layer; 0 if none).
    pub ring_bytes: u64,
    /// Bytes outside the loop (embeddings, final layer, ...) plus the activation estimate.
    pub fixed_bytes: u64,
    /// Whether the plan fits the budget (false: even full streaming does not fit).
    pub fits: bool,
}

impl BudgetPlan {
    pub fn total(&self) -> u64 {
        self.resident_bytes + self.ring_bytes + self.fixed_bytes
    }
    pub fn streamed_layers(&self) -> usize {
        self.resident.iter().filter(|r| !**r).count()
    }
    /// One line for the user.
    pub fn describe(&self, budget: u64) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            "VRAM plan: {} of {} layers resident ({:.2} GiB), {} streamed through a {:.2} GiB ring, {:.2} GiB other weights + activations: {:.2} of {:.2} GiB{}",
            self.resident.len() - self.streamed_layers(),
            self.resident.len(),
            gib(self.resident_bytes),
            self.streamed_layers(),
            gib(self.ring_bytes),
            gib(self.fixed_bytes),
            gib(self.total()),
            gib(budget),
            if self.fits { "" } else { " (DOES NOT FIT)" }
        )
    }
}

/// Keeps layers resident from the first while they fit in `budget` next to `fixed` bytes and
/// the ring needed for the rest; streams the others. All layers resident needs no ring.
pub fn plan_budget(layer_bytes: &[u64], fixed: u64, budget: u64) -> BudgetPlan {
    let n = layer_bytes.len();
    let all: u64 = layer_bytes.iter().sum();
    if fixed + all <= budget {
        return BudgetPlan {
            resident: vec![true; n],
            resident_bytes: all,
            ring_bytes: 0,
            fixed_bytes: fixed,
            fits: true,
        };
    }
    // k resident layers (a prefix): the ring holds two of the largest among the rest.
    let mut best: Option<BudgetPlan> = None;
    for k in (0..n).rev() {
        let res: u64 = layer_bytes[..k].iter().sum();
        let ring = 2 * layer_bytes[k..].iter().copied().max().unwrap_or(0);
        if fixed + res + ring <= budget {
            let mut resident = vec![false; n];
            resident[..k].iter_mut().for_each(|r| *r = true);
            best = Some(BudgetPlan {
                resident,
                resident_bytes: res,
                ring_bytes: ring,
                fixed_bytes: fixed,
                fits: true,
            });
            break;
        }
    }
    best.unwrap_or_else(|| BudgetPlan {
        resident: vec![false; n],
        resident_bytes: 0,
        ring_bytes: 2 * layer_bytes.iter().copied().max().unwrap_or(0),
        fixed_bytes: fixed,
        fits: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_all_resident_when_it_fits() {
        let p = plan_budget(&[10, 10, 10], 5, 100);
        assert_eq!(p.resident, vec![true; 3]);
        assert_eq!(p.ring_bytes, 0);
        assert!(p.fits && p.total() == 35);
    }

    #[test]
    fn plan_fits_and_uses_the_budget() {
        let layers = vec![426u64; 38];
        for budget in [3000u64, 5000, 8000, 12000, 16000, 17000] {
            let p = plan_budget(&layers, 1000, budget);
            assert!(p.fits, "budget {budget}");
            assert!(
                p.total() <= budget,
                "budget {budget}: plan {} exceeds",
                p.total()
            );
            // One more resident layer would not fit (unless all are resident already).
            if p.streamed_layers() > 0 {
                let k = 38 - p.streamed_layers();
                let more = 1000 + 426 * (k as u64 + 1) + if k + 1 < 38 { 2 * 426 } else { 0 };
                assert!(
                    more > budget,
                    "budget {budget}: could keep {} resident",
                    k + 1
                );
            }
        }
        let p = plan_budget(&layers, 1000, 1500);
        assert!(!p.fits);
    }
}
