//! The tensor inventory (`model::inventory`) is exactly what the loaders read: a whole
//! generation of the tiny model on the CPU records every key the weight stores hand out (and
//! every key the VAE loader asks for); each is listed with the checkpoint's shape, and each
//! listed key is read. Then: the loaders, `info` and the inventory refuse the same damage.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use contentv::cli::load::{load_pipeline, tiny_model_dir};
use contentv::io::safetensors::ShardedCheckpoint;
use contentv::model::inventory::{self, Inventory};
use contentv::model::pipeline::{GenerateParams, VideoGeometry};
use contentv::model::vae::VaeConfig;
use contentv::runtime::weights::record_reads;
use contentv::Device;

fn compare(comp: &str, dir: &Path, inv: &Inventory, read: &BTreeMap<String, Vec<usize>>) {
    assert!(!read.is_empty(), "{comp}: nothing recorded");
    let ck = ShardedCheckpoint::open_dir(dir).unwrap();
    let listed: BTreeMap<&str, &inventory::Entry> =
        inv.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    assert_eq!(
        listed.len(),
        inv.entries.len(),
        "{comp}: a key listed twice"
    );
    for (k, shape) in read {
        let e = listed
            .get(k.as_str())
            .unwrap_or_else(|| panic!("{comp}: the loader reads {k}, the inventory lacks it"));
        assert!(
            e.shape.accepts(shape),
            "{comp}: {k} is read as {shape:?}, the inventory says {:?}",
            e.shape
        );
    }
    for e in &inv.entries {
        let present = ck.contains(&e.key);
        assert!(
            read.contains_key(&e.key) || (e.optional && !present),
            "{comp}: the inventory lists {}, which no loader reads",
            e.key
        );
    }
    assert!(
        inv.problems(&ck).is_empty(),
        "{comp}: {:?}",
        inv.problems(&ck)
    );
}

#[test]
fn inventory_is_exactly_what_the_loaders_read() {
    let dir = tiny_model_dir();
    record_reads(true);
    let (pipe, _) = load_pipeline(&dir, &Device::Cpu, &Default::default()).unwrap();
    let params = GenerateParams {
        prompt: "a red ball".into(),
        negative_prompt: String::new(),
        geometry: VideoGeometry::new(5, 32, 32).unwrap(),
        steps: 1,
        guidance: 5.0,
        shift: None,
        seed: 0,
        init_noise: None,
        rescue_latents: None,
        cancel: None,
    };
    pipe.generate(&params, &mut |_| {}).unwrap();
    let reads = record_reads(false);
    for comp in [
        "transformer",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "vae",
    ] {
        let cdir = dir.join(comp);
        let ck = ShardedCheckpoint::open_dir(&cdir).unwrap();
        let read: BTreeMap<String, Vec<usize>> = reads
            .iter()
            .filter(|(d, _)| *d == cdir)
            .map(|(_, k)| (k.clone(), ck.get(k).unwrap().1.shape.clone()))
            .collect();
        let inv = inventory::for_component(comp, &cdir).unwrap();
        compare(comp, &cdir, &inv, &read);
    }
    // The VAE reads through the same store (recorded above); its two inventory entry points
    // agree.
    let vdir = dir.join("vae");
    let cfg = VaeConfig::from_file(&vdir.join("config.json")).unwrap();
    let inv = inventory::vae(&cfg, &vdir).unwrap();
    assert_eq!(
        inv,
        inventory::for_component("vae", &vdir).unwrap(),
        "for_component differs"
    );
}

/// Every key of each inventory is distinct, and a checkpoint missing keys or with another
/// shape gets every problem at once, with the checkpoint's shape quoted.
#[test]
fn problems_are_listed_together_with_the_stored_shape() {
    let dir = tiny_model_dir().join("transformer");
    let inv = inventory::for_component("transformer", &dir).unwrap();
    let keys: BTreeSet<&str> = inv.keys().collect();
    assert_eq!(keys.len(), inv.entries.len());
    let ck = ShardedCheckpoint::open_dir(&dir).unwrap();
    assert!(inv.problems(&ck).is_empty());
    // Ask for another width: every square linear is misshaped, each named.
    let mut c = contentv::model::mmdit::TransformerConfig::from_weights(
        &contentv::runtime::WeightStore::open(&dir, &Device::Cpu, contentv::DType::BF16)
            .unwrap()
            .root(),
    )
    .unwrap();
    let d = c.dim;
    c.dim = d + 16;
    let other = inventory::transformer(&c, &|k| ck.contains(k), &dir).unwrap();
    let p = other.problems(&ck);
    let want = format!(
        "transformer_blocks.0.attn.to_q.weight: the checkpoint has [{d}, {d}], the config needs [{}, {}]",
        d + 16,
        d + 16
    );
    assert!(p.contains(&want), "{want} not in {p:#?}");
    assert!(p.len() > 20, "{}", p.len());
    let e = other.check(&dir, &ck).unwrap_err().to_string();
    assert!(e.contains("more") && e.contains(&want), "{e}");
}
